"""Proof of sound: the level the loudspeaker chain really carries, measured through a sound card
input (a USB card's line-in tapped from the amplifier output through an attenuator, or a
microphone near a horn), and the rule that turns a quiet output into one silence fault.

Owns: the ``LevelProbe`` port; ``PyAudioProbe``, a PortAudio input stream read by its own thread
only while a measurement runs; the level arithmetic (RMS over a measurement, over a rolling
window of about a second, and a floor for digital silence); ``SilenceWatch``, the pure rule
"sound was expected and the level stayed below the threshold for ``after_s``", once per play.

Leaves to others: when sound is expected (the player runtime: ``start()`` before the first
chunk, ``stop()`` after the sink closed, the watch fed once per chunk and armed per item so the
gaps between items do not count), what a fault means (the station: an event, the as-run),
device, threshold and calibration (configuration), the output itself (``hal.audio``).

Levels are dBFS of the *input*, all channels together, like ``hal.audio.pcm_rms_dbfs``. They
are floored at ``SILENCE_FLOOR_DBFS``: digital silence was measured and is a number; ``None``
always means "nothing was read", so an as-run can tell "silent" from "not measured".

A sound card that fails leaves this module as ``CaptureError`` from ``open()``/``close()``; a
failure while the reader thread runs is kept in ``failure`` (the playback must not fail because
its measurement did) and the levels say ``None`` or what was read before it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

# The stderr filter and the sample arithmetic are shared with the output side, so PortAudio's
# probe noise is recognised the same way and a level means the same thing in both directions.
from hal.audio import (
    SAMPLE_RATE,
    AudioError,
    _captured_stderr,
    _pass_through_foreign_lines,
    _read_capture,
    _samples,
    _sum_of_squares,
)

SILENCE_FLOOR_DBFS = -120.0
WINDOW_S = 1.0
_FULL_SCALE = 32768.0
_STDERR_TAIL = 2000


class CaptureError(AudioError):
    """The capture sound card or PortAudio failed: the hardware must be looked at."""


def level_dbfs(sum_of_squares: int, count: int) -> float | None:
    """RMS level in dBFS of ``count`` s16 samples whose squares add up to ``sum_of_squares``;
    ``None`` when there are no samples, ``SILENCE_FLOOR_DBFS`` at most quiet."""
    if count <= 0:
        return None
    if sum_of_squares <= 0:
        return SILENCE_FLOOR_DBFS
    rms = math.sqrt(sum_of_squares / count)
    return max(SILENCE_FLOOR_DBFS, 20.0 * math.log10(rms / _FULL_SCALE))


def is_silent(level: float | None, threshold_dbfs: float = -50.0) -> bool:
    """A measured level below the threshold. ``None`` (not measured) is not silence."""
    return level is not None and level < threshold_dbfs


class LevelProbe(Protocol):
    """A level meter on the real output. ``start``/``stop``/``level_now`` never raise for the
    hardware (see ``failure``); ``open``/``close`` raise ``CaptureError``."""

    def open(self) -> None: ...

    def start(self) -> None:
        """Begin a measurement (a play): forget the previous one and the window."""
        ...

    def stop(self) -> float | None:
        """End the measurement: RMS dBFS of everything read since ``start()``, None if
        nothing was read."""
        ...

    def level_now(self) -> float | None:
        """RMS dBFS of the last ~1 s read; None if nothing was read in the last ~1 s."""
        ...

    def measure(self, seconds: float, timeout_s: float | None = None) -> float | None:
        """A whole measurement of ``seconds`` of input (a technician's self-test)."""
        ...

    @property
    def failure(self) -> str | None:
        """Why the last measurement could not read (device gone, stalled); None if it could."""
        ...

    def close(self) -> None: ...


# --- Sound card -----------------------------------------------------------------------------


class PyAudioProbe:
    """A PortAudio input stream (s16le at ``rate``, ``channels`` channels) read by one thread.

    ``open()`` initialises PortAudio and opens the stream (PortAudio's device probe is paid
    once, at station start); the stream only runs between ``start()`` and ``stop()``, so an idle
    station neither reads nor overruns. Only the reader thread touches the stream while it
    runs: PortAudio streams are not safe to stop from one thread while another reads.

    ``level_now()`` covers the chunks that arrived in the last ``window_s`` seconds (by
    ``monotonic``) and at most ``window_s`` of audio: a reader that stalls or dies makes it
    ``None`` within a window instead of repeating its last value.
    """

    def __init__(
        self,
        device: str = "default",
        rate: int = SAMPLE_RATE,
        channels: int = 1,
        *,
        chunk_frames: int | None = None,
        window_s: float = WINDOW_S,
        stop_timeout_s: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or channels <= 0:
            raise ValueError(f"rate and channels must be positive, got {rate}, {channels}")
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be a positive number, got {window_s!r}")
        self.device = device
        self.rate = rate
        self.channels = channels
        self.chunk_frames = chunk_frames or rate // 10  # 100 ms: a stop answers that fast
        if self.chunk_frames <= 0:
            raise ValueError(f"chunk_frames must be positive, got {chunk_frames!r}")
        self.window_s = window_s
        self.stop_timeout_s = stop_timeout_s
        self._monotonic = monotonic
        self._pa: Any = None
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        # Guarded by _cond. _want: a measurement asks the reader to read; _reading: the
        # reader's answer (its stream is started); _counting: chunks go into the measurement.
        self._want = False
        self._reading = False
        self._counting = False
        self._closing = False
        self._sum = 0
        self._count = 0
        self._target: int | None = None  # samples, for measure()
        chunks = math.ceil(window_s * rate / self.chunk_frames)
        self._window: deque[tuple[float, int, int]] = deque(maxlen=chunks)
        self._failure: str | None = None

    # lifecycle -------------------------------------------------------------------------------

    def open(self) -> None:
        if self._thread is not None:
            raise RuntimeError("PyAudioProbe is already open")
        try:
            import pyaudio
        except ImportError as exc:
            raise CaptureError("PyAudio (PortAudio) is not installed") from exc
        with _captured_stderr() as capture:
            try:
                pa = pyaudio.PyAudio()
            except (OSError, RuntimeError) as exc:
                noise = _read_capture(capture)
                raise CaptureError(f"PortAudio failed to start: {noise[-_STDERR_TAIL:]}") from exc
            try:
                index = self._device_index(pa)
                # Opening an ALSA plugin device prints its own probe lines: also filtered.
                stream = pa.open(
                    format=pyaudio.paInt16,
                    channels=self.channels,
                    rate=self.rate,
                    input=True,
                    input_device_index=index,
                    frames_per_buffer=self.chunk_frames,
                    start=False,
                )
            except (OSError, ValueError) as exc:
                pa.terminate()
                raise CaptureError(f"cannot open capture device {self.device!r}: {exc}") from exc
            except BaseException:
                pa.terminate()
                raise
            noise = _read_capture(capture)
        _pass_through_foreign_lines(noise)
        self._pa, self._stream = pa, stream
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def _device_index(self, pa: Any) -> int | None:
        if self.device == "default":
            return None  # PortAudio's host default
        inputs: list[tuple[int, str]] = []
        for index in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(index)
            if int(info.get("maxInputChannels", 0)) > 0:
                inputs.append((index, str(info.get("name", ""))))
        for index, name in inputs:
            if name == self.device:
                return index
        for index, name in inputs:
            if self.device in name:
                return index
        names = ", ".join(repr(name) for _, name in inputs) or "none"
        raise CaptureError(f"no audio input device named {self.device!r}; inputs: {names}")

    def close(self) -> None:
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._closing = True
            self._want = False
            self._cond.notify_all()
        thread.join(self.stop_timeout_s)
        if thread.is_alive():
            # Closing a stream under a blocked read can crash PortAudio: leave both to the
            # process's exit and say so.
            raise CaptureError(f"capture from {self.device!r} is stuck in a read")
        stream, pa = self._stream, self._pa
        self._thread = self._stream = self._pa = None
        try:
            stream.close()
        except OSError as exc:
            raise CaptureError(f"capture device {self.device!r} failed to close: {exc}") from exc
        finally:
            pa.terminate()

    # measurements ----------------------------------------------------------------------------

    def start(self) -> None:
        self._begin(None)

    def _begin(self, target: int | None) -> None:
        with self._cond:
            if self._thread is None:
                raise RuntimeError("PyAudioProbe is not open")
            self._sum = self._count = 0
            self._target = target
            self._window.clear()
            self._failure = None
            self._counting = True
            self._want = True
            self._cond.notify_all()

    def stop(self) -> float | None:
        with self._cond:
            self._want = False
            self._counting = False
            self._cond.notify_all()
            # Wait for the reader to leave its read and stop the stream, so the next start()
            # begins on a stopped stream.
            if not self._cond.wait_for(lambda: not self._reading, self.stop_timeout_s):
                self._failure = self._failure or (
                    f"capture from {self.device!r} stalled: a read took over "
                    f"{self.stop_timeout_s} s"
                )
            level = level_dbfs(self._sum, self._count)
            self._sum = self._count = 0
            return level

    def measure(self, seconds: float, timeout_s: float | None = None) -> float | None:
        """Read exactly ``seconds`` of input and return its level. If less arrives within
        ``timeout_s`` (default: ``seconds`` + 2 s), ``failure`` says so and the level is of
        what was read (None if nothing)."""
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"seconds must be a positive number, got {seconds!r}")
        target = max(1, round(seconds * self.rate)) * self.channels
        wait_s = seconds + 2.0 if timeout_s is None else timeout_s
        self._begin(target)
        with self._cond:
            done = self._cond.wait_for(
                lambda: self._count >= target or self._failure is not None, wait_s
            )
            if not done:
                got = self._count / self.channels / self.rate
                self._failure = (
                    f"read {got:.2f} s of {seconds} s from {self.device!r} in {wait_s} s"
                )
        return self.stop()

    def level_now(self) -> float | None:
        with self._cond:
            since = self._monotonic() - self.window_s
            fresh = [(squares, count) for at, squares, count in self._window if at >= since]
        return level_dbfs(sum(s for s, _ in fresh), sum(n for _, n in fresh))

    @property
    def failure(self) -> str | None:
        with self._cond:
            return self._failure

    # the reader thread -----------------------------------------------------------------------

    def _run(self) -> None:
        stream = self._stream
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._want or self._closing)
                if self._closing:
                    return
                self._reading = True
            failure = self._read_until_stopped(stream)
            try:
                stream.stop_stream()
            except OSError as exc:
                failure = failure or f"capture device {self.device!r} failed to stop: {exc}"
            with self._cond:
                if failure is not None:
                    self._failure = failure
                    self._want = False  # no retry until the next start(): one failure, one note
                self._reading = False
                self._cond.notify_all()

    def _read_until_stopped(self, stream: Any) -> str | None:
        try:
            stream.start_stream()
            while True:
                with self._cond:
                    if not self._want or self._closing:
                        return None
                # An overflow means we were late, not that the card failed: keep the data.
                pcm = stream.read(self.chunk_frames, exception_on_overflow=False)
                self._add(pcm)
        except OSError as exc:  # PortAudio's errors (a USB card unplugged mid-play)
            return f"capture from {self.device!r} failed: {exc}"
        except Exception as exc:  # anything else must be reported, not end the thread silently
            return f"capture from {self.device!r} failed: {exc!r}"

    def _add(self, pcm: bytes) -> None:
        samples = _samples(pcm)
        now = self._monotonic()
        with self._cond:
            if self._counting and self._target is not None:
                # measure(): exactly the asked amount, so a self-test's level is reproducible.
                room = max(0, self._target - self._count)
                if len(samples) > room:
                    samples = samples[:room]
            squares = _sum_of_squares(samples)
            if samples:
                self._window.append((now, squares, len(samples)))
            if self._counting:
                self._sum += squares
                self._count += len(samples)
                if self._target is not None and self._count >= self._target:
                    self._want = False
                    self._counting = False
                self._cond.notify_all()


# --- Silence --------------------------------------------------------------------------------


class SilenceWatch:
    """One play's silence rule, pure (no clock, no thread): fed ``observe(now, level)`` by the
    loop that writes the audio, it answers True once, when sound was expected (``arm``) and
    every observed level stayed below ``threshold_dbfs`` for ``after_s`` seconds.

    Make one per play; ``arm`` at the start of each item, ``disarm`` for gaps and the hold
    time. ``None`` levels (nothing read) end a quiet stretch: silence must be observed, not
    assumed. With a ~1 s window and an input latency of a few hundred milliseconds,
    ``after_s`` should be at least 2 s, or the window still full of the warm-up's silence
    could count against the first item.
    """

    def __init__(self, threshold_dbfs: float = -50.0, after_s: float = 3.0) -> None:
        if not math.isfinite(threshold_dbfs):
            raise ValueError(f"threshold_dbfs must be finite, got {threshold_dbfs!r}")
        if not (math.isfinite(after_s) and after_s > 0):
            raise ValueError(f"after_s must be a positive number, got {after_s!r}")
        self.threshold_dbfs = threshold_dbfs
        self.after_s = after_s
        self.fired = False
        self.quiet_since: float | None = None
        self._armed = False

    def arm(self) -> None:
        """Sound is expected from now on; a quiet stretch starts at the next observation."""
        self._armed = True
        self.quiet_since = None

    def disarm(self) -> None:
        """No sound expected (a gap, the hold time): nothing observed now counts."""
        self._armed = False
        self.quiet_since = None

    def observe(self, now: float, level: float | None) -> bool:
        """True exactly once per watch: at the first observation ``after_s`` into silence."""
        if self.fired or not self._armed:
            return False
        if not is_silent(level, self.threshold_dbfs):
            self.quiet_since = None
            return False
        if self.quiet_since is None:
            self.quiet_since = now
        if now - self.quiet_since >= self.after_s:
            self.fired = True
            return True
        return False
