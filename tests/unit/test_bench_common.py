"""The benchmarks' /proc readers: CPU time from a stat line whatever the command's name holds."""

from __future__ import annotations

import os

from bench.common import CLOCK_TICKS, cpu_seconds, parse_stat_cpu_s


def test_stat_fields_are_counted_from_the_last_parenthesis() -> None:
    # A command name with a space and a ")" in it; utime 250 and stime 50 ticks.
    fields = ["S", "1", "2", "3", "0", "-1", "4194560", "10", "0", "0", "0", "250", "50", "0"]
    line = "4242 (odd) name) " + " ".join(fields) + " 20 0 1 0 100"
    assert parse_stat_cpu_s(line) == 300 / CLOCK_TICKS


def test_cpu_seconds_of_this_process_and_of_none() -> None:
    spent = cpu_seconds(os.getpid())
    assert spent is not None and spent >= 0
    assert cpu_seconds(2**22 + 1) is None  # above the kernel's largest pid
