"""Preemption: from the cut request to the new item's first sample at the (paced) sink.

What the runtime does for an emergency: ``player.play(new request, replacing=("preempted",
...))`` while a play is in progress (no ``start_at``: as soon as possible). The player starts
the new item's decoder first and cuts the old play once the first chunk is ready.
Real ``Player`` + ``Decoder`` + ``PyAudioSink`` on a PulseAudio null sink, warm-up 0,
``MockFactory`` relays. The old programme is a quiet tone (-20 dBFS), the new item a loud one
(-6 dBFS), so the capture tells them apart; the old one is cut after a random 0.4-0.8 s, so the
cut lands anywhere in a decoder chunk.

Writes ``bench/results/preemption.json`` (``n``, ``p50_ms``, ``p99_ms``), and how long the
old programme went on sounding after the cut request.

    .venv/bin/python -m bench.preemption
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, machine_info, make_chirp, make_tone, summary, write_result
from bench.paced_sink import RATE, MonitorCapture, PulseNullSink, Reference, calibrate
from bench.player_rig import PlayerRig, reference

COMMAND = ".venv/bin/python -m bench.preemption"
QUICK_N = 5
CAPTURE_LATENCY_MS = 2
AUDIBLE = 1000  # the old programme's peaks are 3277; silence is 0


def trial(
    rig: PlayerRig, capture: MonitorCapture, old: Path, new: Path, ref: Reference
) -> dict[str, float]:
    rig.player.play(rig.request(old))
    time.sleep(random.uniform(0.4, 0.8))
    cut_at = time.monotonic()
    rig.player.play(rig.request(new), replacing=("preempted", "preempted by an emergency"))
    cut_returned = time.monotonic()
    old_result = rig.wait_done()
    new_result = rig.wait_done()
    if old_result.outcome != "preempted" or new_result.outcome != "complete":
        raise RuntimeError(f"unexpected outcomes {old_result.outcome}, {new_result.outcome}")
    capture.wait_covered(time.monotonic())
    start = capture.frame_at(cut_at - 0.05)
    located = capture.locate(ref, start, capture.frame_at(time.monotonic()))
    arrived = located.instant
    first_seen = located.first_loud_frame - ref.loud_at - located.head_lost_frames
    last_old = capture.last_above(AUDIBLE, capture.frame_at(cut_at - 0.5), first_seen)
    old_stopped = capture.time_of(last_old) if last_old is not None else cut_at
    return {
        "latency_ms": (arrived - cut_at) * 1000,
        "cut_call_ms": (cut_returned - cut_at) * 1000,
        "old_sounds_after_cut_ms": (old_stopped - cut_at) * 1000,
        "silence_between_ms": (arrived - old_stopped) * 1000,
        "head_lost_ms": located.head_lost_frames / RATE * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=60, help="preemptions (default 60)")
    parser.add_argument("--quick", action="store_true", help=f"-n {QUICK_N}: a smoke run")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n = QUICK_N
    if args.n < 2:
        parser.error("-n must be at least 2")
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp,
        PulseNullSink() as sink,
        MonitorCapture(sink, latency_ms=CAPTURE_LATENCY_MS) as capture,
    ):
        sink.use_in_this_process()
        old, new = Path(tmp) / "programme.mp3", Path(tmp) / "emergency.mp3"
        make_tone(old, 440, 30, 0.1)
        make_chirp(new, 0.3, 0.5)
        ref = reference(new)
        calibration = calibrate(sink, capture)
        rig = PlayerRig(warmup_s=0.0)
        try:
            rig.player.play(rig.request(new))  # not counted: loads ffmpeg, PortAudio once
            rig.wait_done()
            trials = [trial(rig, capture, old, new, ref) for _ in range(args.n)]
        finally:
            rig.close()
        capture_health = capture.read_delay_ms()
    latency = summary([t["latency_ms"] for t in trials])
    result: dict[str, Any] = {
        "benchmark": "preemption",
        "title": "Preemption: cut request to the new item's first sample at the sink, warm-up 0",
        "command": COMMAND + (" --quick" if args.quick else ""),
        "quick": args.quick,
        "n": latency["n"],
        "p50_ms": latency["p50_ms"],
        "p99_ms": latency["p99_ms"],
        "old_sounds_after_cut_p99_ms": summary([t["old_sounds_after_cut_ms"] for t in trials])[
            "p99_ms"
        ],
        "method_error_max_abs_ms": max(abs(calibration["min_ms"]), abs(calibration["max_ms"])),
        "figures": ["p50_ms", "p99_ms", "old_sounds_after_cut_p99_ms", "method_error_max_abs_ms"],
        "baselines": {},
        "labels": {
            "p50_ms": "p50 cut request to the new item's first sample at the sink",
            "p99_ms": "p99 cut request to the new item's first sample at the sink",
            "old_sounds_after_cut_p99_ms": "p99 the old programme still sounds after the cut",
            "method_error_max_abs_ms": "capture method error, loopback (largest seen)",
        },
        "detail": {
            "latency": latency,
            "cut_call": summary([t["cut_call_ms"] for t in trials]),
            "old_sounds_after_cut": summary([t["old_sounds_after_cut_ms"] for t in trials]),
            "silence_between": summary([t["silence_between_ms"] for t in trials]),
            "head_missing_at_monitor": summary([t["head_lost_ms"] for t in trials]),
            "trials": [{k: round(v, 2) for k, v in t.items()} for t in trials],
        },
        "method": {
            "sink": "PulseAudio module-null-sink via the ALSA pulse plugin (PyAudioSink default)",
            "capture": f"parec on the monitor, --latency-msec={CAPTURE_LATENCY_MS}",
            "old_programme": "440 Hz sine at -20 dBFS, 30 s MP3; cut after 0.4-0.8 s",
            "new_item": "0.3 s sweep from 300 Hz (8 kHz/s) at -6 dBFS, MP3",
            "loopback_calibration": calibration,
            "capture_health": capture_health,
        },
        "machine": machine_info(),
        "wall_s": round(time.monotonic() - started, 1),
    }
    write_result("preemption", result, args.results)
    d = result["detail"]
    print(
        f"preemption: n={latency['n']} cut->new first sample p50={latency['p50_ms']:.1f} ms "
        f"p99={latency['p99_ms']:.1f} ms; cut() returned p50={d['cut_call']['p50_ms']:.1f} ms; "
        f"old programme sounded p99={d['old_sounds_after_cut']['p99_ms']:.1f} ms after the cut"
    )
    print(
        f"method error (loopback): p50={calibration['p50_ms']:+.2f} ms, "
        f"range [{calibration['min_ms']:+.2f}, {calibration['max_ms']:+.2f}] ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
