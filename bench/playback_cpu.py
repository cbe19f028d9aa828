"""Playback CPU: what playing a 60-minute MP3 costs the station, per process, against ffmpeg alone
playing the same file at real time into the same kind of sink.

The item is generated with ffmpeg: pink noise, 48 kHz stereo, 128 kb/s MP3, 60 minutes
(``--quick``: 15 s). The sink is the paced one of the timing benchmarks (``bench.paced_sink``):
a private PulseAudio null sink, reached through ALSA's ``default`` device and the ``pulse``
plugin, which consumes 48 kHz on the monotonic clock as a sound card does.

- Loa: a child Python process (``--play``, so that its ``/proc/<pid>/stat`` holds nothing of
  this benchmark's own work) drives the agent's real ``Player`` with the ``Decoder`` the station
  builds (ffmpeg, 20 ms chunks, the gain filter) into ``PyAudioSink("default")``, MockFactory
  relays (``bench.player_rig``). The player's Python process and its ffmpeg child are measured
  apart: (utime + stime) from ``/proc/<pid>/stat`` at the two ends of a window that starts 2 s
  into the play and ends 3 s before its end, over the window's wall time, in % of one core.
- Baseline: ``ffmpeg -re`` decoding the same file with the same filter and output format into
  ALSA ``default`` (the same ``pulse`` path to the same null sink), measured over the same
  window. It runs at the same time as the player, so both see the same machine.

The player process's own ``os.times()`` over the whole play (its ffmpeg reaped, so counted as
its children's) is in the detail.

    .venv/bin/python -m bench.playback_cpu [--quick] [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    CLOCK_TICKS,
    RESULTS,
    ROOT,
    child_pids,
    cpu_seconds,
    machine_info,
    write_result,
)
from bench.paced_sink import PulseNullSink, check_tools

COMMAND = ".venv/bin/python -m bench.playback_cpu"
HEAD_S = 2.0  # the window starts this long into the play (ffmpeg and the stream settled)
TAIL_S = 3.0  # and ends this long before its end (both processes still running)


def make_item(path: Path, seconds: float) -> None:
    """Pink noise, 48 kHz stereo, 128 kb/s MP3: every frame has content to decode."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"anoisesrc=color=pink:sample_rate=48000:amplitude=0.3:duration={seconds}:seed=7",
         "-ac", "2", "-b:a", "128k", str(path)],
        check=True, capture_output=True, timeout=1800,
    )  # fmt: skip


def player_main(item: Path, seconds: float) -> int:
    """The child: the real player plays ``item`` once on ``go``; prints its times as JSON."""
    from bench.player_rig import PlayerRig

    rig = PlayerRig()
    try:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1
        before = os.times()
        started = time.monotonic()
        rig.player.play(rig.request(item))
        result = rig.wait_done(seconds + 120)
        wall = time.monotonic() - started
        after = os.times()
    finally:
        rig.close()
    print(json.dumps({
        "outcome": result.outcome, "reason": result.reason, "wall_s": wall,
        "self_cpu_s": (after.user - before.user) + (after.system - before.system),
        "children_cpu_s": (after.children_user - before.children_user)
        + (after.children_system - before.children_system),
    }), flush=True)  # fmt: skip
    return 0


def ffmpeg_of(pid: int, timeout_s: float = 30.0) -> int:
    """The ffmpeg child of ``pid``, once it runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in child_pids(pid):
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "ffmpeg":
                    return child
            except OSError:
                continue
        time.sleep(0.01)
    raise RuntimeError(f"no ffmpeg child of {pid} within {timeout_s:.0f} s")


def cpu_now(pids: dict[str, int]) -> dict[str, float]:
    found = {}
    for name, pid in pids.items():
        value = cpu_seconds(pid)
        if value is None:
            raise RuntimeError(f"{name} (pid {pid}) ended inside the measuring window")
        found[name] = value
    return found


def run(tmp: Path, seconds: float, quick: bool) -> dict[str, Any]:
    check_tools()
    item = tmp / "programme.mp3"
    t = time.monotonic()
    make_item(item, seconds)
    encode_s = time.monotonic() - t
    player_log = tmp / "player.log"
    with PulseNullSink(tmp / "pulse") as sink, player_log.open("wb") as log:
        env = dict(os.environ, **sink.env, PYTHONUNBUFFERED="1")
        player = subprocess.Popen(
            [sys.executable, "-m", "bench.playback_cpu", "--play", str(item),
             "--seconds", str(seconds)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            text=True,
        )  # fmt: skip
        baseline: subprocess.Popen[bytes] | None = None
        try:
            assert player.stdin is not None and player.stdout is not None
            if player.stdout.readline().strip() != "ready":
                raise RuntimeError("the player process did not start")
            player.stdin.write("go\n")
            player.stdin.flush()
            started = time.monotonic()
            baseline = subprocess.Popen(
                ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-re",
                 "-i", str(item), "-af", "volume=1.000000", "-ac", "2", "-ar", "48000",
                 "-f", "alsa", "default"],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            pids = {
                "player": player.pid,
                "decoder": ffmpeg_of(player.pid),
                "baseline": baseline.pid,
            }
            time.sleep(max(0.0, started + HEAD_S - time.monotonic()))
            t0, cpu0 = time.monotonic(), cpu_now(pids)
            time.sleep(max(0.0, started + seconds - TAIL_S - time.monotonic()))
            t1, cpu1 = time.monotonic(), cpu_now(pids)
            line = player.stdout.readline()
            try:
                played = json.loads(line)
            except ValueError as exc:
                raise RuntimeError(f"the player process failed: {line!r}") from exc
            if played["outcome"] != "complete":
                raise RuntimeError(f"the play ended {played['outcome']}: {played['reason']}")
            _, errors = baseline.communicate(timeout=60)
            baseline_wall = time.monotonic() - started
            if baseline.returncode != 0:
                raise RuntimeError(f"ffmpeg -re failed: {errors.decode(errors='replace')}")
        finally:
            for proc in (player, baseline):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
    window = t1 - t0
    # ALSA says so on stderr when the writer fell behind the sink (a busy machine).
    underruns = {
        "player": player_log.read_text(errors="replace").count("underrun"),
        "baseline": errors.decode(errors="replace").count("underrun"),
    }
    pct = {name: round(100 * (cpu1[name] - cpu0[name]) / window, 2) for name in pids}
    total = round(pct["player"] + pct["decoder"], 2)
    return {
        "benchmark": "playback_cpu",
        "title": f"CPU of playing a {seconds / 60:g}-minute MP3 through the real Player into a "
        "paced sink",
        "command": COMMAND + (" --quick" if quick else ""),
        "quick": quick,
        "total_cpu_pct": total,
        "player_cpu_pct": pct["player"],
        "decoder_cpu_pct": pct["decoder"],
        "baseline_cpu_pct": pct["baseline"],
        "ratio": round(total / pct["baseline"], 2) if pct["baseline"] else None,
        "figures": ["total_cpu_pct", "player_cpu_pct", "decoder_cpu_pct", "ratio"],
        "labels": {
            "total_cpu_pct": "Loa playing: player's Python process + its ffmpeg, % of one core",
            "player_cpu_pct": "the player's Python process (Player, PyAudio), % of one core",
            "decoder_cpu_pct": "its ffmpeg decoder (child process), % of one core",
            "ratio": "Loa's total / ffmpeg -re alone",
            "baseline_cpu_pct": "ffmpeg -re, same file and filter, into ALSA default (pulse)",
        },
        "baselines": {"total_cpu_pct": "baseline_cpu_pct", "decoder_cpu_pct": "baseline_cpu_pct"},
        "detail": {
            "window_s": round(window, 1),
            "window": f"from {HEAD_S:g} s into the play to {TAIL_S:g} s before its end; "
            f"CPU clock ticks of 1/{CLOCK_TICKS} s",
            "cpu_s_in_window": {name: round(cpu1[name] - cpu0[name], 2) for name in pids},
            "whole_play": {
                "wall_s": round(played["wall_s"], 1),
                "player_cpu_s": round(played["self_cpu_s"], 2),
                "decoder_cpu_s": round(played["children_cpu_s"], 2),
                "note": "os.times() of the player process over play() to its result, "
                "including start-up; ffmpeg counted once reaped",
            },
            "baseline_wall_s": round(baseline_wall, 1),
            "alsa_underruns": underruns,
            "media": {
                "seconds": seconds,
                "format": "MP3 128 kb/s stereo 48 kHz, pink noise",
                "bytes": item.stat().st_size,
                "encode_s": round(encode_s, 1),
            },
            "sink": "private PulseAudio null sink (bench.paced_sink) through ALSA default and "
            "the pulse plugin, for both",
            "concurrent": "the player and the baseline play at the same time into the same "
            "null sink",
        },
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 15 s item, not 60 min (CI)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--play", type=Path, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--seconds", type=float, default=3600.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.play is not None:
        return player_main(args.play, args.seconds)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seconds = 15.0 if args.quick else 3600.0
    with tempfile.TemporaryDirectory(prefix="loa-bench-playback-") as tmp:
        result = run(Path(tmp), seconds, args.quick)
    path = write_result("playback_cpu", result, args.results)
    print(
        f"playback_cpu: Loa {result['total_cpu_pct']:.2f} % of a core (player "
        f"{result['player_cpu_pct']:.2f} %, ffmpeg {result['decoder_cpu_pct']:.2f} %); ffmpeg "
        f"-re alone {result['baseline_cpu_pct']:.2f} %; ratio {result['ratio']}"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
