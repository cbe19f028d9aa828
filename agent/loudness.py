"""Loudness normalisation (EBU R128 / ITU-R BS.1770): measuring a medium once, remembering the
result beside it in the media cache, and turning it into a gain.

Owns: the measurement (ffmpeg's ``ebur128`` filter, integrated loudness and true peak), the
rule that turns a measurement into a correction (``gain_db``: towards a target, a boost capped
so a quiet file is not blown into distortion, and limited by the true-peak ceiling), and the
sidecar files ``<sha256>.loudness.json`` in the cache root (written atomically, one per medium,
next to the medium they describe).

Leaves to others: when to measure (the fetch worker calls ``LoudnessStore.ensure`` once a medium
is in the cache; it blocks for as long as ffmpeg reads the whole file), the target and cap
(configuration), applying the gain (the player multiplies it into the ``Decoder``'s linear gain)
and deleting a sidecar when its medium is evicted (``LoudnessStore.discard``).

A medium that cannot be measured (ffmpeg missing or failing, a corrupt file, a timeout) has no
loudness: ``measure_lufs`` and ``ensure`` say ``None`` without raising, nothing is stored (the
next ``ensure`` tries again) and the player applies no normalisation. A silent medium, or one
shorter than the 400 ms gating block, is measured as ``lufs=None`` and that *is* stored, so a
long silent file is not read again and again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent.core.clock import Clock
from agent.core.timefmt import format_rfc3339
from hal.clock import SystemClock
from hal.files import atomic_write

__all__ = [
    "SIDECAR_SUFFIX",
    "Loudness",
    "LoudnessError",
    "LoudnessStore",
    "db_to_gain",
    "gain_db",
    "measure",
    "measure_lufs",
    "parse_summary",
]

log = logging.getLogger("loa.loudness")

SIDECAR_SUFFIX = ".loudness.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ABSOLUTE_GATE_LUFS = -70.0  # BS.1770: blocks below this are not loudness; ffmpeg prints it
_STDERR_TAIL = 64 * 1024  # the summary is the last thing ffmpeg prints; errors may precede it
_MESSAGE_TAIL = 500
_INTEGRATED = re.compile(r"^\s*I:\s*(\S+)\s+LUFS\s*$", re.MULTILINE)
_TRUE_PEAK = re.compile(r"^\s*Peak:\s*(\S+)\s+dBFS\s*$", re.MULTILINE)


class LoudnessError(Exception):
    """The loudness of a medium could not be measured: ffmpeg is missing or failed, the medium
    is unreadable, or the measurement took too long."""


@dataclass(frozen=True, slots=True)
class Loudness:
    lufs: float | None  # integrated loudness; None: silence, or shorter than one 400 ms block
    true_peak_dbtp: float | None  # None: digital silence


# --- Measuring ------------------------------------------------------------------------------


def _command(path: Path, ffmpeg: str) -> list[str]:
    # ebur128 rather than loudnorm's measuring pass: the same BS.1770 figures for two thirds
    # of the CPU (loudnorm resamples everything to 192 kHz). Its frame log is pushed to the
    # verbose level so that at "info" only the summary remains; "framelog=quiet" is not known
    # to ffmpeg 5.1 (Debian 12), which then fails and still prints an all-zero summary, so the
    # exit status is checked before the summary is believed. -vn: a cover picture is not
    # decoded for nothing.
    return [
        ffmpeg, "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info",
        "-i", str(path), "-vn", "-sn", "-dn",
        "-af", "ebur128=framelog=verbose:peak=true", "-f", "null", "-",
    ]  # fmt: skip


def _lower_priority(pid: int, niceness: int) -> None:
    # A measurement reads a whole file as fast as a core allows (about 60 times real time on a
    # desktop, far less on a Pi): it must not take the CPU from playback. Set right after the
    # start, while ffmpeg is still loading; the threads it starts later inherit the value.
    if niceness <= 0:
        return
    with contextlib.suppress(OSError):  # already gone, or not permitted: measure anyway
        current = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, pid, min(19, current + niceness))


def _read_tail(file: IO[bytes]) -> str:
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - _STDERR_TAIL))
    return file.read().decode("utf-8", "replace")


def _value(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError as exc:
        raise LoudnessError(f"ffmpeg printed an unreadable loudness {text!r}") from exc
    return value if math.isfinite(value) else None


def parse_summary(text: str) -> Loudness:
    """The figures of the last ``ebur128`` summary in ffmpeg's log."""
    at = text.rfind("Summary:")
    if at < 0:
        raise LoudnessError("ffmpeg printed no loudness summary")
    summary = text[at:]
    integrated = _INTEGRATED.search(summary)
    if integrated is None:
        raise LoudnessError("ffmpeg's loudness summary has no integrated loudness")
    lufs = _value(integrated.group(1))
    if lufs is not None and lufs <= _ABSOLUTE_GATE_LUFS:
        lufs = None  # nothing passed the absolute gate: silence, or too short to measure
    peak = _TRUE_PEAK.search(summary)
    return Loudness(lufs=lufs, true_peak_dbtp=_value(peak.group(1)) if peak else None)


def measure(
    path: Path, ffmpeg: str = "ffmpeg", *, timeout_s: float | None = None, niceness: int = 10
) -> Loudness:
    """Integrated loudness and true peak of the medium at ``path``, read once from end to end.

    Blocks until ffmpeg is done (``timeout_s``: give up after that long). ffmpeg runs
    ``niceness`` steps below the caller. Raises ``LoudnessError`` when it cannot be measured.
    """
    with tempfile.TemporaryFile() as stderr:
        try:
            proc = subprocess.Popen(
                _command(path, ffmpeg),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,  # a file, not a pipe: a noisy decode cannot stall ffmpeg
            )
        except OSError as exc:
            raise LoudnessError(f"cannot run {ffmpeg!r}: {exc}") from exc
        try:
            _lower_priority(proc.pid, niceness)
            returncode = proc.wait(timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise LoudnessError(f"measuring {path} took longer than {timeout_s} s") from exc
        finally:
            if proc.poll() is None:  # timed out, or the caller was interrupted
                proc.kill()
                proc.wait()
        text = _read_tail(stderr)
    if returncode != 0:
        raise LoudnessError(
            f"ffmpeg could not measure {path} (exit {returncode}): "
            f"{text.strip()[-_MESSAGE_TAIL:] or '(no message)'}"
        )
    return parse_summary(text)


def measure_lufs(path: Path, ffmpeg: str = "ffmpeg") -> float | None:
    """Integrated loudness of the medium in LUFS; ``None`` for silence, a medium too short to
    measure, and one that cannot be measured at all (which is logged, not raised)."""
    try:
        return measure(path, ffmpeg).lufs
    except LoudnessError as exc:
        log.warning("no loudness for %s: %s", path, exc)
        return None


# --- The correction -------------------------------------------------------------------------


def gain_db(
    measured_lufs: float,
    target_lufs: float,
    max_gain_db: float = 12.0,
    *,
    true_peak_dbtp: float | None = None,
    peak_ceiling_dbtp: float = -1.0,
) -> float:
    """The correction in dB that brings ``measured_lufs`` to ``target_lufs``.

    A boost is capped at ``max_gain_db`` (a near-silent recording raised by 30 dB is mostly
    hiss) and, when the true peak is known, at what keeps it under ``peak_ceiling_dbtp``: the
    sound card would clip what the file's own peaks cannot take. The ceiling only limits a
    boost; a medium that already peaks above it is not turned down for that (it would end up
    quieter than its neighbours, which is what normalisation is meant to prevent). A cut is
    never capped: turning down cannot distort.
    """
    for name, value in (
        ("measured_lufs", measured_lufs),
        ("target_lufs", target_lufs),
        ("max_gain_db", max_gain_db),
        ("peak_ceiling_dbtp", peak_ceiling_dbtp),
    ):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if max_gain_db < 0:
        raise ValueError(f"max_gain_db must not be negative, got {max_gain_db!r}")
    wanted = target_lufs - measured_lufs
    if wanted <= 0:
        return wanted
    allowed = max_gain_db
    if true_peak_dbtp is not None and math.isfinite(true_peak_dbtp):
        allowed = min(allowed, max(0.0, peak_ceiling_dbtp - true_peak_dbtp))
    return min(wanted, allowed)


def db_to_gain(db: float) -> float:
    """A level change in dB as the linear factor the ``Decoder`` takes."""
    return float(10.0 ** (db / 20.0))


# --- The sidecar store ----------------------------------------------------------------------


def _check_sha256(sha256: str) -> None:
    if not isinstance(sha256, str) or _SHA256.fullmatch(sha256) is None:
        raise ValueError(f"not a lowercase hex SHA-256: {sha256!r}")


def _optional_number(doc: dict[str, Any], key: str) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} is not a number")
    return float(value)


class LoudnessStore:
    """``<sha256>.loudness.json`` beside each cached medium under ``cache_root``.

    ``measurer`` replaces ffmpeg (tests); otherwise ``measure`` runs with ``ffmpeg`` and
    ``timeout_s``.

    ``ensure`` measures a medium only when its sidecar is absent (or unreadable), and holds a
    lock while it does: one measurement at a time is what a Pi can spare, and two threads never
    write the same sidecar. ``get`` and ``loudness`` only read, without the lock, and never
    raise for a missing or damaged sidecar: at play time "unknown" just means no normalisation.
    """

    def __init__(
        self,
        cache_root: Path,
        *,
        ffmpeg: str = "ffmpeg",
        timeout_s: float | None = None,
        clock: Clock | None = None,
        measurer: Callable[[Path], Loudness] | None = None,
    ) -> None:
        self.root = Path(cache_root)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._measure = measurer or (lambda path: measure(path, ffmpeg, timeout_s=timeout_s))
        self._lock = threading.Lock()

    def path_for(self, sha256: str) -> Path:
        _check_sha256(sha256)  # it becomes a file name
        return self.root / f"{sha256}{SIDECAR_SUFFIX}"

    def loudness(self, sha256: str) -> Loudness | None:
        """The stored measurement; ``None`` when the medium has not been measured."""
        path = self.path_for(sha256)
        try:
            doc = json.loads(path.read_bytes())
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            return Loudness(
                lufs=_optional_number(doc, "lufs"),
                true_peak_dbtp=_optional_number(doc, "true_peak_dbtp"),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # json.JSONDecodeError and UnicodeError included
            # Written atomically, so this is a disk fault or a hand edit: measure again.
            log.warning("ignoring unreadable loudness sidecar %s: %s", path, exc)
            return None

    def get(self, sha256: str) -> float | None:
        """The medium's integrated loudness in LUFS; ``None`` when unknown or silent."""
        stored = self.loudness(sha256)
        return stored.lufs if stored is not None else None

    def ensure(self, sha256: str, path: Path) -> float | None:
        """Measure the cached medium at ``path`` unless it already has been; its LUFS.

        A failed measurement is logged and not stored (``None``); a sidecar that cannot be
        written (a full disk) is logged too, and the figure is still returned.
        """
        with self._lock:
            stored = self.loudness(sha256)
            if stored is not None:
                return stored.lufs
            try:
                measured = self._measure(path)
            except LoudnessError as exc:
                log.warning("no loudness for %s: %s", sha256, exc)
                return None
            doc = {
                "lufs": measured.lufs,
                "true_peak_dbtp": measured.true_peak_dbtp,
                "measured_at": format_rfc3339(self._clock.now()),
            }
            try:
                atomic_write(self.path_for(sha256), json.dumps(doc).encode() + b"\n")
            except OSError as exc:
                log.warning("cannot store the loudness of %s: %s", sha256, exc)
            return measured.lufs

    def correction_db(
        self,
        sha256: str,
        target_lufs: float,
        *,
        max_gain_db: float = 12.0,
        peak_ceiling_dbtp: float = -1.0,
    ) -> float:
        """``gain_db`` for a stored measurement; 0.0 (play as is) when there is none."""
        stored = self.loudness(sha256)
        if stored is None or stored.lufs is None:
            return 0.0
        return gain_db(
            stored.lufs,
            target_lufs,
            max_gain_db,
            true_peak_dbtp=stored.true_peak_dbtp,
            peak_ceiling_dbtp=peak_ceiling_dbtp,
        )

    def discard(self, sha256: str) -> None:
        """Forget a medium's loudness (its medium was evicted from the cache)."""
        self.path_for(sha256).unlink(missing_ok=True)

    def remove_temporaries(self) -> int:
        """Delete the temporary files of sidecar writes a crash interrupted (``atomic_write``
        names them ``.<name>.<pid>.tmp``); run at start, before any ``ensure``."""
        removed = 0
        try:
            entries = list(self.root.iterdir())
        except FileNotFoundError:
            return 0
        for entry in entries:
            name = entry.name
            if (
                name.startswith(".")
                and name.endswith(".tmp")
                and SIDECAR_SUFFIX in name
                and not entry.is_dir()
            ):
                entry.unlink(missing_ok=True)
                removed += 1
        return removed
