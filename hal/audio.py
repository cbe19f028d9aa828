"""Audio output and decoding: the station's one PCM format, the sinks that play it, the decoder
that produces it, and a level meter.

Owns: the PCM format (s16le, 48 kHz, stereo) used end to end; the ``AudioSink`` port with a
sound-card implementation (PyAudio) and a simulation implementation (one growing WAV file per
station); streaming decoding through an ``ffmpeg`` subprocess; RMS levels in dBFS.

Leaves to others: what to play and when (planner, player), the playback thread, pre-roll and
preemption (player runtime: it may ``Decoder.prime()`` ahead of the instant, pumps
``Decoder.chunks()`` into ``AudioSink.write`` and calls ``Decoder.close()`` to cut a play
short), loudness measurement (``agent.loudness``: the player passes its correction in as part
of the gain), attention chimes (``hal.chimes``), relays (``hal.relays``), fetching and hashing
media (cache).

Every failure of the sound card, PortAudio or ffmpeg leaves this module as ``AudioError``; a
misuse of the API (writing to a sink that is not open) is a plain ``RuntimeError``.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import struct
import subprocess
import sys
import tempfile
import threading
import warnings
from array import array
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

with contextlib.suppress(ImportError), warnings.catch_warnings():
    # audioop is deprecated in 3.11 and gone in 3.13; where it is, its C loop measures a chunk
    # about twenty times faster than the pure-Python one (and without holding the GIL as long).
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SAMPLE_RATE = 48000
CHANNELS = 2
SAMPLE_WIDTH = 2  # bytes: signed 16-bit little-endian
FRAME_BYTES = CHANNELS * SAMPLE_WIDTH

_FULL_SCALE = 32768.0
_STDERR_TAIL = 2000  # characters of ffmpeg/PortAudio diagnostics kept in an error message


class AudioError(RuntimeError):
    """The sound card, PortAudio or the decoder failed: the hardware or the media must be looked
    at, retrying the same call will not help."""


class AudioSink(Protocol):
    """Where PCM goes. ``write`` blocks as long as the device needs to accept the data, so a real
    sound card paces the writer."""

    def open(self) -> None: ...

    def write(self, pcm: bytes) -> None: ...

    def close(self) -> None: ...


def _check_frames(pcm: bytes) -> None:
    # A partial frame would shift every later sample into the wrong channel.
    if len(pcm) % FRAME_BYTES:
        raise ValueError(f"PCM must be whole {FRAME_BYTES}-byte frames, got {len(pcm)} bytes")


# --- Sound card -----------------------------------------------------------------------------

# PortAudio probes every ALSA and JACK back end when it initialises and the libraries print a
# line for each one that is absent; these are those lines, anything else is passed through.
_PROBE_NOISE = (
    "ALSA lib ",
    "JackShmReadWritePtr",
    "jack server is not running",
    "Cannot connect to server",
    "Expression '",
)


@contextlib.contextmanager
def _captured_stderr() -> Iterator[IO[bytes]]:
    """Point file descriptor 2 at a temporary file for the duration, so C libraries' chatter
    can be filtered; the file is yielded for reading afterwards."""
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all (a daemon started with fd 2 closed): nothing to hide
            yield capture
            return
        try:
            os.dup2(capture.fileno(), 2)
            yield capture
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _read_capture(capture: IO[bytes]) -> str:
    capture.seek(0)
    return capture.read().decode("utf-8", "replace")


def _pass_through_foreign_lines(text: str) -> None:
    # Another thread may have logged while fd 2 was redirected: give its lines back.
    kept = [
        line
        for line in text.splitlines(keepends=True)
        if line.strip() and not line.startswith(_PROBE_NOISE)
    ]
    if kept:
        with contextlib.suppress(OSError):
            os.write(2, "".join(kept).encode())


class PyAudioSink:
    """The sound card, through PortAudio. PyAudio is imported and initialised in ``open()``
    only, so commands that never play do not pay for (or print) PortAudio's start-up."""

    def __init__(self, device: str = "default") -> None:
        self.device = device
        self._pa: Any = None
        self._stream: Any = None

    def open(self) -> None:
        if self._stream is not None:
            raise RuntimeError("PyAudioSink is already open")
        try:
            import pyaudio
        except ImportError as exc:
            raise AudioError("PyAudio (PortAudio) is not installed") from exc
        # PortAudio is started once and kept between plays: starting it probes every ALSA
        # device (tens of milliseconds), which an emergency cutting in must not wait for.
        pa = self._pa if self._pa is not None else self._start_portaudio(pyaudio)
        try:
            index = self._device_index(pa)
            self._stream = pa.open(
                format=pyaudio.paInt16,
                channels=CHANNELS,
                rate=SAMPLE_RATE,
                output=True,
                output_device_index=index,
            )
        except (OSError, ValueError) as exc:
            self.release()
            raise AudioError(f"cannot open audio device {self.device!r}: {exc}") from exc
        except BaseException:
            self.release()
            raise

    def probe(self) -> None:
        """Raise ``AudioError`` unless the card can be found now, without opening a stream
        (an opening is a play to ALSA's file plugin, a click on some cards). PortAudio is
        started afresh: the device list it took when it started says nothing of a card pulled
        out, or plugged in, since. A sink that is open is in use, so its card is there."""
        if self._stream is not None:
            return
        try:
            import pyaudio
        except ImportError as exc:
            raise AudioError("PyAudio (PortAudio) is not installed") from exc
        self.release()
        pa = self._start_portaudio(pyaudio)
        try:
            if self.device == "default":
                pa.get_default_output_device_info()  # OSError when there is none
            else:
                self._device_index(pa)
        except OSError as exc:
            self.release()
            raise AudioError(f"no audio device {self.device!r}: {exc}") from exc
        except AudioError:
            self.release()
            raise

    def _start_portaudio(self, pyaudio: Any) -> Any:
        with _captured_stderr() as capture:
            try:
                pa = pyaudio.PyAudio()
            except (OSError, RuntimeError) as exc:
                noise = _read_capture(capture)
                raise AudioError(f"PortAudio failed to start: {noise[-_STDERR_TAIL:]}") from exc
            noise = _read_capture(capture)
        _pass_through_foreign_lines(noise)
        self._pa = pa
        return pa

    def _device_index(self, pa: Any) -> int | None:
        if self.device == "default":
            return None  # PortAudio's host default
        outputs: list[tuple[int, str]] = []
        for index in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(index)
            if int(info.get("maxOutputChannels", 0)) > 0:
                outputs.append((index, str(info.get("name", ""))))
        for index, name in outputs:
            if name == self.device:
                return index
        for index, name in outputs:
            if self.device in name:
                return index
        names = ", ".join(repr(name) for _, name in outputs) or "none"
        raise AudioError(f"no audio output device named {self.device!r}; outputs: {names}")

    def write(self, pcm: bytes) -> None:
        if self._stream is None:
            raise RuntimeError("PyAudioSink is not open")
        _check_frames(pcm)
        try:
            self._stream.write(pcm)
        except OSError as exc:
            # The device is gone (a USB card pulled, the sound server dead): PortAudio's
            # stream cannot be stopped any more ("Stream not open"), and that second error
            # would hide this one from the as-run. Drop the stream and PortAudio quietly
            # here; the next open() starts PortAudio afresh, which finds the card again.
            self._discard()
            raise AudioError(f"audio device {self.device!r} failed: {exc}") from exc

    def _discard(self) -> None:
        stream, self._stream = self._stream, None
        with contextlib.suppress(OSError):
            stream.close()
        with contextlib.suppress(OSError):
            self.release()

    def close(self) -> None:
        """End the play's stream; PortAudio stays up for the next play (``release`` ends it)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.stop_stream()
            stream.close()
        except OSError as exc:
            self.release()  # a card that failed: start PortAudio afresh next time
            raise AudioError(f"audio device {self.device!r} failed to stop: {exc}") from exc

    def release(self) -> None:
        """Stop PortAudio (at shutdown, or after a failure); idempotent."""
        pa, self._pa = self._pa, None
        if pa is not None:
            pa.terminate()


# --- Simulation sink ------------------------------------------------------------------------

_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
_HEADER_BYTES = _HEADER.size  # 44
_MAX_DATA = 0xFFFFFFFF - (_HEADER_BYTES - 8)  # RIFF sizes are 32-bit: about 6.2 h at 192 kB/s
_PATCH_EVERY = SAMPLE_RATE * FRAME_BYTES  # header refreshed after each second of audio


def _wav_header(data_bytes: int) -> bytes:
    return _HEADER.pack(
        b"RIFF",
        _HEADER_BYTES - 8 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        CHANNELS,
        SAMPLE_RATE,
        SAMPLE_RATE * FRAME_BYTES,
        FRAME_BYTES,
        SAMPLE_WIDTH * 8,
        b"data",
        data_bytes,
    )


def _is_our_header(header: bytes) -> bool:
    # Everything but the two size fields must match, or appending would mix formats.
    expected = _wav_header(0)
    return (
        len(header) == _HEADER_BYTES
        and header[:4] == expected[:4]
        and header[8:40] == expected[8:40]
    )


class WavFileSink:
    """What the speaker would have played, for simulation: every play is appended to one WAV
    file, across open/close cycles. The header's sizes are patched after every second of audio
    and at ``close()``, so the file is a valid WAV whenever someone looks at it (between two
    patches the header undercounts by less than a second; readers then ignore the tail).

    Not paced: ``write`` returns as soon as the bytes are in the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None
        self._data_bytes = 0
        self._unpatched = 0

    def open(self) -> None:
        if self._file is not None:
            raise RuntimeError("WavFileSink is already open")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            file = open(self.path, "r+b" if self.path.exists() else "w+b")  # noqa: SIM115
        except OSError as exc:
            raise AudioError(f"cannot open {self.path}: {exc}") from exc
        try:
            self._data_bytes = self._adopt(file)
            file.seek(_HEADER_BYTES + self._data_bytes)
        except BaseException:
            file.close()
            raise
        self._file = file
        self._unpatched = 0

    def _adopt(self, file: IO[bytes]) -> int:
        """Return how much PCM the file already holds, writing a fresh header if it is empty."""
        size = file.seek(0, os.SEEK_END)
        if size < _HEADER_BYTES:  # new, or cut short while its header was being written
            file.seek(0)
            file.truncate()
            file.write(_wav_header(0))
            return 0
        file.seek(0)
        if not _is_our_header(file.read(_HEADER_BYTES)):
            raise AudioError(f"{self.path} is not a {SAMPLE_RATE} Hz s16le stereo WAV file")
        # Trust the file's length over the header: a crash may have come before the last patch.
        # A trailing partial frame is dropped so the channels stay aligned.
        data = (size - _HEADER_BYTES) // FRAME_BYTES * FRAME_BYTES
        file.truncate(_HEADER_BYTES + data)
        return data

    def write(self, pcm: bytes) -> None:
        if self._file is None:
            raise RuntimeError("WavFileSink is not open")
        _check_frames(pcm)
        if self._data_bytes + len(pcm) > _MAX_DATA:
            raise AudioError(f"{self.path} is full (a WAV file holds at most 4 GiB)")
        try:
            self._file.write(pcm)
            self._data_bytes += len(pcm)
            self._unpatched += len(pcm)
            if self._unpatched >= _PATCH_EVERY:
                self._patch(self._file)
        except OSError as exc:
            raise AudioError(f"cannot write {self.path}: {exc}") from exc

    def _patch(self, file: IO[bytes]) -> None:
        header = _wav_header(self._data_bytes)
        file.seek(4)
        file.write(header[4:8])
        file.seek(40)
        file.write(header[40:44])
        file.seek(0, os.SEEK_END)
        file.flush()  # so a reader in another process sees a consistent file
        self._unpatched = 0

    def close(self) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        try:
            self._patch(file)
        except OSError as exc:
            raise AudioError(f"cannot finish {self.path}: {exc}") from exc
        finally:
            file.close()


def open_sink(kind: str, device: str, wav_path: Path) -> AudioSink:
    """The sink named by configuration: ``"device"`` for the sound card, ``"wav"`` for the
    simulation file."""
    if kind == "device":
        return PyAudioSink(device)
    if kind == "wav":
        return WavFileSink(wav_path)
    raise ValueError(f"unknown audio sink kind {kind!r} (expected 'device' or 'wav')")


# --- Decoding -------------------------------------------------------------------------------


class Decoder:
    """Streams one media file as station PCM through an ``ffmpeg`` subprocess, ``chunk_frames``
    frames at a time, with ``gain`` (linear) applied by ffmpeg. Never holds the whole file.

    ``start_s`` skips that many seconds of the medium (to resume or join a play late); a start
    at or past the end gives no audio and no error.

    Pre-roll: ``prime()`` starts ffmpeg and reads the first chunk ahead, so that ``chunks()``
    hands it over at once when the instant comes; ``started`` is set as soon as a first chunk is
    in hand, by ``prime()`` or by ``chunks()``. Priming is optional: iterating ``chunks()`` alone
    does the same work on its first step, exactly as before.

    ``prime()`` and ``chunks()`` belong to one thread (the playback thread). ``close()`` kills
    and reaps ffmpeg; it is idempotent and may be called from another thread to cut a play short
    (or to abandon a pre-roll), in which case ``chunks()`` simply ends and ``prime()`` returns.
    A decoding failure (ffmpeg exits non-zero: missing or corrupt file) raises ``AudioError``
    carrying ffmpeg's message, from ``prime()`` when it happens there and again from
    ``chunks()``, so a caller that ignores one still meets it at the other.
    """

    def __init__(
        self,
        path: Path,
        gain: float,
        *,
        start_s: float = 0.0,
        ffmpeg: str = "ffmpeg",
        chunk_frames: int = 4800,
    ) -> None:
        if not (math.isfinite(gain) and gain >= 0):
            raise ValueError(f"gain must be a finite number >= 0, got {gain!r}")
        if not (math.isfinite(start_s) and start_s >= 0):
            raise ValueError(f"start_s must be a finite number >= 0, got {start_s!r}")
        if chunk_frames <= 0:
            raise ValueError(f"chunk_frames must be positive, got {chunk_frames!r}")
        self.path = path
        self.gain = gain
        self.start_s = start_s
        self.ffmpeg = ffmpeg
        self.chunk_frames = chunk_frames
        self.started = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._stream_gen: Iterator[bytes] | None = None  # created by prime() or chunks()
        self._primed: bytes | None = None  # the first chunk, read ahead by prime()
        self._prime_error: AudioError | None = None
        self._iterated = False
        self._closed = False
        # close() may race between the player's thread and the playback thread's own finally.
        self._close_lock = threading.Lock()

    def command(self) -> list[str]:
        # The seek is an input option (-ss before -i): ffmpeg seeks in the container, then
        # decodes and drops samples up to the exact instant (accurate_seek, on by default when
        # transcoding since ffmpeg 2.1). Measured on a generated 60-minute MP3 (ffmpeg 5.1,
        # 2-core Xeon), a start at 59:29 cost 0.11 s this way and 1.9 s as an output option
        # (-ss after -i decodes and throws away everything before), and both put the first
        # sample on the same sample, as they did for VBR MP3, AAC (MP4 and ADTS), Vorbis, Opus
        # and WAV. A Pi is several times slower (not measured here), so the output seek would
        # cost tens of seconds late in a long file. The MP3 demuxer's Xing table of contents
        # (-usetoc 1) is what made input seeks coarse in the past; it is off by default and
        # must stay off: with it a start at 30:29 landed 12 ms late and one at 59:29 missed its
        # mark by seconds.
        seek = ["-ss", f"{self.start_s:.6f}"] if self.start_s > 0 else []
        return [
            self.ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
            *seek, "-i", str(self.path), "-af", f"volume={self.gain:.6f}",
            "-f", "s16le", "-ac", str(CHANNELS), "-ar", str(SAMPLE_RATE), "-",
        ]  # fmt: skip

    def prime(self) -> bool:
        """Start ffmpeg and read the first chunk ahead; blocks until it is in hand (or the
        stream ended, or ``close()`` was called). True when audio is ready to be written, False
        when there is none (an empty medium, a start past its end, a closed decoder).

        Idempotent; must come before ``chunks()``. Raises ``AudioError`` when ffmpeg cannot run
        or fails before producing audio.
        """
        if self._iterated:
            raise RuntimeError("Decoder.prime() must come before chunks()")
        if self._stream_gen is None:
            self._stream_gen = self._stream()
            try:
                self._primed = next(self._stream_gen, None)
            except AudioError as exc:
                self._prime_error = exc
        if self._prime_error is not None:
            raise self._prime_error
        return self._primed is not None

    def chunks(self) -> Iterator[bytes]:
        """PCM in chunks of ``chunk_frames`` frames (the last one may be shorter)."""
        if self._iterated:
            raise RuntimeError("Decoder.chunks() can be iterated only once")
        self._iterated = True
        if self._stream_gen is None:
            self._stream_gen = self._stream()
        return self._replay(self._stream_gen)

    def _replay(self, stream: Iterator[bytes]) -> Iterator[bytes]:
        try:
            if self._prime_error is not None:
                raise self._prime_error
            primed, self._primed = self._primed, None
            if primed is not None and not self._closed:  # a close() after prime() plays nothing
                yield primed
            yield from stream
        finally:
            # Also when the consumer abandons this generator before reaching ``stream``.
            self.close()

    def _start(self) -> subprocess.Popen[bytes]:
        # stderr goes to a file, not a pipe: a file cannot fill up and stall ffmpeg while we
        # are only reading stdout, and needs no second reader thread.
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 (owned by the Decoder until close)
        try:
            proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        except OSError as exc:
            stderr.close()
            raise AudioError(f"cannot run {self.ffmpeg!r}: {exc}") from exc
        with self._close_lock:
            self._proc, self._stderr = proc, stderr
        return proc

    def _stream(self) -> Iterator[bytes]:
        try:
            if self._closed:
                return
            proc = self._start()
            if self._closed:  # close() raced with the start; the finally reaps what started
                return
            assert proc.stdout is not None
            size = self.chunk_frames * FRAME_BYTES
            while True:
                try:
                    chunk = proc.stdout.read(size)
                except (OSError, ValueError) as exc:  # ValueError: close() shut the pipe
                    if self._closed:
                        return
                    raise AudioError(f"reading from ffmpeg failed: {exc}") from exc
                if not chunk:
                    break
                self.started.set()
                yield chunk
            returncode = proc.wait()
            if returncode != 0 and not self._closed:
                raise AudioError(
                    f"ffmpeg could not decode {self.path} (exit {returncode}): {self._tail()}"
                )
        finally:
            # Also runs when the consumer abandons the generator: ffmpeg must not outlive it.
            self.close()

    def _tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace").strip()
        return text[-_STDERR_TAIL:] or "(no message)"

    def close(self) -> None:
        self._closed = True
        self._primed = None
        with self._close_lock:
            proc, self._proc = self._proc, None
            stderr, self._stderr = self._stderr, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            proc.wait()  # reap: no zombie left behind
            if proc.stdout is not None:
                proc.stdout.close()
        if stderr is not None:
            stderr.close()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- Levels ---------------------------------------------------------------------------------


def _samples(pcm: bytes) -> array[int]:
    if len(pcm) % SAMPLE_WIDTH:
        raise ValueError(f"s16le PCM must have an even length, got {len(pcm)} bytes")
    samples = array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def _sum_of_squares(samples: array[int]) -> int:
    # map(mul) keeps the loop in C: 0.3 ms per 100 ms chunk on a desktop.
    return sum(map(operator.mul, samples, samples))


# Below this RMS (about -54 dBFS) audioop's integer result is too coarse for a level in dB.
_COARSE_RMS = 64


def _chunk_sum_of_squares(pcm: bytes) -> tuple[int, int]:
    """(sum of squares, sample count) of s16le PCM; audioop's C loop where it exists and the
    chunk is loud enough for its integer RMS, the exact pure-Python sum otherwise."""
    if len(pcm) % SAMPLE_WIDTH:
        raise ValueError(f"s16le PCM must have an even length, got {len(pcm)} bytes")
    count = len(pcm) // SAMPLE_WIDTH
    if "audioop" in globals() and sys.byteorder == "little" and count:
        rms = audioop.rms(pcm, SAMPLE_WIDTH)
        if rms >= _COARSE_RMS:
            return rms * rms * count, count
    return _sum_of_squares(_samples(pcm)), count


def _dbfs(sum_of_squares: int, count: int) -> float | None:
    if count == 0 or sum_of_squares == 0:
        return None
    rms = math.sqrt(sum_of_squares / count)
    return 20.0 * math.log10(rms / _FULL_SCALE)


def pcm_rms_dbfs(pcm: bytes) -> float | None:
    """RMS level of s16le PCM (all channels together) in dBFS: a full-scale square wave is
    0 dBFS, a full-scale sine -3 dBFS. ``None`` for empty input or digital silence."""
    return _dbfs(*_chunk_sum_of_squares(pcm))


class LevelMeter:
    """RMS level over everything added so far, without keeping the audio."""

    def __init__(self) -> None:
        self._sum_of_squares = 0
        self._count = 0

    def add(self, pcm: bytes) -> None:
        squares, count = _chunk_sum_of_squares(pcm)
        self._sum_of_squares += squares
        self._count += count

    def dbfs(self) -> float | None:
        return _dbfs(self._sum_of_squares, self._count)
