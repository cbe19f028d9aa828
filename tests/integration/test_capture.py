"""Measuring the real output: PyAudioProbe through PortAudio and ALSA, SilenceWatch, levels.

Real capture: ALSA's ``type file`` plugin feeds a capture stream from its ``infile`` (raw PCM
in the stream's format), over the ``null`` slave. Like the file sink it is not paced (a second
of audio is read at once) and, past the end of the file, it repeats the last buffer it read
instead of returning silence: so these tests read exact amounts (``measure``) from files longer
than what they read, and check levels, never timing.

The reader thread's own behaviour (stop while a read blocks, a failing card, the rolling
window) is tested with a fake ``pyaudio`` module: a scripted stream the test drives, with a fake
clock for the window.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import types
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hal.audio import pcm_rms_dbfs
from hal.capture import (
    SILENCE_FLOOR_DBFS,
    CaptureError,
    PyAudioProbe,
    SilenceWatch,
    is_silent,
    level_dbfs,
)
from tests.harness.audio import make_tone

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TONE_DBFS = -9.03  # a full-scale sine is -3 dB RMS; amplitude 0.5 takes another 6 dB


# --- levels and the silence rule (pure) -----------------------------------------------------


def test_levels_floor_digital_silence_and_none_means_nothing_read() -> None:
    assert level_dbfs(0, 0) is None
    assert level_dbfs(0, 4800) == SILENCE_FLOOR_DBFS
    assert level_dbfs(32768**2 * 10, 10) == pytest.approx(0.0)
    assert level_dbfs(1, 10**12) == SILENCE_FLOOR_DBFS  # below the floor: floored
    assert is_silent(SILENCE_FLOOR_DBFS)
    assert is_silent(-50.1) and not is_silent(-49.9)
    assert not is_silent(None)  # not measured is not silence


def test_silence_fires_once_after_the_quiet_stretch() -> None:
    watch = SilenceWatch(threshold_dbfs=-50.0, after_s=3.0)
    watch.arm()
    assert not watch.observe(10.0, -20.0)
    assert not watch.observe(10.1, -70.0)  # the quiet stretch starts here
    assert watch.quiet_since == 10.1
    assert not watch.observe(13.0, -70.0)
    assert watch.observe(13.1, -70.0)
    assert watch.fired
    assert not watch.observe(20.0, -70.0)  # once per watch, however long it stays quiet
    watch.arm()  # the next item of the same play
    assert not watch.observe(30.0, -70.0) and not watch.observe(40.0, -70.0)


def test_sound_or_no_reading_ends_a_quiet_stretch() -> None:
    watch = SilenceWatch(after_s=3.0)
    watch.arm()
    assert not watch.observe(0.0, -60.0)
    assert not watch.observe(2.9, -30.0)  # a word: the stretch restarts
    assert not watch.observe(3.0, -60.0)
    assert not watch.observe(5.9, None)  # the probe read nothing: no evidence of silence
    assert not watch.observe(6.0, -60.0)
    assert not watch.observe(8.9, -60.0)
    assert watch.observe(9.0, -60.0)


def test_a_disarmed_watch_ignores_gaps_and_arming_starts_afresh() -> None:
    watch = SilenceWatch(after_s=3.0)
    assert not watch.observe(0.0, -90.0) and not watch.observe(10.0, -90.0)  # warm-up
    watch.arm()
    assert not watch.observe(10.0, -90.0)
    watch.disarm()  # the gap between two items is meant to be quiet
    assert not watch.observe(20.0, -90.0)
    watch.arm()
    assert not watch.observe(21.0, -90.0)  # the gap did not count
    assert watch.observe(24.0, -90.0)


@pytest.mark.parametrize(
    ("threshold", "after"), [(math.nan, 3.0), (-50.0, 0.0), (-50.0, -1.0), (-50.0, math.inf)]
)
def test_silence_watch_refuses_bad_settings(threshold: float, after: float) -> None:
    with pytest.raises(ValueError):
        SilenceWatch(threshold, after)


# --- PyAudioProbe's reader thread, on a fake pyaudio ----------------------------------------

RATE, CHUNK = 48000, 4800


def tone_chunk(amplitude: int, frames: int = CHUNK) -> bytes:
    """A square wave of the given amplitude: its RMS is the amplitude, so levels are exact."""
    samples = array("h", [amplitude if i % 2 else -amplitude for i in range(frames)])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


LOUD, QUIET = tone_chunk(16384), tone_chunk(16)  # -6.02 and -66.2 dBFS
BLOCK = object()  # a read that never returns until the test releases it


class FakeStream:
    """A capture stream the test scripts: each read returns the next scripted chunk (or raises
    the scripted error, or blocks on ``BLOCK``); with nothing scripted it returns no frames
    after a short period, as a device would after its next period, and says it was idle."""

    def __init__(self) -> None:
        self.script: deque[object] = deque()
        self.cond = threading.Condition()
        self.idle = False  # a read found nothing scripted since the last feed
        self.blocked = False
        self.raised = False
        self.release = threading.Event()
        self.calls: list[str] = []

    def start_stream(self) -> None:
        self.calls.append("start")

    def stop_stream(self) -> None:
        self.calls.append("stop")

    def close(self) -> None:
        self.calls.append("close")

    def read(self, frames: int, exception_on_overflow: bool = True) -> bytes:
        assert frames == CHUNK and exception_on_overflow is False
        with self.cond:
            item = self.script.popleft() if self.script else None
            self.idle = item is None
            self.blocked = item is BLOCK
            self.raised = isinstance(item, BaseException)
            self.cond.notify_all()
        if item is None:
            self.release.wait(0.005)  # the device's next period
            return b""
        if item is BLOCK:
            self.release.wait()
            return b""
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, bytes)
        return item

    def put(self, *items: object) -> None:
        with self.cond:
            self.script.extend(items)
            self.idle = False

    def feed(self, *items: object) -> None:
        """Script chunks and wait until the reader has taken them all and come back for more
        (it counts a chunk before it reads the next)."""
        self.put(*items)
        self.wait_until(lambda: self.idle)

    def wait_until(self, predicate: Callable[[], bool]) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, 5.0), "the reader never got there"


class FakePyAudio:
    def __init__(self, stream: FakeStream, fail_open: bool) -> None:
        self.devices = [
            {"name": "HDMI out", "maxInputChannels": 0},
            {"name": "USB Audio CODEC: line-in (hw:1,0)", "maxInputChannels": 2},
        ]
        self.stream, self.fail_open = stream, fail_open
        self.opened: dict[str, Any] = {}
        self.terminated = False

    def get_device_count(self) -> int:
        return len(self.devices)

    def get_device_info_by_index(self, index: int) -> dict[str, Any]:
        return self.devices[index]

    def open(self, **kwargs: Any) -> FakeStream:
        if self.fail_open:
            raise OSError(-9996, "Invalid input device")
        self.opened = kwargs
        return self.stream

    def terminate(self) -> None:
        self.terminated = True


class FakePortAudio:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.stream = FakeStream()
        self.fail_open = False
        self.instances: list[FakePyAudio] = []
        module = types.ModuleType("pyaudio")
        module.paInt16 = 8  # type: ignore[attr-defined]
        module.PyAudio = self._new  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "pyaudio", module)

    def _new(self) -> FakePyAudio:
        self.instances.append(FakePyAudio(self.stream, self.fail_open))
        return self.instances[-1]


@pytest.fixture
def portaudio(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePortAudio]:
    fake = FakePortAudio(monkeypatch)
    yield fake
    fake.stream.release.set()  # no reader left blocked after a failed test


class Ticker:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def open_probe(**kwargs: Any) -> PyAudioProbe:
    probe = PyAudioProbe(rate=RATE, channels=1, **kwargs)
    probe.open()
    return probe


def test_start_stop_measures_what_was_read_between(portaudio: FakePortAudio) -> None:
    probe = open_probe()
    opened = portaudio.instances[0].opened
    assert opened["input"] is True and opened["start"] is False  # idle until a play
    assert (opened["rate"], opened["channels"], opened["frames_per_buffer"]) == (48000, 1, CHUNK)
    probe.start()
    portaudio.stream.feed(LOUD, LOUD, QUIET)
    level = probe.stop()
    assert level == pytest.approx(level_dbfs(16384**2 * 2 * CHUNK + 16**2 * CHUNK, 3 * CHUNK))
    assert probe.failure is None
    assert portaudio.stream.calls == ["start", "stop"]  # the stream runs only while measuring
    probe.start()
    assert probe.stop() is None  # a new measurement forgets the last one; nothing read: None
    probe.close()
    assert portaudio.stream.calls[-1] == "close" and portaudio.instances[0].terminated
    probe.close()  # idempotent


def test_level_now_is_the_last_second_and_goes_stale(portaudio: FakePortAudio) -> None:
    clock = Ticker()
    probe = open_probe(monotonic=clock)
    probe.start()
    assert probe.level_now() is None
    portaudio.stream.feed(*[QUIET] * 10)  # one second of quiet...
    portaudio.stream.feed(*[LOUD] * 10)  # ...pushed out by one second of loud
    assert probe.level_now() == pytest.approx(-6.02, abs=0.01)
    clock.now += 0.5
    assert probe.level_now() == pytest.approx(-6.02, abs=0.01)
    clock.now += 0.6
    assert probe.level_now() is None  # nothing read for over a second: not a level any more
    portaudio.stream.feed(QUIET)
    assert probe.level_now() == pytest.approx(-66.2, abs=0.1)
    probe.stop()
    probe.close()


def test_a_read_error_is_kept_as_failure_and_the_next_start_retries(
    portaudio: FakePortAudio,
) -> None:
    probe = open_probe()
    probe.start()
    portaudio.stream.put(LOUD, OSError(-9981, "Input overflowed"), QUIET)
    portaudio.stream.wait_until(lambda: portaudio.stream.raised)
    assert probe.stop() == pytest.approx(-6.02, abs=0.01)  # what was read before the error
    assert probe.failure == "capture from 'default' failed: [Errno -9981] Input overflowed"
    assert list(portaudio.stream.script) == [QUIET]  # the reader stopped at the error
    probe.start()  # a new play tries again
    assert probe.failure is None
    portaudio.stream.feed()
    assert probe.stop() == pytest.approx(-66.2, abs=0.1)
    probe.close()


def test_a_stalled_read_times_out_and_close_refuses_to_pull_the_stream(
    portaudio: FakePortAudio,
) -> None:
    probe = open_probe(stop_timeout_s=0.2)
    probe.start()
    portaudio.stream.put(LOUD, BLOCK)  # the USB card stops answering
    portaudio.stream.wait_until(lambda: portaudio.stream.blocked)
    assert probe.stop() == pytest.approx(-6.02, abs=0.01)
    assert probe.failure is not None and "stalled" in probe.failure
    with pytest.raises(CaptureError, match="stuck in a read"):
        probe.close()
    assert "close" not in portaudio.stream.calls
    portaudio.stream.release.set()  # the card answers again: the reader finishes
    probe.close()
    assert portaudio.stream.calls[-1] == "close"


def test_measure_reads_exactly_the_asked_amount(portaudio: FakePortAudio) -> None:
    probe = open_probe()
    portaudio.stream.put(LOUD, LOUD, tone_chunk(8192), LOUD)
    # 0.25 s = 2.5 chunks: two loud ones and half of the third, nothing of the fourth.
    level = probe.measure(0.25)
    assert level == pytest.approx(level_dbfs(16384**2 * 9600 + 8192**2 * 2400, 12000))
    assert probe.failure is None
    assert list(portaudio.stream.script) == [LOUD]
    probe.close()


def test_measure_says_when_the_input_ran_dry(portaudio: FakePortAudio) -> None:
    probe = open_probe()
    portaudio.stream.put(LOUD)
    assert probe.measure(0.5, timeout_s=0.3) == pytest.approx(-6.02, abs=0.01)
    assert probe.failure == "read 0.10 s of 0.5 s from 'default' in 0.3 s"
    probe.close()


def test_device_is_chosen_among_inputs_by_name(portaudio: FakePortAudio) -> None:
    probe = PyAudioProbe("USB Audio CODEC")
    probe.open()
    assert portaudio.instances[0].opened["input_device_index"] == 1
    probe.close()
    with pytest.raises(CaptureError, match=r"no audio input device named 'HDMI out'; inputs: 'USB"):
        PyAudioProbe("HDMI out").open()  # an output only
    assert portaudio.instances[-1].terminated


def test_a_device_that_will_not_open_is_a_capture_error(portaudio: FakePortAudio) -> None:
    portaudio.fail_open = True
    probe = PyAudioProbe()
    with pytest.raises(CaptureError, match="cannot open capture device 'default'"):
        probe.open()
    assert portaudio.instances[0].terminated
    with pytest.raises(RuntimeError, match="not open"):
        probe.start()


def test_bad_probe_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        PyAudioProbe(rate=0)
    with pytest.raises(ValueError):
        PyAudioProbe(window_s=0)


# --- real PortAudio, real ALSA capture ------------------------------------------------------

PROBE_SCRIPT = """
import json, sys
from hal.capture import CaptureError, PyAudioProbe

device, channels, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out = {}
try:
    PyAudioProbe("no such card").open()
except CaptureError as exc:
    out["missing"] = str(exc)
probe = PyAudioProbe(device, channels=channels)
probe.open()
try:
    out["first"] = probe.measure(seconds, timeout_s=10)
    out["level_now"] = probe.level_now()
    out["second"] = probe.measure(seconds, timeout_s=10)
    out["failure"] = probe.failure
finally:
    probe.close()
print(json.dumps(out))
"""


def raw_pcm(tmp_path: Path, name: str, channels: int, *, tone_s: float, quiet_s: float) -> Path:
    """``tone_s`` of the 1 kHz test tone at amplitude 0.5, then ``quiet_s`` of digital silence,
    as raw s16le 48 kHz with ``channels`` channels (what the capture stream asks for)."""
    path = tmp_path / f"{name}.raw"
    path.write_bytes(b"")
    if tone_s:
        wav = tmp_path / f"{name}.wav"
        make_tone(wav, 1000.0, tone_s, fmt="wav", amplitude=0.5)
        subprocess.run(
            ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(wav),
             "-f", "s16le", "-ac", str(channels), "-ar", "48000", str(path)],
            check=True, capture_output=True,
        )  # fmt: skip
    with path.open("ab") as file:
        file.write(bytes(int(quiet_s * 48000) * 2 * channels))
    return path


def run_probe(tmp_path: Path, asoundrc: str, device: str, channels: int) -> dict[str, Any]:
    # PortAudio reads the ALSA configuration once, at start-up, from $HOME/.asoundrc: hence a
    # separate process with its own HOME.
    (tmp_path / ".asoundrc").write_text(asoundrc)
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", PROBE_SCRIPT, device, str(channels), "1.0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    # PortAudio's probe lines were filtered out, on opening the input as on the output side.
    assert "ALSA lib" not in run.stderr
    assert "JackShm" not in run.stderr
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def file_pcm(name: str, infile: Path) -> str:
    return (
        f'pcm.{name} {{ type file slave.pcm "null" file "/dev/null" '
        f'infile "{infile}" format "raw" }}\n'
    )


def test_a_tone_then_silence_is_measured_through_pyaudio_and_alsa(tmp_path: Path) -> None:
    infile = raw_pcm(tmp_path, "line-in", 1, tone_s=1.0, quiet_s=2.0)
    assert pcm_rms_dbfs(infile.read_bytes()[:96000]) == pytest.approx(TONE_DBFS, abs=0.05)
    result = run_probe(tmp_path, file_pcm("!default", infile), "default", 1)
    assert result["first"] == pytest.approx(TONE_DBFS, abs=1.0)
    assert result["level_now"] == pytest.approx(TONE_DBFS, abs=1.0)
    assert result["second"] == SILENCE_FLOOR_DBFS  # the next second of the line-in is silent
    assert is_silent(result["second"]) and not is_silent(result["first"])
    assert result["failure"] is None
    assert result["missing"].startswith("no audio input device named 'no such card'")


def test_a_stereo_line_in_is_measured_over_both_channels(tmp_path: Path) -> None:
    infile = raw_pcm(tmp_path, "stereo", 2, tone_s=2.0, quiet_s=1.0)
    result = run_probe(tmp_path, file_pcm("loa_line_in", infile), "loa_line_in", 2)
    assert result["first"] == pytest.approx(TONE_DBFS, abs=1.0)
    assert result["second"] == pytest.approx(TONE_DBFS, abs=1.0)
    assert result["failure"] is None


def test_a_silent_line_in_reports_silence(tmp_path: Path) -> None:
    infile = raw_pcm(tmp_path, "quiet", 1, tone_s=0.0, quiet_s=3.0)
    result = run_probe(tmp_path, file_pcm("loa_quiet", infile), "loa_quiet", 1)
    assert result["first"] == SILENCE_FLOOR_DBFS == result["second"]
    assert is_silent(result["first"])


# --- paced: a PulseAudio null sink's monitor, for the silence rule in real time --------------

PACED_SCRIPT = """
import json, subprocess, sys, threading, time
from hal.capture import PyAudioProbe, SilenceWatch

tone, after_s = sys.argv[1], float(sys.argv[2])
probe = PyAudioProbe("pulse", window_s=0.5)
probe.open()
watch = SilenceWatch(threshold_dbfs=-50.0, after_s=after_s)
out = {"levels": [], "fired": []}
probe.start()
player = subprocess.Popen(["paplay", "--device=loa_speaker", tone])
started = time.monotonic()
watch.arm()
cadence = threading.Event()
while time.monotonic() - started < 10.0 and not out["fired"]:
    now = time.monotonic()
    level = probe.level_now()
    out["levels"].append([now - started, level])
    if watch.observe(now, level):
        out["fired"].append(now - started)
        out["quiet_since"] = watch.quiet_since - started
    cadence.wait(0.1)  # the player's cadence: one observation per 100 ms chunk written
out["total"] = probe.stop()
out["failure"] = probe.failure
out["paplay"] = player.wait(10)
probe.close()
print(json.dumps(out))
"""


@pytest.fixture
def pulse(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A PulseAudio server of our own with one null sink, ``loa_speaker``, whose monitor is the
    default source: what is played into the sink is captured, paced in real time. PortAudio
    reaches it through ALSA's ``pulse`` plugin."""
    if shutil.which("pulseaudio") is None or shutil.which("paplay") is None:
        pytest.skip("PulseAudio is not installed")
    runtime = tmp_path / "pulse-run"
    runtime.mkdir(mode=0o700)
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_RUNTIME_DIR": str(runtime),
        "PULSE_SERVER": f"unix:{runtime}/pulse/native",
        "PYTHONPATH": str(ROOT),
    }
    # --daemonize returns once the server is ready; `-k` stops exactly this one (its pid file
    # is under our XDG_RUNTIME_DIR).
    subprocess.run(
        ["pulseaudio", "-n", "--daemonize=yes", "--exit-idle-time=-1", "--disallow-exit",
         "--log-target=stderr", "--load=module-native-protocol-unix",
         "--load=module-null-sink sink_name=loa_speaker"],
        env=env, check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    try:
        yield env
    finally:
        subprocess.run(["pulseaudio", "-k"], env=env, check=False, capture_output=True)


def test_silence_after_the_sound_fires_once_after_the_quiet_stretch(
    pulse: dict[str, str], tmp_path: Path
) -> None:
    tone = tmp_path / "tone.wav"
    make_tone(tone, 1000.0, 1.0, fmt="wav", amplitude=0.5)
    # The monitor starts 0.5 to 2 s late, with up to ~0.6 s of silence before the tone: a
    # shorter after_s could fire on that (a real USB line-in starts within tens of ms).
    after_s = 1.5
    run = subprocess.run(
        [sys.executable, "-c", PACED_SCRIPT, str(tone), str(after_s)],
        env=pulse,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    levels = [(at, level) for at, level in out["levels"] if level is not None]
    loud = [at for at, level in levels if not is_silent(level)]
    assert loud, f"the tone was never heard: {out['levels']}"
    # A window wholly inside the tone measures the tone.
    assert max(level for _, level in levels) == pytest.approx(TONE_DBFS, abs=1.0)
    assert len(out["fired"]) == 1
    assert out["quiet_since"] > loud[-1]  # the stretch began after the sound ended...
    quiet_for = out["fired"][0] - out["quiet_since"]
    # ...and the fault came once it had lasted (the bound leaves room for a loaded CI machine)
    assert after_s <= quiet_for < after_s + 1.0
    assert all(is_silent(level) for at, level in levels if at >= out["quiet_since"])
    assert out["failure"] is None and out["paplay"] == 0
    assert out["total"] is not None and SILENCE_FLOOR_DBFS < out["total"] < TONE_DBFS + 1
