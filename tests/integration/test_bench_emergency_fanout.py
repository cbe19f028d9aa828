"""The emergency fan-out benchmark (issue 9) still runs end to end on real parts: ``--quick``
(N = 20 and 50 simulated stations on a real mosquitto), results in a temporary directory.

It runs as its own process, as ``make bench`` runs it. The figures are not checked against the
target here (that is what the benchmark reports); what is checked is that every station of
every round was measured, that the result has the shape the report and the issue ask for, and
that its parts add up: no station's first frame before the emergency reached it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from province.mosquitto import find_mosquitto

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_emergency_fanout_quick_measures_every_station(tmp_path: Path) -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto binary not found (install the Debian package: make sysdeps)")
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (make sysdeps)")
    done = subprocess.run(
        [sys.executable, "-m", "bench.emergency_fanout", "--quick", "--results", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads((tmp_path / "emergency_fanout.json").read_text())

    assert result["quick"] is True and result["command"].endswith("--quick")
    rounds = result["detail"]["rounds_counted"]
    for n in (20, 50):
        figures = result[str(n)]
        assert set(figures) == {"p50_ms", "p99_ms", "max_ms", "bare_p99_ms"}
        assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
        assert figures["bare_p99_ms"] > 0
        detail = result["detail"]["sizes"][str(n)]
        # Every (station, round) pair measured, for the emergency and for the bare message.
        assert detail["pairs"] == n * rounds
        assert detail["bare_delivery"]["n"] == n * rounds
        assert sum(detail["stations_per_worker"]) == n
        # The first frame follows the emergency's own delivery at every station.
        assert detail["station_pipeline"]["min_ms"] >= 0
        assert detail["emergency_delivery"]["max_ms"] <= figures["max_ms"]
        assert detail["station_handle_cpu"]["n"] == n * rounds
        assert [r["message"] for r in detail["rounds"]].count("emergency") == rounds
    # What the report shows: figures that exist, baselines measured in the same run.
    for key in result["figures"]:
        assert isinstance(result[key], int | float)
    for key, baseline in result["baselines"].items():
        assert key in result["figures"] and isinstance(result[baseline], int | float)
    assert result["target"]["met"] is None  # the target is for N = 1000, not measured here
