"""Levels of synthetic PCM, and the simulation sink's WAV file (no ffmpeg, no PortAudio)."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from hal.audio import (
    CHANNELS,
    FRAME_BYTES,
    SAMPLE_RATE,
    SAMPLE_WIDTH,
    LevelMeter,
    PyAudioSink,
    WavFileSink,
    open_sink,
    pcm_rms_dbfs,
)


def stereo(samples: list[int]) -> bytes:
    return b"".join(struct.pack("<hh", s, s) for s in samples)


def square(frames: int, amplitude: int = 32767, period: int = 48) -> bytes:
    return stereo([amplitude if (i // (period // 2)) % 2 else -amplitude for i in range(frames)])


def sine(frames: int, amplitude: float, freq_hz: float = 1000.0) -> bytes:
    return stereo(
        [round(amplitude * 32767 * math.sin(2 * math.pi * freq_hz * i / SAMPLE_RATE))
         for i in range(frames)]
    )  # fmt: skip


def test_full_scale_square_is_zero_dbfs() -> None:
    level = pcm_rms_dbfs(square(4800))
    assert level == pytest.approx(0.0, abs=0.01)


def test_half_amplitude_sine_is_minus_nine_dbfs() -> None:
    level = pcm_rms_dbfs(sine(4800, 0.5))  # 100 ms: exactly 100 periods
    assert level == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.05)  # -9.03


def test_silence_and_nothing_have_no_level() -> None:
    assert pcm_rms_dbfs(b"") is None
    assert pcm_rms_dbfs(bytes(FRAME_BYTES * 480)) is None


def test_odd_length_is_refused() -> None:
    with pytest.raises(ValueError):
        pcm_rms_dbfs(b"\x00\x00\x00")


def test_level_meter_averages_power_over_everything_added() -> None:
    meter = LevelMeter()
    assert meter.dbfs() is None
    meter.add(bytes(FRAME_BYTES * 4800))
    assert meter.dbfs() is None
    meter.add(square(4800))
    # Half the time at full scale, half silent: half the power, -3 dB.
    assert meter.dbfs() == pytest.approx(-3.01, abs=0.02)


def test_level_meter_matches_the_one_shot_level() -> None:
    pcm = sine(9600, 0.25)
    meter = LevelMeter()
    for start in range(0, len(pcm), 1920):
        meter.add(pcm[start : start + 1920])
    assert meter.dbfs() == pytest.approx(pcm_rms_dbfs(pcm))


def read_wav(path: Path) -> tuple[tuple[int, int, int], bytes]:
    with wave.open(str(path), "rb") as wav:
        params = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate())
        return params, wav.readframes(wav.getnframes())


def test_wav_sink_is_valid_after_each_close_and_accumulates(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "station.wav"
    first, second = sine(4800, 0.5), square(2400)
    sink = WavFileSink(path)
    sink.open()
    sink.write(first)
    sink.close()
    assert read_wav(path) == ((CHANNELS, SAMPLE_WIDTH, SAMPLE_RATE), first)
    sink.open()
    sink.write(second[:960])
    sink.write(second[960:])
    sink.close()
    sink.close()  # idempotent
    assert read_wav(path) == ((CHANNELS, SAMPLE_WIDTH, SAMPLE_RATE), first + second)
    assert path.stat().st_size == 44 + len(first) + len(second)
    # A new sink object (the agent restarted) keeps appending to the same file.
    again = WavFileSink(path)
    again.open()
    again.write(first)
    again.close()
    assert read_wav(path)[1] == first + second + first


def test_wav_sink_is_valid_while_playing(tmp_path: Path) -> None:
    path = tmp_path / "station.wav"
    sink = WavFileSink(path)
    sink.open()
    assert read_wav(path)[1] == b""  # the header is there from the start
    one_second = sine(SAMPLE_RATE, 0.5)
    sink.write(one_second)
    sink.write(sine(480, 0.5))
    # The header was patched after the first full second; the short tail comes at close().
    assert read_wav(path)[1] == one_second
    sink.close()
    assert len(read_wav(path)[1]) == len(one_second) + 480 * FRAME_BYTES


def test_wav_sink_recovers_from_a_crash_before_the_last_patch(tmp_path: Path) -> None:
    path = tmp_path / "station.wav"
    sink = WavFileSink(path)
    sink.open()
    sink.write(sine(480, 0.5))
    sink.close()
    with path.open("ab") as file:  # audio written but the header never updated, plus half a frame
        file.write(sine(480, 0.5) + b"\x01\x02")
    sink.open()
    sink.close()
    assert len(read_wav(path)[1]) == 960 * FRAME_BYTES


def test_wav_sink_refuses_a_foreign_file(tmp_path: Path) -> None:
    from hal.audio import AudioError

    path = tmp_path / "other.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(bytes(1600))
    sink = WavFileSink(path)
    with pytest.raises(AudioError, match="not a 48000 Hz"):
        sink.open()


def test_sinks_refuse_misuse(tmp_path: Path) -> None:
    sink = WavFileSink(tmp_path / "station.wav")
    with pytest.raises(RuntimeError, match="not open"):
        sink.write(bytes(FRAME_BYTES))
    sink.open()
    with pytest.raises(ValueError, match="whole 4-byte frames"):
        sink.write(b"\x00\x00")
    sink.close()


def test_open_sink_by_kind(tmp_path: Path) -> None:
    wav = open_sink("wav", "default", tmp_path / "s.wav")
    assert isinstance(wav, WavFileSink) and wav.path == tmp_path / "s.wav"
    device = open_sink("device", "USB Audio", tmp_path / "s.wav")
    assert isinstance(device, PyAudioSink) and device.device == "USB Audio"
    with pytest.raises(ValueError, match="unknown audio sink kind"):
        open_sink("speaker", "default", tmp_path / "s.wav")


def test_importing_the_hal_loads_no_hardware_library() -> None:
    # PortAudio prints dozens of probe lines when loaded; commands that never play must not.
    code = (
        "import sys, hal.audio, hal.relays;"
        "print(sorted({'pyaudio', 'gpiozero'} & set(sys.modules)))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
