"""What a test hears of a real station: its events and as-runs as the operator receives them,
the tones it played (from the paced card's per-play files), and a deadline-bound wait for a
fact. Shared by the emergency, live and station-command tests."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hal.audio import FRAME_BYTES, SAMPLE_RATE
from tests.harness.audio import analyse_pcm
from tests.harness.broker import Recorder
from tests.harness.paced_card import plays

WAIT_S = 30.0
WINDOW_S = 0.2


def reports(operator: Recorder, prefix: str, kind: str) -> list[dict[str, Any]]:
    """Distinct reports of ``kind`` (by seq, resends once) in seq order; as-runs unwrapped."""
    seen: dict[int, dict[str, Any]] = {}
    for m in list(operator.messages):
        if m.topic == f"{prefix}/telemetry/{kind}":
            doc = json.loads(m.payload)
            if kind == "asrun":
                doc = json.loads(base64.b64decode(doc["payload"]))
            seen[doc["seq"]] = doc
    return [seen[s] for s in sorted(seen)]


def events(operator: Recorder, prefix: str, code: str | None = None) -> list[dict[str, Any]]:
    return [e for e in reports(operator, prefix, "event") if code is None or e["code"] == code]


def wait_until(done: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def heard(capture: Path) -> list[float | None]:
    """The tone of each 0.2 s window of what the station played, play after play (rounded to
    10 Hz; None for quiet), and a None between plays: whatever follows is another stretch."""
    step = int(WINDOW_S * SAMPLE_RATE) * FRAME_BYTES
    found: list[float | None] = []
    for play in plays(capture):
        pcm = play.read_bytes()
        for at in range(0, len(pcm) - step + 1, step):
            report = analyse_pcm(pcm[at : at + step])
            loud = report.dbfs is not None and report.dbfs > -40
            found.append(round(report.freq_hz, -1) if loud and report.freq_hz else None)
        found.append(None)
    return found


def runs(windows: list[float | None], freq: int) -> int:
    """How many separate stretches of ``freq`` there are (plays apart, or a resume)."""
    count, inside = 0, False
    for window in windows:
        here = window is not None and abs(window - freq) <= 20
        count += here and not inside
        inside = here
    return count
