"""What every benchmark shares: machine facts, percentiles, writing the result file, sleeping
until an instant, and making test media with ffmpeg."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def machine_info() -> dict[str, Any]:
    """The facts a reader needs to compare a figure with another machine's."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_state(),
    }


def git_state() -> dict[str, Any]:
    """The commit measured, and which files under agent/ and hal/ differed from it (others edit
    them concurrently: a figure belongs to the code that produced it)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=10
        )
        return done.stdout if done.returncode == 0 else ""

    # Porcelain lines are "XY path": two status letters (either may be a space), a space.
    changed = git("status", "--porcelain", "--untracked-files=all", "--", "agent", "hal")
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "modified": sorted(line[3:] for line in changed.splitlines() if len(line) > 3),
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's
    default, "type 7"): with 50 values, p99 lies between the largest two."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values_ms: Sequence[float]) -> dict[str, float | int]:
    """n, p50, p99, min, max and mean, in milliseconds rounded to 0.01 ms."""
    return {
        "n": len(values_ms),
        "p50_ms": round(percentile(values_ms, 50), 2),
        "p99_ms": round(percentile(values_ms, 99), 2),
        "min_ms": round(min(values_ms), 2),
        "max_ms": round(max(values_ms), 2),
        "mean_ms": round(sum(values_ms) / len(values_ms), 2),
    }


def rounded(values: Iterable[float], digits: int = 2) -> list[float]:
    return [round(v, digits) for v in values]


def write_result(name: str, data: dict[str, Any], results: Path = RESULTS) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def sleep_until(instant: float) -> float:
    """Sleep on the monotonic clock until ``instant``: coarse sleep, then a short spin, so the
    caller acts within a few microseconds of it. Returns the monotonic time on waking."""
    while True:
        left = instant - time.monotonic()
        if left <= 0:
            return time.monotonic()
        if left > 0.003:
            time.sleep(left - 0.002)


def make_tone(
    path: Path, freq_hz: float, seconds: float, amplitude: float, *, mono_64k: bool = False
) -> None:
    """An MP3 sine tone at 48 kHz (the station's media format). ffmpeg's ``sine`` source is 1/8
    of full scale, so ``amplitude=1.0`` asks for a full-scale sine."""
    channels = ["-ac", "1", "-b:a", "64k"] if mono_64k else ["-ac", "2", "-b:a", "192k"]
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"sine=frequency={freq_hz}:duration={seconds}:sample_rate=48000",
         "-af", f"volume={8 * amplitude}", *channels, "-compression_level", "9", str(path)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


def make_chirp(path: Path, seconds: float, amplitude: float) -> None:
    """An MP3 sweep from 300 Hz up (8 kHz per second), stereo 48 kHz: a test item whose every
    stretch is unlike every other, so a capture of it lines up with the original in one place."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"aevalsrc={amplitude}*sin(2*PI*(300*t+4000*t*t)):s=48000:d={seconds}",
         "-ac", "2", "-b:a", "192k", "-compression_level", "9", str(path)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_stat_cpu_s(stat: str) -> float:
    """utime + stime, in seconds, from the text of ``/proc/<pid>/stat``. The command name (field
    2) is in parentheses and may hold spaces or parentheses itself, so fields are counted from
    its last ``)``: utime and stime are fields 14 and 15, the 12th and 13th after it."""
    rest = stat[stat.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) the process ``pid`` has used so far; None once it is gone. Its
    children's time is not in it (that is counted only after they are reaped, as cutime)."""
    try:
        return parse_stat_cpu_s(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def status_kb(pid: int, field: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``); None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def child_pids(pid: int) -> list[int]:
    """The live children of ``pid`` (every thread's), from ``/proc/<pid>/task/*/children``."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return found
