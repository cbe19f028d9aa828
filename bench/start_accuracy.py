"""Start accuracy: |instant the item's first sample reaches the (paced) sink - scheduled instant|.

Real ``Player`` + ``Decoder`` (ffmpeg) + ``PyAudioSink`` with ``MockFactory`` relays, warm-up
0, on a PulseAudio null sink captured from its monitor (see ``bench.paced_sink``).

Two modes, interleaved trial by trial so both see the same machine state:

- baseline, no pre-roll: the runtime calls ``play()`` at the scheduled instant (what the
  station does when its timer fires) and the player starts from there;
- pre-roll: ``PlayRequest.start_at`` = the scheduled instant, ``play()`` called ``--lead``
  seconds earlier. Measured only when the player has that field.

Writes ``bench/results/start_accuracy.json``: ``n``, ``p50_ms``, ``p99_ms`` for the pre-roll
mode (null when the player has none), ``baseline_*`` for the baseline of the same run.

    .venv/bin/python -m bench.start_accuracy
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS,
    machine_info,
    make_chirp,
    rounded,
    sleep_until,
    summary,
    write_result,
)
from bench.paced_sink import (
    LOUD,
    RATE,
    MonitorCapture,
    PulseNullSink,
    Reference,
    calibrate,
)
from bench.player_rig import HAS_PREROLL, PlayerRig, reference
from hal.audio import PyAudioSink

COMMAND = ".venv/bin/python -m bench.start_accuracy"
QUICK_N = 5
CAPTURE_LATENCY_MS = 2


def trial(
    rig: PlayerRig,
    capture: MonitorCapture,
    item: Path,
    ref: Reference,
    preroll: bool,
    lead: float,
) -> dict[str, float]:
    scheduled = time.monotonic() + (lead if preroll else 0.0) + 0.2 + random.uniform(0, 0.05)
    request = rig.request(item, start_at=scheduled if preroll else None)
    called = sleep_until(scheduled - lead if preroll else scheduled)
    writes_before = len(rig.first_writes)
    rig.player.play(request)
    result = rig.wait_done()
    if result.outcome != "complete":
        raise RuntimeError(f"play ended {result.outcome}: {result.reason}")
    capture.wait_covered(time.monotonic())
    located = capture.locate(ref, capture.frame_at(called), capture.frame_at(time.monotonic()))
    arrived = located.instant
    first_write = rig.first_writes[writes_before]
    return {
        "error_ms": (arrived - scheduled) * 1000,
        "play_to_first_write_ms": (first_write - called) * 1000,
        "first_write_to_sink_ms": (arrived - first_write) * 1000,
        "call_late_ms": (called - (scheduled - lead if preroll else scheduled)) * 1000,
        "head_lost_ms": located.head_lost_frames / RATE * 1000,
    }


def stats(trials: list[dict[str, float]]) -> dict[str, Any]:
    errors = [t["error_ms"] for t in trials]
    return {
        **summary([abs(e) for e in errors]),
        "signed": summary(errors),
        "play_to_first_write": summary([t["play_to_first_write_ms"] for t in trials]),
        "first_write_to_sink": summary([t["first_write_to_sink_ms"] for t in trials]),
        "bench_call_late": summary([t["call_late_ms"] for t in trials]),
        "head_missing_at_monitor": summary([t["head_lost_ms"] for t in trials]),
        "signed_errors_ms": rounded(errors),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=60, help="trials per mode (default 60)")
    parser.add_argument("--lead", type=float, default=0.5, help="pre-roll: play() this early")
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
        item = Path(tmp) / "chirp.mp3"
        make_chirp(item, 0.3, 0.5)
        ref = reference(item)
        calibration = calibrate(sink, capture)
        rig = PlayerRig(warmup_s=0.0)
        try:
            # One play not counted: ffmpeg, PortAudio and the ALSA plugin loaded from disk once.
            rig.player.play(rig.request(item))
            time.sleep(0.15)
            sink_latency = sink.sink_latency_us()
            rig.wait_done()
            modes = ["baseline", "preroll"] if HAS_PREROLL else ["baseline"]
            trials: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
            for _ in range(args.n):
                for mode in modes:
                    trials[mode].append(
                        trial(rig, capture, item, ref, mode == "preroll", args.lead)
                    )
        finally:
            rig.close()
        capture_health = capture.read_delay_ms()
    baseline = stats(trials["baseline"])
    preroll = stats(trials["preroll"]) if HAS_PREROLL else None
    result: dict[str, Any] = {
        "benchmark": "start_accuracy",
        "title": "Start accuracy: |first sample at the sink - scheduled instant|, warm-up 0",
        "command": COMMAND + (" --quick" if args.quick else ""),
        "quick": args.quick,
        "preroll_available": HAS_PREROLL,
        "n": preroll["n"] if preroll else 0,
        "p50_ms": preroll["p50_ms"] if preroll else None,
        "p99_ms": preroll["p99_ms"] if preroll else None,
        "baseline_n": baseline["n"],
        "baseline_p50_ms": baseline["p50_ms"],
        "baseline_p99_ms": baseline["p99_ms"],
        "method_error_p50_ms": calibration["p50_ms"],
        "method_error_min_ms": calibration["min_ms"],
        "method_error_max_ms": calibration["max_ms"],
        "method_error_max_abs_ms": max(abs(calibration["min_ms"]), abs(calibration["max_ms"])),
        "figures": ["p50_ms", "p99_ms", "method_error_max_abs_ms"],
        "baselines": {"p50_ms": "baseline_p50_ms", "p99_ms": "baseline_p99_ms"},
        "labels": {
            "p50_ms": "p50 of the start error, pre-roll (start_at)",
            "p99_ms": "p99 of the start error, pre-roll (start_at)",
            "baseline_p50_ms": "play() at the instant, no pre-roll",
            "baseline_p99_ms": "play() at the instant, no pre-roll",
            "method_error_max_abs_ms": "capture method error, loopback (largest seen)",
        },
        "missing": {}
        if HAS_PREROLL
        else {key: "the player has no PlayRequest.start_at" for key in ("p50_ms", "p99_ms")},
        "preroll_lead_s": args.lead if HAS_PREROLL else None,
        "item": "0.3 s sweep from 300 Hz (8 kHz/s), -6 dBFS, MP3 192 kb/s stereo 48 kHz",
        "loud_threshold": LOUD,
        "detail": {"baseline": baseline, "preroll": preroll},
        "method": {
            "sink": "PulseAudio module-null-sink via the ALSA pulse plugin (PyAudioSink default)",
            "capture": f"parec on the monitor, --latency-msec={CAPTURE_LATENCY_MS}",
            "sink_latency_us_during_play": sink_latency,
            "portaudio_reported_output_latency_ms": sorted(
                {round(v * 1000, 1) for v in rig.reported_latencies_s}
            ),
            "sink_has_latency_s": hasattr(PyAudioSink("default"), "latency_s"),
            "loopback_calibration": calibration,
            "capture_health": capture_health,
        },
        "machine": machine_info(),
        "wall_s": round(time.monotonic() - started, 1),
    }
    write_result("start_accuracy", result, args.results)
    print_result(result)
    return 0


def print_result(result: dict[str, Any]) -> None:
    detail = result["detail"]
    for mode in ("baseline", "preroll"):
        s = detail[mode]
        if s is None:
            print("pre-roll: not measured (PlayRequest has no start_at)")
            continue
        print(
            f"{mode:8}: n={s['n']} |error| p50={s['p50_ms']:.2f} ms p99={s['p99_ms']:.2f} ms "
            f"(signed mean {s['signed']['mean_ms']:+.2f} ms); play->first write "
            f"p50={s['play_to_first_write']['p50_ms']:.1f} ms, first write->sink "
            f"p50={s['first_write_to_sink']['p50_ms']:.1f} ms"
        )
    cal = result["method"]["loopback_calibration"]
    print(
        f"method error (loopback): p50={cal['p50_ms']:+.2f} ms, "
        f"range [{cal['min_ms']:+.2f}, {cal['max_ms']:+.2f}] ms"
    )


if __name__ == "__main__":
    sys.exit(main())
