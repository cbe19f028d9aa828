"""Attention chimes, generated in memory: the ding-dong before an announcement and its mirror
after it, as station PCM (s16le, 48 kHz, stereo). No audio file is shipped or cached.

Owns: the chimes' sound (tones, lengths, fades, level), generating them with pydub once per
kind, and ``PcmClip``, a PCM source over bytes in memory that the player can stream exactly as
it streams a ``Decoder`` (``chunks()``, ``close()``, a context manager).

Leaves to others: whether and when a chime sounds (the player, from the media's category and
the station's configuration), relays and the sink (the player writes the chunks).

pydub is imported inside ``chime_pcm``: it imports ``audioop`` (deprecated in Python 3.11) and
is not needed by commands that never play.
"""

from __future__ import annotations

import functools
import math
import sys
import threading
from array import array
from collections.abc import Iterator
from types import TracebackType

from hal.audio import CHANNELS, FRAME_BYTES, SAMPLE_RATE, SAMPLE_WIDTH

__all__ = ["CHIME_KINDS", "CHIME_PEAK_DBFS", "CHIME_TONES", "PcmClip", "chime_pcm"]

# Peak level of each tone (pydub's "volume": dB below full scale of the sine's peak, the AES17
# sense of dBFS). By hal.audio's RMS meter, where a full-scale sine reads -3 dBFS, a tone reads
# -15 dBFS; ffmpeg's ebur128 reads either chime as -13.1 LUFS, -12.0 dBTP: a few LU above
# speech normalised to -16 LUFS: a chime is there to make people look up.
CHIME_PEAK_DBFS = -12.0

# (frequency in Hz, length in ms, fade-out in ms) for each tone, in order. The classic ding-dong
# falls (660 Hz, then 550 Hz) to open an announcement; the closing chime rises on the same
# rhythm, short then long, so it ends on a full note rather than a clipped one.
CHIME_TONES: dict[str, tuple[tuple[float, int, int], ...]] = {
    "before": ((660.0, 300, 40), (550.0, 500, 150)),
    "after": ((550.0, 300, 40), (660.0, 500, 150)),
}
CHIME_KINDS = tuple(CHIME_TONES)

# A tone that starts or stops at a non-zero sample clicks; 10 ms is below what the ear hears as
# an attack and long enough to remove the click. The fade-outs are longer so a tone decays a
# little like a struck bar.
_FADE_IN_MS = 10


def chime_pcm(kind: str = "before") -> bytes:
    """The chime ``kind`` ("before" or "after") as station PCM: 0.8 s, about 150 kB, generated
    on the first call for each kind and kept for the life of the process."""
    if kind not in CHIME_TONES:
        raise ValueError(f"unknown chime {kind!r} (expected one of {', '.join(CHIME_KINDS)})")
    # The cache sits behind the default argument: functools.cache would otherwise keep
    # chime_pcm() and chime_pcm("before") as two entries, generated twice.
    return _generate(kind)


@functools.cache
def _generate(kind: str) -> bytes:
    tones = CHIME_TONES[kind]
    from pydub import AudioSegment
    from pydub.generators import Sine

    chime = AudioSegment.empty()
    for freq, length_ms, fade_out_ms in tones:
        tone = Sine(freq, sample_rate=SAMPLE_RATE, bit_depth=SAMPLE_WIDTH * 8).to_audio_segment(
            duration=length_ms, volume=CHIME_PEAK_DBFS
        )
        chime += tone.fade_in(_FADE_IN_MS).fade_out(fade_out_ms)
    pcm = bytes(chime.set_channels(CHANNELS).raw_data)
    if sys.byteorder == "big":  # pydub's samples are native; the station's are little-endian
        samples = array("h", pcm)
        samples.byteswap()
        pcm = samples.tobytes()
    return pcm


def _scale(pcm: bytes, gain: float) -> bytes:
    samples = array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    # Clamped, not wrapped: a gain above 1 must saturate like ffmpeg's volume filter does.
    scaled = array("h", (max(-32768, min(32767, round(s * gain))) for s in samples))
    if sys.byteorder == "big":
        scaled.byteswap()
    return scaled.tobytes()


class PcmClip:
    """Station PCM held in memory, streamed ``chunk_frames`` frames at a time with a linear
    ``gain`` (the slot's volume), so the player treats a chime like any decoded item: it checks
    for a cut between chunks and meters what it writes.

    ``close()`` (from any thread) ends ``chunks()`` before its next chunk; it is idempotent.
    """

    def __init__(self, pcm: bytes, gain: float = 1.0, *, chunk_frames: int = 4800) -> None:
        if len(pcm) % FRAME_BYTES:
            raise ValueError(f"PCM must be whole {FRAME_BYTES}-byte frames, got {len(pcm)} bytes")
        if not (math.isfinite(gain) and gain >= 0):
            raise ValueError(f"gain must be a finite number >= 0, got {gain!r}")
        if chunk_frames <= 0:
            raise ValueError(f"chunk_frames must be positive, got {chunk_frames!r}")
        self.pcm = pcm
        self.gain = gain
        self.chunk_frames = chunk_frames
        self._closed = threading.Event()
        self._iterated = False

    @property
    def seconds(self) -> float:
        return len(self.pcm) / FRAME_BYTES / SAMPLE_RATE

    def chunks(self) -> Iterator[bytes]:
        """The PCM in chunks of ``chunk_frames`` frames (the last one may be shorter)."""
        if self._iterated:
            raise RuntimeError("PcmClip.chunks() can be iterated only once")
        self._iterated = True
        return self._stream()

    def _stream(self) -> Iterator[bytes]:
        size = self.chunk_frames * FRAME_BYTES
        for start in range(0, len(self.pcm), size):
            if self._closed.is_set():
                return
            chunk = self.pcm[start : start + size]
            # Scaled per chunk: a cut clip costs nothing for the part it never played.
            yield chunk if self.gain == 1.0 else _scale(chunk, self.gain)

    def close(self) -> None:
        self._closed.set()

    def __enter__(self) -> PcmClip:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
