"""The two benchmarks of issue 8 still run end to end on real parts (``--quick``, results in a
temporary directory): telemetry bytes per day, and collector ingest against a bare subscriber.

Each runs as its own process, as ``make bench`` runs it; the figures are not checked against
targets here (that is what the benchmarks report), only that every part of the result is there
and that the measurement could attribute its bytes and stored every report once.
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


def run_bench(module: str, results: Path, *args: str) -> dict[str, Any]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto binary not found (install the Debian package: make sysdeps)")
    done = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--results", str(results), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    name = module.rsplit(".", 1)[1]
    data: dict[str, Any] = json.loads((results / f"{name}.json").read_text())
    return data


def test_telemetry_bytes_composes_a_day_from_measured_units(tmp_path: Path) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (make sysdeps)")
    # A 10 s cross-check instead of --quick's 60 s keeps this under a minute.
    result = run_bench("bench.telemetry_bytes", tmp_path, "--window-s", "10")
    assert result["anomalies"] == []
    assert result["target"] == 1_000_000
    parts = result["breakdown"]
    assert set(parts) == {"reconnect", "heartbeat", "ping", "time_beacon", "playlist_update",
                          "asrun"}  # fmt: skip
    assert result["bytes_per_day"] == pytest.approx(sum(p["bytes_per_day"] for p in parts.values()),
                                                    abs=len(parts))  # fmt: skip
    # A station whose clock is trusted may not take the time beacon at all: 0 bytes.
    assert all(p["bytes_per_unit"] > 0 for n, p in parts.items() if n != "time_beacon")
    # A PINGREQ and its PINGRESP are one small TLS record each way.
    assert 30 <= parts["ping"]["bytes_per_unit"] <= 200
    intervals = result["intervals"]
    assert parts["heartbeat"]["count_per_day"] == pytest.approx(86_400 / intervals["heartbeat_s"])
    assert len(result["candidates"]) == 12
    check = result["cross_check"]
    assert check["measured_bytes"] > 0 and check["predicted_bytes_by_counts"] > 0
    assert 0.5 <= check["ratio_measured_to_counts"] <= 2.0


def test_collector_ingest_stores_every_report_once(tmp_path: Path) -> None:
    result = run_bench("bench.collector_ingest", tmp_path)
    assert result["stored_exactly_once"] is True
    assert result["msgs_per_s"] > 0 and result["baseline_msgs_per_s"] > 0
    assert result["ratio"] == pytest.approx(
        result["msgs_per_s"] / result["baseline_msgs_per_s"], rel=0.01
    )
    for run in result["detail"]["collector_runs"]:
        assert run["stats"]["stored"] == result["n"]
        assert (run["stats"]["refused"], run["stats"]["errors"]) == (0, 0)
