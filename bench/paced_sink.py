"""A paced sound card for benchmarks, and a way to see when each sample reached it.

``PulseNullSink`` runs a private PulseAudio daemon (its own runtime directory, socket and
``$HOME``; nothing of the machine's own sound set-up is touched) with one ``module-null-sink``.
A null sink consumes audio at 48 kHz on the system's monotonic clock, so a writer is paced as by
a sound card. PortAudio reaches it the way it reaches a sound card on a station: through ALSA's
``default`` device, which a private ``~/.asoundrc`` points at the ALSA ``pulse`` plugin
(``libasound2-plugins``). The code under test is unchanged: ``PyAudioSink("default")``.

``MonitorCapture`` records the sink's monitor source (everything the sink consumed) with
``parec`` in a separate process (``bench.capture``) that stamps every read with
``time.monotonic()``. Sample ``f`` of the capture was consumed by the sink at ``A + f/48000``,
where ``A`` is the lower envelope of ``t_read - frames_so_far/48000`` over the reads around it:
a read can return late (scheduling) but never before the sink produced the samples, so the
smallest value is the one with no delay. PulseAudio's timer and ``time.monotonic()`` are the
same kernel clock, so there is no drift to fit.

``calibrate`` measures the method's own error with a loopback: ``pacat`` (1 ms of buffer) is
handed a click at a known instant and the capture says when the click reached the sink.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.capture import STAMP
from bench.common import ROOT, percentile, sleep_until

RATE = 48000
FRAME_BYTES = 4  # s16le stereo
# "Loud": at least -12 dBFS. The test tones are louder, the preemption bench's "old programme"
# is quieter, so the first loud sample of a play is unambiguous.
LOUD = 8192
SINK = "loa_bench"
# pacat's buffer in the loopback: at 1-2 ms it runs dry inside a 20 ms click now and then.
PACAT_LATENCY_MS = 5
REQUIRED = ("pulseaudio", "parec", "pacat", "pactl")


class BenchSetupError(RuntimeError):
    """The paced sink could not be set up; the message says what is missing."""


class Mismatch(BenchSetupError):
    """What reached the sink is not what was written (a gap, or another signal)."""


def check_tools() -> None:
    missing = [tool for tool in (*REQUIRED, "ffmpeg") if shutil.which(tool) is None]
    if missing:
        raise BenchSetupError(
            f"missing {', '.join(missing)}: `make sysdeps` installs pulseaudio, "
            "pulseaudio-utils, libasound2-plugins and ffmpeg"
        )


class PulseNullSink:
    """A private PulseAudio daemon with one null sink named ``loa_bench``.

    As root, PulseAudio warns that it is "not intended to be run as root" but runs: the clean
    way is a per-user-style instance whose runtime directory, state directory and socket all live
    in a temporary directory (``XDG_RUNTIME_DIR``, ``PULSE_RUNTIME_PATH``, ``HOME``), started
    with ``-n`` (no default script: no hardware detection, no suspend-on-idle, no D-Bus modules)
    and ``-F`` with only the two modules needed. The native socket accepts anonymous clients,
    so no cookie is involved.
    """

    def __init__(self, root: Path | None = None) -> None:
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="loa-bench-pulse-"))
        self.home = self.root / "home"
        self.runtime = self.root / "run"
        self.socket = self.runtime / "native"
        self.log = self.root / "pulseaudio.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._saved_env: dict[str, str | None] = {}

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach this daemon (PulseAudio tools and PortAudio alike)."""
        return {
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.runtime),
            "PULSE_RUNTIME_PATH": str(self.runtime),
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_CLIENTCONFIG": str(self.home / ".config" / "pulse" / "client.conf"),
        }

    def start(self) -> None:
        check_tools()
        conf = self.home / ".config" / "pulse"
        conf.mkdir(parents=True, exist_ok=True)
        self.runtime.mkdir(parents=True, exist_ok=True)
        self.runtime.chmod(0o700)
        (conf / "daemon.conf").write_text(
            "default-sample-format = s16le\ndefault-sample-rate = 48000\n"
            "default-sample-channels = 2\navoid-resampling = yes\nflat-volumes = no\n"
            "exit-idle-time = -1\n"
        )
        (conf / "client.conf").write_text("autospawn = no\n")
        script = self.root / "bench.pa"
        script.write_text(
            f"load-module module-null-sink sink_name={SINK} rate={RATE} format=s16le "
            f"channels=2 sink_properties=device.description=loa-bench\n"
            f"load-module module-native-protocol-unix socket={self.socket} auth-anonymous=1\n"
            f"set-default-sink {SINK}\n"
        )
        server = f"unix:{self.socket}"
        (self.home / ".asoundrc").write_text(
            f'pcm.!default {{\n type pulse\n server "{server}"\n}}\n'
            f'ctl.!default {{\n type pulse\n server "{server}"\n}}\n'
        )
        env = dict(os.environ, **self.env)
        self._proc = subprocess.Popen(
            ["pulseaudio", "--daemonize=no", "-n", "-F", str(script), "--exit-idle-time=-1",
             "--use-pid-file=no", "--system=no", f"--log-target=file:{self.log}",
             "--log-level=info"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BenchSetupError(f"pulseaudio exited: {self._log_tail()}")
            if self.socket.exists() and self.pactl("info").returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise BenchSetupError(f"pulseaudio did not answer within 15 s: {self._log_tail()}")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-2000:]
        return "(no log)"

    def pactl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["pactl", *args], env=dict(os.environ, **self.env), capture_output=True, text=True,
            check=False, timeout=10,
        )  # fmt: skip

    def sink_latency_us(self) -> tuple[int, int] | None:
        """(latency, configured latency) of the null sink in microseconds, as ``pactl`` says:
        the configured latency is how far ahead of its clock the null sink renders."""
        text = self.pactl("list", "sinks").stdout
        found = re.search(r"Latency:\s*(\d+)\s*usec,\s*configured\s*(\d+)\s*usec", text)
        return (int(found.group(1)), int(found.group(2))) if found else None

    def use_in_this_process(self) -> None:
        """Point this process's PortAudio (alsa-lib reads ``$HOME/.asoundrc`` when PortAudio
        initialises) and PulseAudio clients at the daemon; undone by ``stop``."""
        for key, value in self.env.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def died(self) -> str | None:
        """None while the daemon runs; otherwise how it ended and its log's tail."""
        if self._proc is None or self._proc.poll() is None:
            return None
        return f"pulseaudio exited ({self._proc.returncode}): {self._log_tail()}"

    def stop(self) -> None:
        if (death := self.died()) is not None:
            print(f"bench: {death}", file=sys.stderr)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PulseNullSink:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class MonitorCapture:
    """Everything the null sink consumed, with the instant each sample was consumed."""

    sink: PulseNullSink
    latency_ms: int = 5
    window_s: float = 0.5  # reads either side of a sample that its anchor is taken from
    _proc: subprocess.Popen[bytes] | None = None
    _times: array[float] = field(default_factory=lambda: array("d"))
    _frames: array[int] = field(default_factory=lambda: array("q"))
    _stamps_read: int = 0

    @property
    def raw_path(self) -> Path:
        return self.sink.root / "monitor.raw"

    @property
    def stamps_path(self) -> Path:
        return self.sink.root / "monitor.stamps"

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.capture", f"{SINK}.monitor", str(self.latency_ms),
             str(self.raw_path), str(self.stamps_path)],
            env=dict(os.environ, **self.sink.env, PYTHONPATH=str(ROOT)),
            cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self._refresh() or self._times[-1] - self._times[0] < 0.5:
            if self._proc.poll() is not None:
                raise BenchSetupError("the capture process (parec) exited")
            if time.monotonic() > deadline:
                raise BenchSetupError("the capture (parec) delivered nothing within 10 s")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> MonitorCapture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # timestamps --------------------------------------------------------------------------------

    def _refresh(self) -> int:
        """Load the stamps written since the last call; returns how many reads are known."""
        size = STAMP.size
        try:
            with self.stamps_path.open("rb") as stamps:
                stamps.seek(self._stamps_read * size)
                data = stamps.read()
        except FileNotFoundError:
            return 0
        whole = len(data) // size * size
        for at, total in struct.iter_unpack(STAMP.format, data[:whole]):
            self._times.append(at)
            self._frames.append(total // FRAME_BYTES)
        self._stamps_read += whole // size
        return len(self._times)

    def wait_covered(self, instant: float, timeout_s: float = 10.0) -> None:
        """Wait until the capture holds everything the sink consumed up to ``instant``."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._refresh()
            if self._times and self._times[-1] >= instant + 0.02:
                return
            if time.monotonic() > deadline:
                why = self.sink.died() or "pulseaudio still runs"
                raise BenchSetupError(f"the capture stopped delivering; {why}")
            time.sleep(0.01)

    def _anchor(self, index: int) -> float:
        """Lower envelope of (read instant - frames so far / rate) around read ``index``."""
        t0 = self._times[index]
        lo = bisect.bisect_left(self._times, t0 - self.window_s)
        hi = bisect.bisect_right(self._times, t0 + self.window_s)
        return min(self._times[j] - self._frames[j] / RATE for j in range(lo, hi))

    def time_of(self, frame: int) -> float:
        """Monotonic instant at which captured frame ``frame`` was consumed by the sink."""
        self._refresh()
        index = min(bisect.bisect_right(self._frames, frame), len(self._frames) - 1)
        return self._anchor(index) + frame / RATE

    def frame_at(self, instant: float) -> int:
        """The captured frame the sink consumed at ``instant`` (clamped to what exists)."""
        self._refresh()
        index = min(bisect.bisect_left(self._times, instant), len(self._times) - 1)
        frame = round((instant - self._anchor(index)) * RATE)
        return max(0, min(frame, self._frames[-1]))

    def read_delay_ms(self) -> dict[str, float]:
        """How late reads returned relative to the envelope (the capture's own jitter), and how
        far the envelope moved from the first to the last second (clock drift or lost data)."""
        self._refresh()
        n = len(self._times)
        step = max(1, n // 2000)
        delays = [
            (self._times[i] - self._frames[i] / RATE - self._anchor(i)) * 1000
            for i in range(0, n, step)
        ]
        drift = (self._anchor(n - 1) - self._anchor(0)) * 1000
        return {
            "read_delay_p50_ms": round(percentile(delays, 50), 3),
            "read_delay_p99_ms": round(percentile(delays, 99), 3),
            "envelope_drift_ms": round(drift, 3),
            "reads": n,
        }

    # samples -----------------------------------------------------------------------------------

    def _samples(self, start: int, end: int) -> array[int]:
        with self.raw_path.open("rb") as raw:
            raw.seek(start * FRAME_BYTES)
            data = raw.read(max(0, end - start) * FRAME_BYTES)
        samples = array("h", data[: len(data) // FRAME_BYTES * FRAME_BYTES])
        if sys.byteorder == "big":
            samples.byteswap()
        return samples

    def first_above(self, threshold: int, start: int, end: int) -> int | None:
        """The first frame in [start, end) with a sample at least ``threshold`` in magnitude."""
        samples = self._samples(start, end)
        return _first_loud(samples, threshold, start)

    def last_above(self, threshold: int, start: int, end: int) -> int | None:
        """The last frame in [start, end) with a sample at least ``threshold`` in magnitude."""
        samples = self._samples(start, end)
        block = 960
        for base in range((len(samples) - 1) // block * block, -1, -block):
            part = samples[base : base + block]
            if part and (max(part) >= threshold or min(part) <= -threshold):
                for i in range(len(part) - 1, -1, -1):
                    if abs(part[i]) >= threshold:
                        return start + (base + i) // 2
        return None

    def locate(self, reference: Reference, start: int, end: int) -> Located:
        """Where ``reference`` (the PCM the player was given) begins on the sink's timeline.

        The first loud captured frame is matched against the reference (a chirp: it matches in
        one place only) to find which reference frame it is; the reference's frame 0 is then
        that many frames earlier. A new stream's first frames can be missing at the monitor
        (PulseAudio, seen with ``pacat`` too): this counts them instead of mistaking the first
        frame seen for the first frame played."""
        found = self.first_above(LOUD, start, end)
        if found is None:
            raise BenchSetupError("the reference never reached the sink")
        window = 256
        captured = self._samples(found, found + window)[0::2]
        if len(captured) < window:
            raise BenchSetupError("the capture ends inside the reference")
        index = reference.match(captured)
        return Located(
            instant=self.time_of(found) - index / RATE,
            head_lost_frames=index - reference.loud_at,
            first_loud_frame=found,
        )


@dataclass(frozen=True)
class Located:
    instant: float  # when the reference's frame 0 reached the sink (monotonic seconds)
    head_lost_frames: int  # reference frames before the first loud one missing at the monitor
    first_loud_frame: int  # capture frame of the first loud sample


@dataclass(frozen=True)
class Reference:
    """The left channel of what the player was given, and where it first gets loud."""

    left: array[int]
    loud_at: int
    max_head_loss: int = 960  # frames: 20 ms

    @classmethod
    def from_pcm(cls, pcm: bytes) -> Reference:
        samples = array("h", pcm[: len(pcm) // FRAME_BYTES * FRAME_BYTES])
        if sys.byteorder == "big":
            samples.byteswap()
        loud_at = _first_loud(samples, LOUD)
        if loud_at is None:
            raise ValueError("the reference never gets loud")
        return cls(samples[0::2], loud_at)

    def match(self, captured: array[int]) -> int:
        """The reference frame the captured window starts at (searched from ``loud_at`` up to
        ``max_head_loss`` frames on): coarse pass on every 4th sample, then exact."""
        n = len(captured)
        last = min(self.loud_at + self.max_head_loss, len(self.left) - n)
        candidates = range(self.loud_at, last + 1)

        def cost(offset: int, step: int) -> int:
            ref = self.left
            return sum((captured[k] - ref[offset + k]) ** 2 for k in range(0, n, step))

        coarse = sorted(candidates, key=lambda o: cost(o, 4))[:4]
        best = min(coarse, key=lambda o: cost(o, 1))
        energy = sum(v * v for v in captured) or 1
        if cost(best, 1) > 0.01 * energy:  # over -20 dB of mismatch: not the same signal
            raise Mismatch("the captured audio does not match what was written")
        return best


def chirp(seconds: float, f0: float, f1: float, amplitude: int) -> bytes:
    """A linear sweep, stereo s16le: unlike a steady tone it lines up in one place only."""
    frames = round(seconds * RATE)
    rate = (f1 - f0) / (2 * seconds)
    samples = array("h")
    for n in range(frames):
        t = n / RATE
        value = round(amplitude * math.sin(2 * math.pi * (f0 * t + rate * t * t)))
        samples.extend((value, value))
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def _first_loud(samples: array[int], threshold: int, first_frame: int = 0) -> int | None:
    block = 960  # samples: 10 ms of stereo
    for base in range(0, len(samples), block):
        part = samples[base : base + block]
        if max(part) >= threshold or min(part) <= -threshold:
            for i, value in enumerate(part):
                if abs(value) >= threshold:
                    return first_frame + (base + i) // 2
    return None


def calibrate(sink: PulseNullSink, capture: MonitorCapture, n: int = 30) -> dict[str, Any]:
    """Loopback: hand ``pacat`` (5 ms of buffer, already connected and waiting) a click at a
    known instant and see when the capture says it reached the sink. The delay includes pacat's
    wake-up and PulseAudio's path into the sink (at most one render period of the null sink)
    plus the capture's own bias: a bound on the method's error, not just its jitter."""
    proc = subprocess.Popen(
        ["pacat", "--playback", f"--device={SINK}", "--raw", "--format=s16le",
         f"--rate={RATE}", "--channels=2", f"--latency-msec={PACAT_LATENCY_MS}"],
        stdin=subprocess.PIPE, env=dict(os.environ, **sink.env),
    )  # fmt: skip
    assert proc.stdin is not None
    payload = chirp(0.02, 500, 3000, 20000)  # 20 ms, -4 dBFS
    reference = Reference.from_pcm(payload)
    time.sleep(0.7)  # connected, stream created, waiting for its first data
    instants = []
    try:
        for _ in range(n):
            at = time.monotonic() + 0.15 + random.uniform(0.0, 0.05)
            instants.append(sleep_until(at))
            os.write(proc.stdin.fileno(), payload)
        capture.wait_covered(time.monotonic() + 0.3)
    finally:
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    delays, lost, unusable = [], [], 0
    for instant in instants:
        try:
            located = capture.locate(
                reference, capture.frame_at(instant - 0.05), capture.frame_at(instant + 0.12)
            )
        except Mismatch:
            unusable += 1  # pacat ran dry inside the click: a gap, not the click as written
            continue
        delays.append((located.instant - instant) * 1000)
        lost.append(located.head_lost_frames / RATE * 1000)
    if len(delays) < n // 2:
        raise BenchSetupError(f"loopback calibration: {unusable} of {n} clicks arrived broken")
    return {
        "n": len(delays),
        "unusable": unusable,
        "pacat_latency_ms": PACAT_LATENCY_MS,
        "head_lost_max_ms": round(max(lost), 2),
        "p50_ms": round(percentile(delays, 50), 2),
        "p99_ms": round(percentile(delays, 99), 2),
        "min_ms": round(min(delays), 2),
        "max_ms": round(max(delays), 2),
    }


class TimedSink:
    """A thin shim around the real sink that notes when the player first wrote to it (to split
    "player start-up" from "sink output latency"); everything else is passed through."""

    def __init__(
        self,
        inner: Any,
        on_first_write: Callable[[float], None],
        on_reported_latency: Callable[[float], None] | None = None,
    ) -> None:
        self._inner = inner
        self._on_first_write = on_first_write
        self._on_reported_latency = on_reported_latency
        self._written = False

    def open(self) -> None:
        self._written = False
        self._inner.open()
        # What PortAudio says the output latency is (PyAudio's Stream.get_output_latency()),
        # to compare with the measured one; PyAudioSink keeps its stream private.
        stream: Any = getattr(self._inner, "_stream", None)
        reported = getattr(stream, "get_output_latency", None)
        if self._on_reported_latency is not None and reported is not None:
            self._on_reported_latency(float(reported()))

    def write(self, pcm: bytes) -> None:
        if not self._written:
            self._written = True
            self._on_first_write(time.monotonic())
        self._inner.write(pcm)

    def close(self) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> Any:  # e.g. the player's getattr(sink, "latency_s")
        return getattr(self._inner, name)
