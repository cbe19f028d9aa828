"""A live stream as station PCM: ffmpeg reads an HTTP(S) stream (MP3, AAC, Ogg), one pump thread
per connection keeps a short buffer of its newest audio and watches it, and the player plays a
view of that buffer.

Owns: the ffmpeg command for a live input (ffmpeg's own reconnect options off: when and how
often to reconnect is the station's decision, with its hold time and backoff; a read timeout
so a half-open TCP connection ends; certificate checks for https), the pump thread (``select``
with a short timeout, so it never sits blocked on a dead source), the watchdog that turns what
the pump sees into signals (``flowing``, ``stalled``, ``silent``, ``ended``: ``StreamWatch``,
pure), and ``LiveView``, the ``PcmSource`` a player plays: PCM from the buffer, 20 ms of
silence whenever there is none, so a dead stream never blocks the playback thread and a cut
lands within one chunk.

Leaves to others: whether and when to connect, fall back, retry (``agent.core.live``), which
hosts may be relayed (``agent.live``), relays and the sink (the player).

The connection outlives a play: the station keeps listening while the schedule is on air
(to know when the stream is back) and a view is opened for each stretch on air. At most
``buffer_s`` of audio is kept (the oldest dropped), and a view starts from the newest
``prebuffer_s``, so a stream that waited behind an emergency comes back live, not late.

Threads: ``connect``, ``disconnect``, ``close`` and ``source`` belong to the station's thread;
the pump thread calls ``on_signal`` (which must only enqueue); a view's ``chunks`` runs on the
playback thread.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import subprocess
import tempfile
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import IO

from hal.audio import CHANNELS, FRAME_BYTES, SAMPLE_RATE, pcm_rms_dbfs

POLL_S = 0.1  # the pump looks at the clock at least this often, data or not
READ_BYTES = 65536
_STDERR_TAIL = 300
# ffmpeg's demuxer for each `stream.format` of the command schema: naming it skips probing.
DEMUXERS = {"mp3": "mp3", "aac": "aac", "ogg": "ogg", "opus": "ogg"}


@dataclass(frozen=True, slots=True)
class LiveSignal:
    """What connection ``generation`` is doing since ``since`` (monotonic): ``flowing``
    (audible audio arriving), ``stalled`` (nothing arriving), ``silent`` (arriving, below the
    threshold) or ``ended`` (the connection is over; ``detail`` says why)."""

    generation: int
    kind: str
    since: float
    detail: str | None = None


class StreamWatch:
    """The watchdog's rule, pure: fed each chunk's arrival (and whether it was audible) and
    asked at any moment what the stream is doing. ``None`` while it cannot tell yet (connected
    less than ``stall_after_s`` ago, or audio arriving for less than ``silent_after_s``
    without a sound)."""

    def __init__(self, stall_after_s: float, silent_after_s: float, started: float) -> None:
        self.stall_after_s = stall_after_s
        self.silent_after_s = silent_after_s
        self.started = started
        self.first_data: float | None = None
        self.last_data: float | None = None
        self.last_loud: float | None = None
        self.loud_since: float | None = None

    def data(self, now: float, loud: bool) -> None:
        if self.first_data is None:
            self.first_data = now
        self.last_data = now
        if loud:
            if self.loud_since is None:
                self.loud_since = now
            self.last_loud = now

    def judge(self, now: float) -> tuple[str, float] | None:
        last = self.last_data if self.last_data is not None else self.started
        if now - last >= self.stall_after_s:
            self.loud_since = None  # flowing again will count from the next sound
            return "stalled", last
        if self.first_data is None:
            return None
        quiet_since = self.last_loud if self.last_loud is not None else self.first_data
        if now - quiet_since >= self.silent_after_s:
            self.loud_since = None
            return "silent", quiet_since
        if self.loud_since is None:
            return None
        return "flowing", self.loud_since


def scale_pcm(pcm: bytes, ratio: float) -> bytes:
    """s16le PCM times ``ratio``, clipped. Pure Python (about 0.2 ms per 20 ms chunk on a
    desktop): only used while the volume asked differs from the one ffmpeg applies."""
    if ratio <= 0:
        return bytes(len(pcm))
    samples = array("h", pcm)
    scaled = array("h", [max(-32768, min(32767, int(s * ratio))) for s in samples])
    return scaled.tobytes()


class LiveReceiver:
    """One live stream, connected and disconnected on the station's word (see module doc)."""

    def __init__(
        self,
        url: str,
        on_signal: Callable[[LiveSignal], None],
        *,
        fmt: str | None = None,
        silence_dbfs: float = -50.0,
        stall_after_s: float = 1.0,
        silent_after_s: float = 3.0,
        rw_timeout_s: float = 10.0,
        buffer_s: float = 2.0,
        prebuffer_s: float = 0.3,
        chunk_frames: int = 960,
        ca_file: str | None = None,
        ffmpeg: str = "ffmpeg",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if fmt is not None and fmt not in DEMUXERS:
            raise ValueError(f"unknown live stream format {fmt!r}")
        self.url = url
        self.fmt = fmt
        self.silence_dbfs = silence_dbfs
        self.stall_after_s = stall_after_s
        self.silent_after_s = silent_after_s
        self.rw_timeout_s = rw_timeout_s
        self.chunk_frames = chunk_frames
        self.chunk_s = chunk_frames / SAMPLE_RATE
        self.prebuffer_chunks = max(1, round(prebuffer_s / self.chunk_s))
        self.ca_file = ca_file
        self.ffmpeg = ffmpeg
        self._on_signal = on_signal
        self._monotonic = monotonic
        self._cond = threading.Condition()
        self._buffer: deque[bytes] = deque(maxlen=max(2, round(buffer_s / self.chunk_s)))
        self._generation = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop: threading.Event | None = None
        self._gain = 1.0  # what the station asks for now
        self._ffmpeg_gain = 1.0  # what the current connection's ffmpeg applies
        self.closed = False

    # the station's side ----------------------------------------------------------------------

    @property
    def gain(self) -> float:
        return self._gain

    @gain.setter
    def gain(self, value: float) -> None:
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"gain must be a finite number >= 0, got {value!r}")
        self._gain = value

    def command(self) -> list[str]:
        https = self.url.lower().startswith("https:")
        tls = ["-tls_verify", "1", *(["-ca_file", self.ca_file] if self.ca_file else [])]
        return [
            self.ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
            # Reconnecting is the station's decision (hold time, backoff, no flapping): ffmpeg
            # must give up and exit, not retry on its own behind the station's back.
            "-reconnect", "0", "-reconnect_streamed", "0", "-reconnect_at_eof", "0",
            "-rw_timeout", str(int(self.rw_timeout_s * 1_000_000)),
            "-user_agent", "loa-agent",
            *(tls if https else []),
            *(["-f", DEMUXERS[self.fmt]] if self.fmt else []),
            # Small probes: live audio must start in a fraction of a second, not after the
            # default 5 MB / several seconds of analysis.
            "-probesize", "4096", "-analyzeduration", "0",
            "-i", self.url, "-vn", "-af", f"volume={self._ffmpeg_gain:.6f}",
            "-f", "s16le", "-ac", str(CHANNELS), "-ar", str(SAMPLE_RATE), "-",
        ]  # fmt: skip

    def connect(self) -> int:
        """Open a new connection (closing any other); returns its generation, which every
        signal of it carries, so late signals of an older one can be told apart."""
        self.disconnect()
        with self._cond:
            self._generation += 1
            generation = self._generation
            self._buffer.clear()  # audio of an older connection never plays
            # ffmpeg applies the volume for free; a volume that is (almost) off would leave
            # nothing to judge silence by, so then ffmpeg plays at unity and the view scales.
            self._ffmpeg_gain = self._gain if self._gain >= 0.01 else 1.0
        stop = threading.Event()
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 (the pump thread closes it)
        try:
            proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                bufsize=0,
            )
        except OSError as exc:
            stderr.close()
            why = f"cannot run ffmpeg: {exc}"
            self._emit(LiveSignal(generation, "ended", self._monotonic(), why))
            return generation
        self._proc, self._stop = proc, stop
        threading.Thread(
            target=self._pump,
            args=(generation, proc, stderr, stop),
            name=f"live {generation}",
            daemon=True,
        ).start()
        return generation

    def disconnect(self) -> None:
        """Close the connection, if any; it reports nothing more."""
        proc, stop = self._proc, self._stop
        self._proc = self._stop = None
        if stop is not None:
            stop.set()
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # the pump thread reaps it

    def close(self) -> None:
        self.disconnect()
        with self._cond:
            self.closed = True
            self._buffer.clear()
            self._cond.notify_all()

    def source(self, gain: float) -> LiveView:
        """A view for one play at ``gain``; closing it leaves the connection open."""
        self.gain = gain
        return LiveView(self)

    # the pump thread -------------------------------------------------------------------------

    def _pump(
        self,
        generation: int,
        proc: subprocess.Popen[bytes],
        stderr: IO[bytes],
        stop: threading.Event,
    ) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        chunk_bytes = self.chunk_frames * FRAME_BYTES
        pending = bytearray()
        watch = StreamWatch(self.stall_after_s, self.silent_after_s, self._monotonic())
        reported: str | None = None
        try:
            while not stop.is_set():
                try:
                    ready, _, _ = select.select([fd], [], [], POLL_S)
                    data = os.read(fd, READ_BYTES) if ready else None
                except (OSError, ValueError):
                    break  # the pipe went away under a disconnect
                now = self._monotonic()
                if data == b"":
                    break  # ffmpeg ended: the stream closed, failed or timed out
                if data:
                    pending += data
                    while len(pending) >= chunk_bytes:
                        chunk = bytes(pending[:chunk_bytes])
                        del pending[:chunk_bytes]
                        watch.data(now, self._audible(chunk))
                        self._push(generation, chunk)
                verdict = watch.judge(now)
                if verdict is not None and verdict[0] != reported:
                    reported = verdict[0]
                    self._emit(LiveSignal(generation, verdict[0], verdict[1]))
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code = proc.wait()
            proc.stdout.close()
            if not stop.is_set():
                self._emit(LiveSignal(generation, "ended", self._monotonic(), _ended(code, stderr)))
            stderr.close()

    def _audible(self, chunk: bytes) -> bool:
        level = pcm_rms_dbfs(chunk)
        if level is None:
            return False
        # The threshold is for the stream itself, before the station's volume.
        return level - 20 * math.log10(self._ffmpeg_gain) > self.silence_dbfs

    def _push(self, generation: int, chunk: bytes) -> None:
        with self._cond:
            if generation != self._generation or self.closed:
                return
            self._buffer.append(chunk)  # a full buffer drops its oldest chunk
            self._cond.notify_all()

    def _emit(self, signal: LiveSignal) -> None:
        self._on_signal(signal)

    # the view's side -------------------------------------------------------------------------

    def _trim(self) -> None:
        with self._cond:
            while len(self._buffer) > self.prebuffer_chunks:
                self._buffer.popleft()

    def _take(self, need: int, timeout: float, view: LiveView) -> bytes | None:
        with self._cond:
            self._cond.wait_for(
                lambda: len(self._buffer) >= need or self.closed or view.closed, timeout
            )
            if len(self._buffer) < need or self.closed or view.closed:
                return None
            chunk = self._buffer.popleft()
            ratio = self._gain / self._ffmpeg_gain
        return chunk if abs(ratio - 1.0) < 0.001 else scale_pcm(chunk, ratio)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


def _ended(code: int, stderr: IO[bytes]) -> str:
    stderr.seek(0)
    text = stderr.read().decode("utf-8", "replace").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if lines:
        return lines[-1][-_STDERR_TAIL:]
    return "the stream ended" if code == 0 else f"ffmpeg exited with status {code}"


class LiveView:
    """One play of a live stream: the receiver's newest audio, silence while there is none.

    Starts with up to ``prebuffer_s`` of the newest audio (or waits for that much, in
    silence), and after running dry waits for it again before playing on: a stream that
    trickles in does not turn into a stutter of 20 ms pieces. Yields at least every chunk's
    duration, so the player checks its cut and deadline that often whatever the stream does.
    """

    def __init__(self, receiver: LiveReceiver) -> None:
        self._receiver = receiver
        self.closed = False

    def chunks(self) -> Iterator[bytes]:
        receiver = self._receiver
        receiver._trim()
        silence = bytes(receiver.chunk_frames * FRAME_BYTES)
        buffering = True
        while not (self.closed or receiver.closed):
            need = receiver.prebuffer_chunks if buffering else 1
            chunk = receiver._take(need, receiver.chunk_s, self)
            if chunk is None:
                buffering = True
                if not (self.closed or receiver.closed):
                    yield silence
                continue
            buffering = False
            yield chunk

    def close(self) -> None:
        self.closed = True
        self._receiver._wake()

    def __enter__(self) -> LiveView:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
