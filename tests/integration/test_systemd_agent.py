"""The real ``loa-agent run`` as systemd runs it (``Type=notify``, ``WatchdogSec=``), heard on a
notification socket the test binds: READY=1 after start-up, WATCHDOG=1 from the main loop while
it makes progress and not once it is stuck (``LOA_FAULT=stall-main-loop``), STOPPING=1 and exit
0 on SIGTERM; and the station under the kernel's W^X rule (what ``MemoryDenyWriteExecute=``
enforces in the unit), so that setting is known not to break it."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.broker import MosquittoBroker
from tests.harness.notify import NotifyListener
from tests.harness.station_proc import BIN, StationProcess, provision_station
from tests.harness.trust import STATION

pytestmark = pytest.mark.integration
WAIT_S = 30.0
WATCHDOG_USEC = 1_000_000  # pings every 0.5 s
# Execs the agent after switching on the kernel's "memory-deny-write-execute" for the process
# and everything it starts (prctl PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN; Linux 6.3+).
MDWE_WRAPPER = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "if libc.prctl(65, 1, 0, 0, 0) != 0:\n"
    "    sys.exit(f'prctl(PR_SET_MDWE): errno {ctypes.get_errno()}')\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def wait_until(done: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    listening = NotifyListener()
    yield listening
    listening.close()


@pytest.fixture
def station(tmp_path: Path, mqtt_broker: MosquittoBroker) -> Iterator[StationProcess]:
    proc = provision_station(tmp_path / "station", mqtt_broker, STATION)
    yield proc
    if proc.process is not None and proc.process.poll() is None:
        proc.process.kill()
        proc.process.wait(10)


def start_supervised(
    proc: StationProcess, listener: NotifyListener, *, fault: str = "", mdwe: bool = False
) -> None:
    """Start the agent as StationProcess does, with systemd's variables (and ``fault``)."""
    env = dict(
        os.environ,
        HOME=str(proc.directory / "home"),
        LOA_HAL="sim",
        LOA_CLOCK_TRUST="system",
        PYTHONUNBUFFERED="1",
        NOTIFY_SOCKET=listener.address,
        WATCHDOG_USEC=str(WATCHDOG_USEC),
    )
    env.pop("LOA_FAULT", None)
    if fault:
        env["LOA_FAULT"] = fault
    command = [str(BIN / "loa-agent"), "run", "--config", str(proc.directory / "station.toml")]
    if mdwe:
        command = [sys.executable, "-c", MDWE_WRAPPER, *command]
    with proc.log.open("ab") as log:
        proc.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def ready_at(listener: NotifyListener, proc: StationProcess) -> float:
    def ready() -> bool:
        assert proc.process is not None
        if proc.process.poll() is not None:
            raise AssertionError(f"the agent exited: {proc.log_text()[-3000:]}")
        return bool(listener.lines("READY"))

    wait_until(ready, "READY=1")
    return listener.lines("READY")[0][0]


def test_ready_then_watchdog_pings_then_stopping_on_sigterm(
    station: StationProcess, listener: NotifyListener
) -> None:
    start_supervised(station, listener)
    ready = ready_at(listener, station)
    assert listener.lines("STATUS", after=ready - 1)[0][1] == "STATUS=idle"
    assert all(stamp >= ready for stamp, _ in listener.lines("WATCHDOG"))  # none before READY
    wait_until(lambda: len(listener.lines("WATCHDOG", after=ready)) >= 4, "four WATCHDOG=1")
    pings = [stamp for stamp, _ in listener.lines("WATCHDOG", after=ready)]
    # Periodic, not a burst at start: nominally 0.5 s apart (half the 1 s systemd was given);
    # the bound leaves a loaded test machine room, the figure itself is not the point here.
    assert max(b - a for a, b in itertools.pairwise(pings)) < 2.0
    assert not listener.lines("STOPPING")

    assert station.stop() == 0, station.log_text()[-3000:]
    assert listener.lines("STOPPING"), "no STOPPING=1 before the agent exited"
    pins = station.pins()  # the agent still left every relay off
    assert all(states[-1] is False for states in pins.values()), pins


def test_a_stuck_main_loop_starves_the_watchdog(
    station: StationProcess, listener: NotifyListener
) -> None:
    start_supervised(station, listener, fault="stall-main-loop")
    ready = ready_at(listener, station)
    wait_until(lambda: "fault stall-main-loop" in station.log_text(), "the runtime thread stuck")
    stuck = time.monotonic()
    # Three watchdog periods with the process alive and not one ping: systemd would kill it.
    observe_until = stuck + 3 * WATCHDOG_USEC / 1e6
    while time.monotonic() < observe_until:
        assert station.process is not None and station.process.poll() is None
        time.sleep(0.1)
    assert listener.lines("WATCHDOG", after=ready) == []
    assert station.process is not None
    station.process.send_signal(signal.SIGKILL)  # what systemd's WatchdogSignal= does (SIGABRT)
    assert station.process.wait(10) == -signal.SIGKILL


def _mdwe_available() -> bool:
    probe = subprocess.run([sys.executable, "-c", MDWE_WRAPPER, "/bin/true"], check=False)
    return probe.returncode == 0


def test_the_station_runs_with_no_writable_executable_memory(
    station: StationProcess, listener: NotifyListener, tmp_path: Path
) -> None:
    """MemoryDenyWriteExecute=yes in the unit: CPython, ctypes (clock), cryptography, gpiozero,
    PortAudio/ALSA and ffmpeg must all live without W+X memory. The kernel's own W^X switch is
    the same rule (no mapping both writable and executable, none made executable later)."""
    if not _mdwe_available():
        pytest.skip("the kernel has no prctl(PR_SET_MDWE) (Linux 6.3+): W^X cannot be enforced")
    # The rule is in force: a W+X mapping is refused under the wrapper.
    refused = subprocess.run(
        [sys.executable, "-c", MDWE_WRAPPER, sys.executable, "-c",
         "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "PermissionError" in refused.stderr
    # ffmpeg decodes an MP3 (as the player's Decoder does) under it.
    mp3 = tmp_path / "tone.mp3"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
         "sine=frequency=440:duration=1:sample_rate=48000", "-ac", "2", str(mp3)],
        check=True, timeout=60,
    )  # fmt: skip
    decoded = subprocess.run(
        [sys.executable, "-c", MDWE_WRAPPER, "/usr/bin/env", "ffmpeg", "-nostdin", "-loglevel",
         "error", "-i", str(mp3), "-f", "s16le", "-ac", "2", "-ar", "48000", "-"],
        capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    assert decoded.returncode == 0, decoded.stderr[-2000:]
    assert len(decoded.stdout) > 48000 * 4 * 0.9
    # The whole agent: start-up (PortAudio opens the ALSA device), the main loop, shutdown.
    start_supervised(station, listener, mdwe=True)
    ready = ready_at(listener, station)
    wait_until(lambda: len(listener.lines("WATCHDOG", after=ready)) >= 2, "two WATCHDOG=1")
    assert station.stop() == 0, station.log_text()[-3000:]
    assert "PermissionError" not in station.log_text()
