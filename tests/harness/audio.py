"""Audio test helpers (a plain module, not a pytest plugin): real ffmpeg makes test tones, and
captured station PCM (s16le, 48 kHz, stereo) is measured: duration, frequency, level."""

from __future__ import annotations

import subprocess
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path

from hal.audio import CHANNELS, FRAME_BYTES, SAMPLE_RATE, pcm_rms_dbfs


def make_tone(
    path: Path, freq_hz: float, seconds: float, fmt: str = "mp3", *, amplitude: float = 1.0
) -> None:
    """Write a stereo sine tone at 48 kHz with ffmpeg's ``sine`` source.

    That source is 1/8 of full scale and mono, and ffmpeg's mono-to-stereo upmix costs another
    3 dB; the filter undoes both, so ``amplitude=1.0`` is a full-scale sine in each channel.
    """
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency={freq_hz}:duration={seconds}:sample_rate={SAMPLE_RATE}",
            "-af",
            f"volume={8 * amplitude},pan=stereo|c0=c0|c1=c0",
            "-ar",
            str(SAMPLE_RATE),
            # At LAME's default 128 kb/s a full-scale tone comes back 0.45 dB quieter; at
            # 320 kb/s it is within 0.01 dB. Codecs without a bit rate ignore this.
            "-b:a",
            "320k",
            "-f",
            fmt,
            str(path),
        ],
        check=True,
        capture_output=True,
    )


@dataclass(frozen=True)
class ToneReport:
    seconds: float
    freq_hz: float | None  # None when the left channel never crosses zero twice upwards
    dbfs: float | None


def _rising_crossings(samples: array[int]) -> list[float]:
    """Fractional sample positions where the signal goes from negative to non-negative,
    interpolated linearly between the two samples around each crossing."""
    found: list[float] = []
    for i in range(1, len(samples)):
        before, after = samples[i - 1], samples[i]
        if before < 0 <= after:
            found.append(i - 1 + before / (before - after))
    return found


def analyse_pcm(pcm: bytes) -> ToneReport:
    """Duration, frequency (from the left channel's zero crossings; good to well under 1% for a
    clean tone of a few hundred milliseconds) and RMS level of station PCM."""
    frames = len(pcm) // FRAME_BYTES
    samples = array("h", pcm[: frames * FRAME_BYTES])
    if sys.byteorder == "big":
        samples.byteswap()
    crossings = _rising_crossings(samples[::CHANNELS])
    freq = None
    if len(crossings) >= 2:
        freq = (len(crossings) - 1) * SAMPLE_RATE / (crossings[-1] - crossings[0])
    return ToneReport(seconds=frames / SAMPLE_RATE, freq_hz=freq, dbfs=pcm_rms_dbfs(pcm))
