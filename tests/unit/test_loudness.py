"""Loudness correction rules, the sidecar store (with a fake measurer, no ffmpeg) and the
generated chimes (pydub only, no ffmpeg, no PortAudio)."""

from __future__ import annotations

import json
import math
import sys
import threading
from array import array
from pathlib import Path

import pytest

from agent.loudness import (
    SIDECAR_SUFFIX,
    Loudness,
    LoudnessError,
    LoudnessStore,
    db_to_gain,
    gain_db,
    parse_summary,
)
from hal.audio import FRAME_BYTES, SAMPLE_RATE
from hal.chimes import CHIME_PEAK_DBFS, CHIME_TONES, PcmClip, chime_pcm
from tests.harness.audio import analyse_pcm
from tests.harness.clock import FakeClock

SHA = "ab" * 32
OTHER = "cd" * 32

# --- gain_db --------------------------------------------------------------------------------


def test_gain_brings_the_measurement_to_the_target() -> None:
    assert gain_db(-20.0, -16.0) == pytest.approx(4.0)
    assert gain_db(-10.0, -16.0) == pytest.approx(-6.0)
    assert gain_db(-16.0, -16.0) == 0.0


def test_a_boost_is_capped_and_a_cut_is_not() -> None:
    assert gain_db(-40.0, -16.0) == 12.0  # the default cap
    assert gain_db(-40.0, -16.0, max_gain_db=6.0) == 6.0
    assert gain_db(-40.0, -16.0, max_gain_db=0.0) == 0.0
    assert gain_db(0.0, -16.0, max_gain_db=6.0) == pytest.approx(-16.0)


def test_a_boost_keeps_the_true_peak_under_the_ceiling() -> None:
    # Wants +10 dB, but the peak at -4 dBTP leaves only 3 dB under -1 dBTP.
    assert gain_db(-26.0, -16.0, true_peak_dbtp=-4.0) == pytest.approx(3.0)
    assert gain_db(-26.0, -16.0, true_peak_dbtp=-4.0, peak_ceiling_dbtp=-2.0) == pytest.approx(2.0)
    # Enough headroom: the loudness target and the cap decide.
    assert gain_db(-26.0, -16.0, true_peak_dbtp=-20.0) == pytest.approx(10.0)
    assert gain_db(-36.0, -16.0, true_peak_dbtp=-30.0) == 12.0


def test_the_ceiling_never_turns_a_file_down() -> None:
    # Already above the ceiling: no boost, but no cut either when loudness asks for none.
    assert gain_db(-20.0, -16.0, true_peak_dbtp=0.5) == 0.0
    # A cut that loudness asks for is kept as it is.
    assert gain_db(-10.0, -16.0, true_peak_dbtp=0.5) == pytest.approx(-6.0)
    # An unknown (silent) peak does not limit anything.
    assert gain_db(-20.0, -16.0, true_peak_dbtp=None) == pytest.approx(4.0)
    assert gain_db(-20.0, -16.0, true_peak_dbtp=-math.inf) == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("measured", "target", "cap"),
    [(math.nan, -16.0, 12.0), (-20.0, math.inf, 12.0), (-20.0, -16.0, -1.0)],
)
def test_gain_refuses_nonsense(measured: float, target: float, cap: float) -> None:
    with pytest.raises(ValueError):
        gain_db(measured, target, cap)


def test_db_to_gain() -> None:
    assert db_to_gain(0.0) == 1.0
    assert db_to_gain(-6.0) == pytest.approx(0.501, abs=0.001)
    assert db_to_gain(12.0) == pytest.approx(3.981, abs=0.001)


# --- ffmpeg's summary -----------------------------------------------------------------------

SUMMARY = """\
[Parsed_ebur128_0 @ 0x559b2a1b8940] Summary:

  Integrated loudness:
    I:         -20.0 LUFS
    Threshold: -30.0 LUFS

  Loudness range:
    LRA:         0.0 LU
    Threshold: -40.0 LUFS
    LRA low:   -20.0 LUFS
    LRA high:  -20.0 LUFS

  True peak:
    Peak:      -19.7 dBFS
"""


def test_the_summary_is_parsed() -> None:
    assert parse_summary("Input #0, mp3 ...\n" + SUMMARY) == Loudness(-20.0, -19.7)


def test_silence_has_no_loudness_and_no_peak() -> None:
    text = SUMMARY.replace("-20.0 LUFS\n    Threshold: -30.0", "-70.0 LUFS\n    Threshold:   0.0")
    text = text.replace("-19.7 dBFS", " -inf dBFS")
    assert parse_summary(text) == Loudness(None, None)


def test_a_summary_without_true_peak_still_gives_the_loudness() -> None:
    assert parse_summary(SUMMARY.split("  True peak:")[0]) == Loudness(-20.0, None)


def test_the_last_summary_counts() -> None:
    assert parse_summary(SUMMARY.replace("-20.0 LUFS", "-5.0 LUFS", 1) + SUMMARY).lufs == -20.0


@pytest.mark.parametrize(
    "text",
    ["ffmpeg: no such file", "Summary:\n  Loudness range:\n", SUMMARY.replace("-20.0", "x", 1)],
)
def test_no_usable_summary_is_an_error(text: str) -> None:
    with pytest.raises(LoudnessError):
        parse_summary(text)


# --- the sidecar store ----------------------------------------------------------------------


class FakeMeasurer:
    """Stands in for ffmpeg: returns the figures it is given, or fails, and records its calls."""

    def __init__(self, result: Loudness | LoudnessError) -> None:
        self.result = result
        self.calls: list[Path] = []

    def __call__(self, path: Path) -> Loudness:
        self.calls.append(path)
        if isinstance(self.result, LoudnessError):
            raise self.result
        return self.result


def store_with(
    root: Path, result: Loudness | LoudnessError, clock: FakeClock
) -> tuple[LoudnessStore, FakeMeasurer]:
    measurer = FakeMeasurer(result)
    return LoudnessStore(root, clock=clock, measurer=measurer), measurer


def test_ensure_measures_once_and_get_reads_it_back(tmp_path: Path, fake_clock: FakeClock) -> None:
    store, measurer = store_with(tmp_path, Loudness(-19.5, -3.25), fake_clock)
    medium = tmp_path / SHA
    assert store.get(SHA) is None
    assert store.ensure(SHA, medium) == -19.5
    assert store.ensure(SHA, medium) == -19.5
    assert measurer.calls == [medium]
    assert store.get(SHA) == -19.5
    assert store.loudness(SHA) == Loudness(-19.5, -3.25)
    sidecar = tmp_path / f"{SHA}{SIDECAR_SUFFIX}"
    assert json.loads(sidecar.read_text()) == {
        "lufs": -19.5,
        "true_peak_dbtp": -3.25,
        "measured_at": "2026-11-22T10:00:00Z",
    }
    # A new store (the agent restarted) finds it on disk.
    again, measurer2 = store_with(tmp_path, Loudness(-1.0, -1.0), fake_clock)
    assert again.ensure(SHA, medium) == -19.5
    assert measurer2.calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [sidecar.name]  # no temporary left


def test_silence_is_remembered_as_no_loudness(tmp_path: Path, fake_clock: FakeClock) -> None:
    store, measurer = store_with(tmp_path, Loudness(None, None), fake_clock)
    assert store.ensure(SHA, tmp_path / SHA) is None
    assert store.ensure(SHA, tmp_path / SHA) is None
    assert len(measurer.calls) == 1  # a long silent file is not read twice
    assert store.loudness(SHA) == Loudness(None, None)
    assert store.correction_db(SHA, -16.0) == 0.0


def test_a_failed_measurement_is_not_stored(tmp_path: Path, fake_clock: FakeClock) -> None:
    store, measurer = store_with(tmp_path, LoudnessError("corrupt"), fake_clock)
    assert store.ensure(SHA, tmp_path / SHA) is None
    assert store.ensure(SHA, tmp_path / SHA) is None
    assert len(measurer.calls) == 2  # tried again: the failure may have been passing
    assert list(tmp_path.iterdir()) == []
    assert store.correction_db(SHA, -16.0) == 0.0  # played as it is


def test_correction_uses_the_stored_peak(tmp_path: Path, fake_clock: FakeClock) -> None:
    store, _ = store_with(tmp_path, Loudness(-30.0, -6.0), fake_clock)
    store.ensure(SHA, tmp_path / SHA)
    assert store.correction_db(SHA, -16.0) == pytest.approx(5.0)  # -6 dBTP + 5 = -1 dBTP
    assert store.correction_db(SHA, -16.0, peak_ceiling_dbtp=0.0) == pytest.approx(6.0)
    assert store.correction_db(OTHER, -16.0) == 0.0  # never measured


@pytest.mark.parametrize(
    "content",
    [b"", b'{"lufs": -19.', b"[1, 2]", b'{"lufs": "loud"}', b'{"lufs": true}', b"\xff\xfe"],
)
def test_a_damaged_sidecar_counts_as_unmeasured(
    tmp_path: Path, fake_clock: FakeClock, content: bytes
) -> None:
    # What a non-atomic writer would leave after a power cut, or a hand edit gone wrong.
    sidecar = tmp_path / f"{SHA}{SIDECAR_SUFFIX}"
    sidecar.write_bytes(content)
    store, measurer = store_with(tmp_path, Loudness(-18.0, -2.0), fake_clock)
    assert store.get(SHA) is None
    assert store.ensure(SHA, tmp_path / SHA) == -18.0
    assert len(measurer.calls) == 1
    assert json.loads(sidecar.read_text())["lufs"] == -18.0


def test_an_interrupted_write_leaves_only_a_temporary_that_is_cleaned_up(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    store, _ = store_with(tmp_path, Loudness(-18.0, -2.0), fake_clock)
    store.ensure(SHA, tmp_path / SHA)
    before = (tmp_path / f"{SHA}{SIDECAR_SUFFIX}").read_bytes()
    # atomic_write's temporary for a second write, cut off half way by a power cut.
    leftover = tmp_path / f".{OTHER}{SIDECAR_SUFFIX}.4242.tmp"
    leftover.write_bytes(b'{"lufs": -1')
    medium = tmp_path / OTHER
    medium.write_bytes(b"media")  # a cached medium: not the store's to remove
    assert store.get(OTHER) is None  # the temporary is never read as a sidecar
    assert (tmp_path / f"{SHA}{SIDECAR_SUFFIX}").read_bytes() == before
    assert store.remove_temporaries() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{SHA}{SIDECAR_SUFFIX}", OTHER])
    assert LoudnessStore(tmp_path / "absent").remove_temporaries() == 0


def test_an_unwritable_sidecar_still_gives_the_figure(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    # A directory where the sidecar should go: the rename fails as on a broken file system.
    (tmp_path / f"{SHA}{SIDECAR_SUFFIX}" / "x").mkdir(parents=True)
    store, measurer = store_with(tmp_path, Loudness(-21.0, -5.0), fake_clock)
    assert store.ensure(SHA, tmp_path / SHA) == -21.0
    assert store.get(SHA) is None
    assert len(measurer.calls) == 1


def test_discard_forgets(tmp_path: Path, fake_clock: FakeClock) -> None:
    store, _ = store_with(tmp_path, Loudness(-18.0, -2.0), fake_clock)
    store.ensure(SHA, tmp_path / SHA)
    store.discard(SHA)
    store.discard(SHA)  # idempotent
    assert store.get(SHA) is None


@pytest.mark.parametrize("sha", ["AB" * 32, "ab" * 31, "../" + "ab" * 31, ""])
def test_the_hash_is_checked_since_it_is_a_file_name(tmp_path: Path, sha: str) -> None:
    store = LoudnessStore(tmp_path)
    with pytest.raises(ValueError):
        store.get(sha)
    with pytest.raises(ValueError):
        store.ensure(sha, tmp_path / "x")


def test_two_threads_ensuring_one_medium_measure_it_once(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    release = threading.Event()

    class Blocking(FakeMeasurer):
        def __call__(self, path: Path) -> Loudness:
            release.wait(10)
            return super().__call__(path)

    measurer = Blocking(Loudness(-17.0, -1.5))
    store = LoudnessStore(tmp_path, clock=fake_clock, measurer=measurer)
    results: list[float | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.ensure(SHA, tmp_path / SHA)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    release.set()  # whatever the interleaving, the second ensure finds the first one's sidecar
    for thread in threads:
        thread.join(10)
    assert results == [-17.0, -17.0]
    assert len(measurer.calls) == 1


# --- chimes ---------------------------------------------------------------------------------

TONE_RMS_DBFS = CHIME_PEAK_DBFS - 3.01  # a sine's RMS is 3 dB under its peak


def frames(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE)


def parts(pcm: bytes, kind: str) -> list[bytes]:
    found, at = [], 0
    for _, length_ms, _ in CHIME_TONES[kind]:
        size = frames(length_ms / 1000) * FRAME_BYTES
        found.append(pcm[at : at + size])
        at += size
    assert at == len(pcm)
    return found


def samples_of(pcm: bytes) -> array[int]:
    samples = array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


@pytest.mark.parametrize(("kind", "freqs"), [("before", (660.0, 550.0)), ("after", (550.0, 660.0))])
def test_chime_tones_lengths_and_level(kind: str, freqs: tuple[float, float]) -> None:
    pcm = chime_pcm(kind)
    assert len(pcm) == frames(0.8) * FRAME_BYTES
    for part, freq, seconds in zip(parts(pcm, kind), freqs, (0.3, 0.5), strict=True):
        whole = analyse_pcm(part)
        assert whole.seconds == pytest.approx(seconds)
        assert whole.freq_hz == pytest.approx(freq, rel=0.002)
        # The fades take a little off the whole part; between them the tone is at its level.
        assert whole.dbfs is not None
        assert TONE_RMS_DBFS - 1.2 < whole.dbfs < TONE_RMS_DBFS
        steady = analyse_pcm(part[frames(0.05) * FRAME_BYTES : frames(0.25) * FRAME_BYTES])
        assert steady.freq_hz == pytest.approx(freq, rel=0.001)
        assert steady.dbfs == pytest.approx(TONE_RMS_DBFS, abs=0.05)


def test_chime_is_clean_stereo_that_starts_and_ends_at_rest() -> None:
    samples = samples_of(chime_pcm("before"))
    assert samples[0::2] == samples[1::2]  # the same tone on both speakers
    peak = max(abs(s) for s in samples)
    assert 20 * math.log10(peak / 32768) == pytest.approx(CHIME_PEAK_DBFS, abs=0.05)
    # No click: the first and last millisecond are faded to (almost) nothing.
    edge = frames(0.001) * 2
    assert max(abs(s) for s in samples[:edge]) < peak * 0.15
    assert max(abs(s) for s in samples[-edge:]) < peak * 0.05
    # Nor at the junction: the first tone has faded out before the second starts.
    junction = frames(0.3) * 2
    assert max(abs(s) for s in samples[junction - edge : junction + edge]) < peak * 0.15


def test_chimes_are_generated_once_per_kind() -> None:
    assert chime_pcm("before") is chime_pcm("before")
    assert chime_pcm() is chime_pcm("before")
    assert chime_pcm("after") != chime_pcm("before")


def test_an_unknown_chime_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown chime"):
        chime_pcm("during")


# --- PcmClip --------------------------------------------------------------------------------


def test_clip_streams_whole_chunks() -> None:
    pcm = chime_pcm("before")
    with PcmClip(pcm, chunk_frames=4800) as clip:
        chunks = list(clip.chunks())
    assert [len(c) for c in chunks] == [4800 * FRAME_BYTES] * 8
    assert b"".join(chunks) == pcm
    assert clip.seconds == pytest.approx(0.8)
    with pytest.raises(RuntimeError, match="only once"):
        clip.chunks()


def test_clip_applies_its_gain_and_saturates() -> None:
    pcm = array("h", [1000, -1000, 30000, -30000])
    if sys.byteorder == "big":
        pcm.byteswap()
    half = b"".join(PcmClip(pcm.tobytes(), 0.5).chunks())
    double = b"".join(PcmClip(pcm.tobytes(), 2.0).chunks())
    assert list(samples_of(half)) == [500, -500, 15000, -15000]
    assert list(samples_of(double)) == [2000, -2000, 32767, -32768]
    quieter = analyse_pcm(b"".join(PcmClip(chime_pcm("before"), db_to_gain(-6.0)).chunks()))
    full = analyse_pcm(chime_pcm("before"))
    assert quieter.dbfs is not None and full.dbfs is not None
    assert quieter.dbfs == pytest.approx(full.dbfs - 6.0, abs=0.01)


def test_clip_close_stops_before_the_next_chunk() -> None:
    clip = PcmClip(chime_pcm("after"), chunk_frames=960)
    chunks = clip.chunks()
    assert len(next(chunks)) == 960 * FRAME_BYTES
    clip.close()
    assert list(chunks) == []
    clip.close()  # idempotent


@pytest.mark.parametrize(
    ("pcm", "gain", "chunk_frames"),
    [(b"\x00" * 6, 1.0, 10), (b"", -0.5, 10), (b"", math.nan, 10), (b"", 1.0, 0)],
)
def test_clip_refuses_bad_arguments(pcm: bytes, gain: float, chunk_frames: int) -> None:
    with pytest.raises(ValueError):
        PcmClip(pcm, gain, chunk_frames=chunk_frames)
