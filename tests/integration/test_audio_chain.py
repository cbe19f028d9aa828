"""The audio chain with real parts: ffmpeg decodes a generated MP3 tone into the simulation WAV
sink and, through PyAudio and ALSA, into an ALSA ``type file`` sink.

The ALSA file sink captures exactly what PyAudio wrote but is not paced (a second of audio is
"played" at once), so these tests check content (frequency, length, level), never timing.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import subprocess
import sys
import threading
import time
import wave
from array import array
from collections.abc import Generator
from pathlib import Path

import pytest

from hal.audio import AudioError, AudioSink, Decoder, WavFileSink
from tests.harness.audio import ToneReport, analyse_pcm, make_tone

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GAIN = 0.5
EXPECTED_DBFS = -9.03  # a full-scale sine is -3 dB RMS; gain 0.5 takes another 6 dB


@pytest.fixture(scope="module")
def tone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("media") / "tone-1k.mp3"
    make_tone(path, 1000.0, 1.5)
    return path


def play(decoder: Decoder, sink: AudioSink) -> None:
    """What the player's playback thread does, without the preemption."""
    sink.open()
    try:
        for chunk in decoder.chunks():
            sink.write(chunk)
    finally:
        sink.close()


def assert_is_the_tone(report: ToneReport) -> None:
    assert report.freq_hz == pytest.approx(1000.0, rel=0.02)
    assert report.seconds == pytest.approx(1.5, abs=0.1)
    assert report.dbfs == pytest.approx(EXPECTED_DBFS, abs=1.0)


def ffmpeg_children() -> list[str]:
    """Our child processes called ffmpeg, zombies included, as "pid state" strings."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited while we looked
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        if int(ppid) == os.getpid() and name == "ffmpeg":
            found.append(f"{stat.parent.name} {state}")
    return found


def test_tone_decodes_into_the_wav_sink(tone: Path, tmp_path: Path) -> None:
    path = tmp_path / "station.wav"
    with Decoder(tone, GAIN) as decoder:
        play(decoder, WavFileSink(path))
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 48000)
        pcm = wav.readframes(wav.getnframes())
    assert_is_the_tone(analyse_pcm(pcm))
    assert ffmpeg_children() == []


def test_decoder_yields_whole_chunks_of_the_asked_size(tone: Path) -> None:
    with Decoder(tone, GAIN, chunk_frames=960) as decoder:
        sizes = [len(chunk) for chunk in decoder.chunks()]
    assert set(sizes[:-1]) == {960 * 4}
    assert 0 < sizes[-1] <= 960 * 4


PLAYER_SCRIPT = """
import sys
from pathlib import Path
from hal.audio import AudioError, Decoder, PyAudioSink

try:
    PyAudioSink("no such card").open()
except AudioError as exc:
    print("missing device:", exc)
sink = PyAudioSink("default")
sink.open()
try:
    with Decoder(Path(sys.argv[1]), float(sys.argv[2])) as decoder:
        for chunk in decoder.chunks():
            sink.write(chunk)
finally:
    sink.close()
print("played")
"""


def test_tone_plays_through_pyaudio_into_an_alsa_file_sink(tone: Path, tmp_path: Path) -> None:
    # PortAudio reads the ALSA configuration once, at start-up, from $HOME/.asoundrc: hence a
    # separate process with its own HOME.
    captured = tmp_path / "out.raw"
    (tmp_path / ".asoundrc").write_text(
        f'pcm.!default {{ type file slave.pcm "null" file "{captured}" format "raw" }}\n'
    )
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", PLAYER_SCRIPT, str(tone), str(GAIN)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "played" in run.stdout
    assert "missing device: no audio output device named 'no such card'" in run.stdout
    # PortAudio's probe lines (dozens of "ALSA lib ..." on this machine) were filtered out.
    assert "ALSA lib" not in run.stderr
    assert "JackShm" not in run.stderr
    assert_is_the_tone(analyse_pcm(captured.read_bytes()))


def test_corrupt_media_raises_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.mp3"
    bad.write_bytes(random.Random(7).randbytes(20000))
    path = tmp_path / "station.wav"
    with Decoder(bad, GAIN) as decoder, pytest.raises(AudioError, match="could not decode") as err:
        play(decoder, WavFileSink(path))
    assert "corrupt.mp3" in str(err.value)  # ffmpeg's own message is carried
    with wave.open(str(path), "rb") as wav:
        assert wav.getnframes() == 0
    assert ffmpeg_children() == []


def test_missing_ffmpeg_is_an_audio_error(tone: Path) -> None:
    with (
        Decoder(tone, GAIN, ffmpeg="/nonexistent/ffmpeg") as decoder,
        pytest.raises(AudioError, match="cannot run"),
    ):
        next(iter(decoder.chunks()))


def test_close_mid_stream_stops_ffmpeg(tmp_path: Path) -> None:
    long = tmp_path / "long.wav"
    make_tone(long, 440.0, 60.0, fmt="wav")  # far more than the pipe can buffer
    decoder = Decoder(long, GAIN)
    chunks = decoder.chunks()
    assert len(next(chunks)) == 4800 * 4
    assert len(ffmpeg_children()) == 1
    started = time.monotonic()
    decoder.close()
    assert time.monotonic() - started < 1.0
    assert ffmpeg_children() == []  # killed and reaped: no zombie
    assert list(chunks) == []  # the iteration ends quietly, no error for a cut play
    decoder.close()  # idempotent


def open_fifo_for_writing(fifo: Path) -> int:
    """Open the FIFO's writing end, which returns once a reader (ffmpeg) has opened the other:
    from then on ffmpeg is running and waiting for data that never comes."""
    fds: list[int] = []
    opener = threading.Thread(target=lambda: fds.append(os.open(fifo, os.O_WRONLY)))
    opener.start()
    opener.join(timeout=10)
    if opener.is_alive():  # ffmpeg never opened it: release the opener before failing
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        opener.join()
        os.close(fds[0])
        pytest.fail("ffmpeg never opened its input")
    return fds[0]


def test_close_from_another_thread_unblocks_a_waiting_reader(tmp_path: Path) -> None:
    # A FIFO that stays open and silent: ffmpeg waits forever, like a live stream gone quiet.
    fifo = tmp_path / "silent.mp3"
    os.mkfifo(fifo)
    decoder = Decoder(fifo, GAIN)
    outcome: list[object] = []

    def playback() -> None:
        try:
            outcome.append(list(decoder.chunks()))
        except BaseException as exc:  # reported to the test thread below
            outcome.append(exc)

    thread = threading.Thread(target=playback)
    thread.start()
    writer = open_fifo_for_writing(fifo)
    try:
        assert len(ffmpeg_children()) == 1
        started = time.monotonic()
        decoder.close()
        thread.join(timeout=10)
        assert time.monotonic() - started < 1.0
    finally:
        os.close(writer)
    assert not thread.is_alive()
    assert outcome == [[]]  # a cut play ends quietly
    assert ffmpeg_children() == []


def test_close_before_start_plays_nothing(tone: Path) -> None:
    decoder = Decoder(tone, GAIN)
    decoder.close()
    assert list(decoder.chunks()) == []
    assert ffmpeg_children() == []


# --- Seeking --------------------------------------------------------------------------------


def decode_all(decoder: Decoder) -> bytes:
    with decoder:
        return b"".join(decoder.chunks())


def onset_s(pcm: bytes, threshold: int = 8000) -> float | None:
    """Seconds into station PCM where the left channel first exceeds ``threshold``."""
    samples = array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    for index, sample in enumerate(samples[::2]):
        if abs(sample) > threshold:
            return index / 48000
    return None


def make_beep_minute(path: Path, fmt: str = "mp3") -> None:
    """One minute of silence with a 1 kHz beep (half scale) from 30.0 s to 30.5 s."""
    subprocess.run(
        [
            "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", "sine=frequency=1000:duration=60:sample_rate=48000",
            "-af", "volume=4,volume=enable='not(between(t,30,30.5))':volume=0,"
            "pan=stereo|c0=c0|c1=c0",
            "-ar", "48000", "-b:a", "128k", "-f", fmt, str(path),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
def test_decoding_from_an_offset_gives_the_rest(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"tone.{fmt}"
    make_tone(path, 440.0, 3.0, fmt=fmt)
    report = analyse_pcm(decode_all(Decoder(path, GAIN, start_s=1.0)))
    assert report.seconds == pytest.approx(2.0, abs=0.03)
    assert report.freq_hz == pytest.approx(440.0, rel=0.01)


def test_an_offset_lands_on_the_right_sample(tmp_path: Path) -> None:
    path = tmp_path / "beep.mp3"
    make_beep_minute(path)
    whole = onset_s(decode_all(Decoder(path, 1.0)))
    late = onset_s(decode_all(Decoder(path, 1.0, start_s=29.25)))
    assert whole is not None and late is not None
    assert late == pytest.approx(whole - 29.25, abs=0.001)


def test_an_offset_past_the_end_plays_nothing(tone: Path) -> None:
    with Decoder(tone, GAIN, start_s=60.0) as decoder:
        assert list(decoder.chunks()) == []
    assert ffmpeg_children() == []


@pytest.mark.parametrize("start_s", [-0.5, math.nan, math.inf])
def test_a_bad_offset_is_refused(tone: Path, start_s: float) -> None:
    with pytest.raises(ValueError, match="start_s"):
        Decoder(tone, GAIN, start_s=start_s)


def test_seeking_late_in_an_hour_long_mp3_is_fast_and_exact(tmp_path: Path) -> None:
    """Why the Decoder seeks with ``-ss`` before ``-i``: against the slow way (after ``-i``,
    decoding everything before the offset), late in a 60-minute MP3."""
    minute = tmp_path / "minute.mp3"
    make_beep_minute(minute)
    playlist = tmp_path / "hour.txt"
    playlist.write_text("".join(f"file '{minute}'\n" for _ in range(60)))
    hour = tmp_path / "hour.mp3"
    subprocess.run(
        [
            "ffmpeg", "-nostdin", "-loglevel", "error", "-y",
            "-f", "concat", "-safe", "0", "-i", str(playlist), "-c", "copy", str(hour),
        ],
        check=True,
    )  # fmt: skip
    start_s = 59 * 60 + 29.0  # a second before the last beep (give or take the joins below)

    begun = time.monotonic()
    with Decoder(hour, 1.0, start_s=start_s) as decoder:
        chunks = decoder.chunks()
        fast = next(chunks) + next(chunks) + next(chunks)  # 0.3 s: ffmpeg has found its place
        fast_s = time.monotonic() - begun
        fast += b"".join(itertools.islice(chunks, 27))  # 3 s in all
    begun = time.monotonic()
    slow = subprocess.run(
        [
            "ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(hour), "-ss", str(start_s),
            "-t", "3", "-f", "s16le", "-ac", "2", "-ar", "48000", "-",
        ],
        check=True,
        capture_output=True,
    ).stdout  # fmt: skip
    slow_s = time.monotonic() - begun

    # Each joined minute keeps its encoder's padding (some 24 ms), so the last beep is late by
    # about 1.4 s in the hour: both seeks must agree on where it is, to the millisecond.
    fast_onset, slow_onset = onset_s(fast), onset_s(slow)
    assert slow_onset is not None and fast_onset is not None
    assert fast_onset == pytest.approx(slow_onset, abs=0.001)
    # Seen here: 0.1 s against 1.9 s. A Pi is some ten times slower at both.
    assert fast_s * 4 < slow_s


# --- Pre-roll -------------------------------------------------------------------------------


def test_prime_starts_ffmpeg_and_hands_over_the_first_chunk_at_once(tone: Path) -> None:
    reference = decode_all(Decoder(tone, GAIN))
    decoder = Decoder(tone, GAIN)
    assert not decoder.started.is_set()
    begun = time.monotonic()
    assert decoder.prime() is True
    prime_s = time.monotonic() - begun
    assert decoder.started.is_set()
    assert len(ffmpeg_children()) == 1  # running before anyone asked for a chunk
    assert decoder.prime() is True  # idempotent
    chunks = decoder.chunks()
    begun = time.monotonic()
    first = next(chunks)
    first_s = time.monotonic() - begun
    assert first_s < prime_s / 10  # from memory, not from a process starting up
    assert first + b"".join(chunks) == reference  # nothing lost, nothing twice
    assert ffmpeg_children() == []
    with pytest.raises(RuntimeError, match="before chunks"):
        decoder.prime()


def test_started_is_set_by_the_first_chunk_without_prime(tone: Path) -> None:
    with Decoder(tone, GAIN) as decoder:
        chunks = decoder.chunks()
        assert not decoder.started.is_set()
        next(chunks)
        assert decoder.started.is_set()


def test_prime_at_an_offset(tmp_path: Path) -> None:
    path = tmp_path / "tone.mp3"
    make_tone(path, 440.0, 3.0)
    with Decoder(path, GAIN, start_s=2.5) as decoder:
        assert decoder.prime()
        report = analyse_pcm(b"".join(decoder.chunks()))
    assert report.seconds == pytest.approx(0.5, abs=0.03)


def test_close_after_prime_plays_nothing(tone: Path) -> None:
    decoder = Decoder(tone, GAIN)
    assert decoder.prime()
    decoder.close()
    assert ffmpeg_children() == []
    assert list(decoder.chunks()) == []


def test_abandoning_a_primed_decoder_stops_ffmpeg(tone: Path) -> None:
    decoder = Decoder(tone, GAIN)
    decoder.prime()
    chunks = decoder.chunks()
    next(chunks)
    assert isinstance(chunks, Generator)
    chunks.close()  # what happens when the player breaks out of its loop
    assert ffmpeg_children() == []


def test_prime_of_nothing_is_false(tone: Path) -> None:
    decoder = Decoder(tone, GAIN, start_s=60.0)
    assert decoder.prime() is False
    assert not decoder.started.is_set()
    assert list(decoder.chunks()) == []
    assert ffmpeg_children() == []


def test_prime_of_corrupt_media_raises_and_chunks_raise_again(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.mp3"
    bad.write_bytes(random.Random(7).randbytes(20000))
    decoder = Decoder(bad, GAIN)
    with pytest.raises(AudioError, match="could not decode"):
        decoder.prime()
    with pytest.raises(AudioError, match="could not decode"):
        decoder.prime()
    assert ffmpeg_children() == []
    with pytest.raises(AudioError, match="could not decode"):
        next(iter(decoder.chunks()))


def test_close_from_another_thread_ends_a_waiting_prime(tmp_path: Path) -> None:
    fifo = tmp_path / "silent.mp3"
    os.mkfifo(fifo)
    decoder = Decoder(fifo, GAIN)
    outcome: list[object] = []

    def preroll() -> None:
        try:
            outcome.append(decoder.prime())
        except BaseException as exc:  # reported to the test thread below
            outcome.append(exc)

    thread = threading.Thread(target=preroll)
    thread.start()
    writer = open_fifo_for_writing(fifo)
    try:
        decoder.close()
        thread.join(timeout=10)
    finally:
        os.close(writer)
    assert not thread.is_alive()
    assert outcome == [False]
    assert not decoder.started.is_set()
    assert list(decoder.chunks()) == []
    assert ffmpeg_children() == []
