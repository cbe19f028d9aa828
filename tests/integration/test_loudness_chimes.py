"""Loudness measurement with the real ffmpeg, normalisation through the real Decoder, the
sidecar store beside a real media cache, and the generated chimes as ffmpeg hears them.

Levels here follow two conventions that differ by 3 dB for a sine: a tone's amplitude is its
peak (``make_tone``'s ``amplitude``; -20 dBFS is a peak of 0.1), while ``analyse_pcm`` reports
RMS. BS.1770 weighs a 1 kHz sine at its RMS level plus 3 dB per channel, so a -20 dBFS sine
reads -23 LUFS in one channel and -20 LUFS in two.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import subprocess
import threading
import wave
from pathlib import Path

import pytest

from agent.cache import MediaCache
from agent.loudness import (
    Loudness,
    LoudnessError,
    LoudnessStore,
    _lower_priority,
    db_to_gain,
    measure,
    measure_lufs,
)
from hal.audio import Decoder, WavFileSink
from hal.chimes import PcmClip, chime_pcm
from tests.harness.audio import make_tone
from tests.harness.clock import FakeClock
from tests.harness.media_server import MediaServer

pytestmark = pytest.mark.integration


def ffmpeg_children() -> list[int]:
    """Our child processes called ffmpeg, zombies included."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited while we looked
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        if ppid == os.getpid() and name == "ffmpeg":
            found.append(int(stat.parent.name))
    return found


def ffmpeg(*args: str) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        check=True,
        capture_output=True,
    )


def mono_tone(path: Path, peak: float, seconds: float = 5.0) -> None:
    # ffmpeg's sine source is 1/8 of full scale.
    ffmpeg(
        "-f", "lavfi", "-i", f"sine=frequency=1000:duration={seconds}:sample_rate=48000",
        "-af", f"volume={8 * peak}", str(path),
    )  # fmt: skip


def silence(path: Path, seconds: float = 5.0) -> None:
    ffmpeg(
        "-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo", "-t", str(seconds),
        "-b:a", "128k", str(path),
    )  # fmt: skip


def pcm_to_wav(pcm: bytes, path: Path) -> Path:
    sink = WavFileSink(path)
    sink.open()
    try:
        sink.write(pcm)
    finally:
        sink.close()
    return path


# --- Measuring ------------------------------------------------------------------------------


def test_two_levels_measure_their_difference(tmp_path: Path) -> None:
    loud, quiet = tmp_path / "loud.mp3", tmp_path / "quiet.mp3"
    make_tone(loud, 1000.0, 5.0, amplitude=0.5)  # -6 dBFS
    make_tone(quiet, 1000.0, 5.0, amplitude=0.125)  # -18 dBFS
    loud_lufs, quiet_lufs = measure_lufs(loud), measure_lufs(quiet)
    assert loud_lufs is not None and quiet_lufs is not None
    assert loud_lufs - quiet_lufs == pytest.approx(12.0, abs=0.5)


def test_a_minus_20_dbfs_sine_measures_minus_23_lufs_per_channel(tmp_path: Path) -> None:
    mono, stereo = tmp_path / "mono.wav", tmp_path / "stereo.mp3"
    mono_tone(mono, 0.1)
    make_tone(stereo, 1000.0, 5.0, amplitude=0.1)
    # ffmpeg 5.1 reports -23.0 and -20.0 LUFS (loudnorm: -23.05 and -20.05), true peak -20.0.
    for path, lufs in ((mono, -23.0), (stereo, -20.0)):
        measured = measure(path)
        assert measured.lufs == pytest.approx(lufs, abs=0.2)
        assert measured.true_peak_dbtp == pytest.approx(-20.0, abs=0.2)


def test_a_mono_file_measures_as_the_decoder_plays_it(tmp_path: Path) -> None:
    # The Decoder spreads mono over both speakers at -3 dB each, so the station plays a mono
    # file exactly as loud as ebur128 measures it (no dual-mono correction wanted).
    mono = tmp_path / "mono.wav"
    mono_tone(mono, 0.1)
    with Decoder(mono, 1.0) as decoder:
        played = pcm_to_wav(b"".join(decoder.chunks()), tmp_path / "played.wav")
    assert measure_lufs(played) == pytest.approx(measure_lufs(mono), abs=0.1)


def test_silence_has_no_loudness(tmp_path: Path) -> None:
    path = tmp_path / "silence.mp3"
    silence(path)
    assert measure_lufs(path) is None
    assert measure(path) == Loudness(None, None)


def test_a_clip_shorter_than_one_gating_block_has_no_loudness(tmp_path: Path) -> None:
    path = tmp_path / "blip.wav"
    mono_tone(path, 0.5, seconds=0.2)
    measured = measure(path)
    assert measured.lufs is None
    assert measured.true_peak_dbtp == pytest.approx(-6.0, abs=0.3)


def test_corrupt_missing_and_unmeasurable_media_give_none(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.mp3"
    bad.write_bytes(random.Random(7).randbytes(20000))
    picture = tmp_path / "cover.png"
    ffmpeg("-f", "lavfi", "-i", "color=c=red:s=16x16", "-frames:v", "1", str(picture))
    for path in (bad, tmp_path / "absent.mp3", picture):
        assert measure_lufs(path) is None
        with pytest.raises(LoudnessError, match="could not measure") as err:
            measure(path)
        assert path.name in str(err.value)  # ffmpeg's own message is carried
    assert ffmpeg_children() == []


def test_missing_ffmpeg_gives_none(tmp_path: Path) -> None:
    path = tmp_path / "tone.mp3"
    make_tone(path, 1000.0, 1.0)
    assert measure_lufs(path, ffmpeg="/nonexistent/ffmpeg") is None
    with pytest.raises(LoudnessError, match="cannot run"):
        measure(path, "/nonexistent/ffmpeg")


def test_a_measurement_that_takes_too_long_is_killed(tmp_path: Path) -> None:
    fifo = tmp_path / "stuck.mp3"
    os.mkfifo(fifo)  # nobody ever writes: ffmpeg waits in open() forever
    with pytest.raises(LoudnessError, match="took longer"):
        measure(fifo, timeout_s=0.5)
    assert ffmpeg_children() == []


def test_the_measuring_process_is_niced(tmp_path: Path) -> None:
    proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        _lower_priority(proc.pid, 7)
        # Field 19 of /proc/PID/stat is the nice value (2 after the name's closing bracket).
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        nice = int(stat[stat.rindex(")") + 2 :].split()[16])
        assert nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()


# --- Normalising ----------------------------------------------------------------------------


def test_normalised_media_play_at_the_target(tmp_path: Path, fake_clock: FakeClock) -> None:
    """What the player does: the stored correction times the volume, as the Decoder's gain."""
    store = LoudnessStore(tmp_path, clock=fake_clock)
    target = -20.0
    played: dict[float, float | None] = {}
    for peak in (0.25, 0.03):  # -12 LUFS (cut by 8 dB) and -30.5 LUFS (boost of 10.5 dB)
        path = tmp_path / f"{round(peak * 100):02d}.mp3"
        make_tone(path, 1000.0, 5.0, amplitude=peak)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        assert store.ensure(sha, path) is not None
        gain = db_to_gain(store.correction_db(sha, target))
        with Decoder(path, gain) as decoder:
            out = pcm_to_wav(b"".join(decoder.chunks()), tmp_path / f"out-{sha}.wav")
        played[peak] = measure_lufs(out)
    assert played == {0.25: pytest.approx(target, abs=0.5), 0.03: pytest.approx(target, abs=0.5)}


def test_a_boost_stops_at_the_true_peak_ceiling(tmp_path: Path, fake_clock: FakeClock) -> None:
    # A quiet tone with one loud click: loudness asks for +12 dB, the click allows less.
    path = tmp_path / "click.wav"
    ffmpeg(
        "-f", "lavfi", "-i",
        "aevalsrc='(0.03+0.3*between(t,2,2.005))*sin(2*PI*1000*t)':s=48000:d=5:c=stereo",
        str(path),
    )  # fmt: skip
    measured = measure(path)
    assert measured.lufs is not None and measured.true_peak_dbtp is not None
    store = LoudnessStore(tmp_path, clock=fake_clock, measurer=lambda _: measured)
    store.ensure("ab" * 32, path)
    correction = store.correction_db("ab" * 32, measured.lufs + 12.0)
    assert correction == pytest.approx(-1.0 - measured.true_peak_dbtp, abs=0.01)
    assert 0 < correction < 12.0  # about 8.5 dB: the click peaks near -9.6 dBTP


def test_sidecars_live_beside_cached_media(
    tmp_path: Path, media_server: MediaServer, fake_clock: FakeClock
) -> None:
    tone = tmp_path / "tone.mp3"
    make_tone(tone, 1000.0, 3.0, amplitude=0.1)
    body = tone.read_bytes()
    sha = hashlib.sha256(body).hexdigest()
    cache = MediaCache(tmp_path / "cache", allow_http=True)
    store = LoudnessStore(cache.root, clock=fake_clock)
    cached = cache.fetch(media_server.add("/tone.mp3", body), sha, len(body))
    assert store.ensure(sha, cached) == pytest.approx(-20.0, abs=0.3)
    # The cache neither sees nor removes the sidecar, and fetching again touches nothing.
    assert cache.remove_partials() == 0
    assert cache.has(sha, len(body))
    assert cache.fetch(media_server.url("/tone.mp3"), sha, len(body)) == cached
    assert media_server.hits("/tone.mp3") == 1
    assert sorted(p.name for p in cache.root.iterdir()) == [sha, f"{sha}.loudness.json"]
    assert LoudnessStore(cache.root).get(sha) == store.get(sha)


def test_measuring_in_one_thread_does_not_block_reading_in_another(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    # ensure() holds the store's lock while ffmpeg reads; a player asking for another
    # medium's correction meanwhile must not wait for it.
    entered, release = threading.Event(), threading.Event()

    def slow(path: Path) -> Loudness:
        entered.set()
        release.wait(10)
        return measure(path)

    path = tmp_path / "tone.mp3"
    make_tone(path, 1000.0, 1.0, amplitude=0.1)
    store = LoudnessStore(tmp_path, clock=fake_clock, measurer=slow)
    fast = LoudnessStore(tmp_path, clock=fake_clock, measurer=measure)
    fast.ensure("cd" * 32, path)
    worker = threading.Thread(target=store.ensure, args=("ab" * 32, path))
    worker.start()
    try:
        assert entered.wait(10)
        assert store.correction_db("cd" * 32, -16.0) == pytest.approx(4.0, abs=0.3)
    finally:
        release.set()
        worker.join(10)
    assert store.get("ab" * 32) == pytest.approx(-20.0, abs=0.3)


# --- Chimes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["before", "after"])
def test_chimes_measure_loud_but_not_clipping(tmp_path: Path, kind: str) -> None:
    measured = measure(pcm_to_wav(chime_pcm(kind), tmp_path / f"{kind}.wav"))
    assert measured.lufs == pytest.approx(-13.1, abs=0.3)
    assert measured.true_peak_dbtp == pytest.approx(-12.0, abs=0.2)


def test_a_chime_then_an_item_then_a_chime_into_the_wav_sink(tmp_path: Path) -> None:
    """What the player writes for an announcement: chime, item, closing chime, all at the
    slot's volume, into one sink."""
    item = tmp_path / "item.mp3"
    make_tone(item, 1000.0, 1.0, amplitude=0.5)
    path = tmp_path / "station.wav"
    volume = 0.5
    sink = WavFileSink(path)
    sink.open()
    try:
        for source in (
            PcmClip(chime_pcm("before"), volume),
            Decoder(item, volume),
            PcmClip(chime_pcm("after"), volume),
        ):
            with source:
                for chunk in source.chunks():
                    sink.write(chunk)
    finally:
        sink.close()
    with wave.open(str(path), "rb") as wav:
        assert wav.getnframes() / wav.getframerate() == pytest.approx(0.8 + 1.0 + 0.8, abs=0.03)
    measured = measure(path)
    assert measured.true_peak_dbtp is not None
    assert measured.true_peak_dbtp == pytest.approx(-12.0, abs=0.3)  # the item, at -6 - 6 dB
    assert math.isfinite(measured.lufs or math.nan)
