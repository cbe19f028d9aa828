"""The audio chain with real parts: ffmpeg decodes a generated MP3 tone into the simulation WAV
sink and, through PyAudio and ALSA, into an ALSA ``type file`` sink.

The ALSA file sink captures exactly what PyAudio wrote but is not paced (a second of audio is
"played" at once), so these tests check content (frequency, length, level), never timing.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import wave
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
