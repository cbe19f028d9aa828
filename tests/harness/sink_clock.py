"""When each sample reached a station's sound card, for tests that hold a schedule to the clock.

Owns: a private PulseAudio null sink paced at 48 kHz (``bench.paced_sink.PulseNullSink``), a
low-latency stream of silence kept connected to it (an idle null sink sleeps up to 2 s before it
notices a new stream, see ``tests/harness/paced_card.py``), and the monitor capture
(``bench.paced_sink.MonitorCapture``) that stamps every sample the sink consumed with
``time.monotonic()``. ``start_error_s`` answers "how late did the first loud sample of the tone
due at this wall-clock instant reach the card", the start-accuracy benchmark's measure, for a
real ``loa-agent run`` whose ALSA ``default`` is pointed at the sink by ``point_station_at``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from bench.paced_sink import MonitorCapture, PulseNullSink

# Loud enough to be the tone even after loudness normalisation (-16 LUFS brings a half-scale
# sine to about a quarter scale, ~8000), far above silence (0) and dither.
THRESHOLD = 2000
CAPTURE_LATENCY_MS = 2  # as bench/start_accuracy.py
# Reads either side of a sample its anchor is taken from (the capture's lower envelope). The
# benchmark's 0.5 s assumes a quiet machine; under a flood on 2 shared cores parec can be held
# off for longer than that, every read in the window comes back late, and the map from frames
# to instants slipped by over 100 ms (a tone found 1.5 s early). The sink's clock and ours are
# one kernel clock, so a wider window costs no accuracy.
ANCHOR_WINDOW_S = 3.0


@dataclass
class SinkClock:
    sink: PulseNullSink
    capture: MonitorCapture

    @property
    def socket(self) -> Path:
        return self.sink.socket

    def start_error_s(
        self, due: datetime, early_s: float = 0.5, late_s: float = 1.2
    ) -> float | None:
        """Seconds from ``due`` (wall clock) to the first loud sample at the sink from
        ``early_s`` before it to ``late_s`` after; None when nothing loud reached it then. The
        wall instant becomes a monotonic one through this process's own pair of readings (one
        kernel, no drift)."""
        offset = time.time() - time.monotonic()
        due_mono = due.timestamp() - offset
        self.capture.wait_covered(due_mono + late_s)
        first = self.capture.first_above(
            THRESHOLD,
            self.capture.frame_at(due_mono - early_s),
            self.capture.frame_at(due_mono + late_s),
        )
        if first is None:
            return None
        return self.capture.time_of(first) - due_mono


@contextmanager
def sink_clock(root: Path) -> Iterator[SinkClock]:
    missing = [t for t in ("pulseaudio", "pacat", "parec", "pactl") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found (make sysdeps installs pulseaudio-utils)")
    sink = PulseNullSink(root)
    sink.start()
    keepalive: subprocess.Popen[bytes] | None = None
    capture = MonitorCapture(sink, latency_ms=CAPTURE_LATENCY_MS, window_s=ANCHOR_WINDOW_S)
    try:
        keepalive = subprocess.Popen(
            ["pacat", "--raw", "--format=s16le", "--channels=2", "--rate=48000",
             "--latency-msec=20", "/dev/zero"],
            env={**os.environ, **sink.env},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        capture.start()
        yield SinkClock(sink, capture)
    finally:
        capture.stop()
        if keepalive is not None:
            keepalive.terminate()
            keepalive.wait(10)
        sink.stop()


def point_station_at(home: Path, socket: Path) -> None:
    """The ALSA ``default`` of a station whose ``$HOME`` is ``home``: the paced sink."""
    (home / ".asoundrc").write_text(
        f'pcm.!default {{\n type pulse\n server "unix:{socket}"\n}}\n'
        f'ctl.!default {{\n type pulse\n server "unix:{socket}"\n}}\n'
    )
