"""What the reliability suite measured, written where ``bench.report`` turns it into
docs/reliability.md (issue 13).

Owns: the one result format every fault and attack scenario of the suite writes. A test builds
a :class:`Scenario` from what it *observed* (the registry, the card, the agent's own files read
from outside) and calls :func:`record`. With ``$LOA_RELIABILITY_RESULTS`` set (``make
reliability`` sets it to ``bench/results``) the file lands there as
``reliability_<part>_<scenario>.json``; otherwise in the test's ``tmp_path``, so a CI run
exercises the writer without touching the committed results.

Counts use these names where they apply, so the generated tables line up across parts
(``None`` or absent: not applicable to that scenario):

- ``reports_produced``, ``reports_stored``, ``reports_lost``: station reports (all kinds);
- ``duplicates_counted``: copies counted twice in the coverage KPI (the bar is 0);
- ``duplicates_dropped``: copies the collector received again and dropped (expected, harmless);
- ``restarts``: agent restarts the scenario caused; ``crashes``: agent exits nobody asked for;
- ``slots_due``, ``slots_on_air``, ``audio_start_errors``: slots, and those that did not start
  on time at the sink;
- ``accepted_unsigned``: envelopes accepted without a valid signature (the bar is 0);
- ``rejections``: ``{code: n}``, PROTOCOL.md section 8 codes;
- anything else the scenario needs to say (``extra``), shown as ``name value`` pairs.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_ENV = "LOA_RELIABILITY_RESULTS"
_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass
class Scenario:
    """One fault or attack as run: what it is, how it is tested, what was counted."""

    part: str  # "link", "disk", "clock", "devices", "attacks", "fuzz", ...
    name: str  # "broker killed during playlist delivery"
    how: str  # one or two sentences: what the test does and reads
    counts: dict[str, Any] = field(default_factory=dict)
    # The bar each count must meet, as the issue states it: {"reports_lost": 0, ...}.
    bar: dict[str, int] = field(default_factory=dict)

    def misses(self) -> dict[str, Any]:
        """The counts that do not meet their bar (empty when every bar is met)."""
        return {k: self.counts.get(k) for k, v in self.bar.items() if self.counts.get(k) != v}


def slug(text: str) -> str:
    return _SLUG.sub("_", text.lower()).strip("_")


def record(
    scenario: Scenario, command: str, elapsed_s: float, tmp_path: Path, title: str = ""
) -> Path:
    """Write the scenario's result file; returns its path. ``command`` reproduces it."""
    from bench.common import machine_info  # the same machine line as the benchmarks

    target = os.environ.get(RESULTS_ENV)
    directory = Path(target) if target else tmp_path
    name = f"reliability_{slug(scenario.part)}_{slug(scenario.name)}"
    data = {
        "benchmark": name,
        "title": title or scenario.name,
        "command": command,
        "quick": False,
        "elapsed_s": round(elapsed_s, 1),
        "figures": [],  # not a benchmark row: rendered by bench.report.render_reliability
        "reliability": {
            "part": scenario.part,
            "scenario": scenario.name,
            "how": scenario.how,
            "counts": scenario.counts,
            "bar": scenario.bar,
            "misses": scenario.misses(),
        },
        "machine": machine_info(),
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
