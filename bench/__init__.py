"""Loa's benchmarks: each module measures one figure on real parts and writes
``bench/results/<name>.json``; ``bench.report`` turns those files into ``docs/benchmarks.md``.
Run them all with ``make bench``."""
