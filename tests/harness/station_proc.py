"""A provisioned station running as the real ``loa-agent run`` process against the test broker.

Audio goes through PyAudio into an ALSA ``type file`` sink (set up in the process's own
``$HOME/.asoundrc``, which alsa-lib reads at start-up); GPIO is gpiozero's MockFactory
(``LOA_HAL=sim``), whose pin history the agent leaves in ``state/sim-pins.json`` when it stops.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.core.targets import StationId
from provisioning.init import InitRequest, provision
from tests.harness.broker import MosquittoBroker
from tests.harness.trust import VECTORS

BIN = Path(sys.executable).parent
AMP_PIN, NORTH_PIN, SOUTH_PIN = 17, 27, 22


@dataclass
class StationProcess:
    directory: Path
    station: StationId
    process: subprocess.Popen[bytes] | None = None

    @property
    def capture(self) -> Path:
        return self.directory / "home" / "speaker.raw"

    @property
    def log(self) -> Path:
        return self.directory / "agent.log"

    def start(self) -> None:
        env = dict(
            os.environ,
            HOME=str(self.directory / "home"),
            LOA_HAL="sim",
            LOA_CLOCK_TRUST="system",
            PYTHONUNBUFFERED="1",
        )
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "loa-agent"), "run", "--config", str(self.directory / "station.toml")],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def pins(self) -> dict[int, list[bool]]:
        history = json.loads((self.directory / "state" / "sim-pins.json").read_text())
        return {int(pin): [bool(state) for _, state in states] for pin, states in history.items()}

    def switching_order(self) -> list[tuple[int, bool]]:
        """Every relay transition after the initial state, in time order: (pin, state)."""
        history = json.loads((self.directory / "state" / "sim-pins.json").read_text())
        moves = [
            (stamp, int(pin), bool(state))
            for pin, states in history.items()
            for stamp, state in states[1:]
        ]
        return [(pin, state) for _, pin, state in sorted(moves)]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def provision_station(
    directory: Path,
    broker: MosquittoBroker,
    station_path: str,
    *,
    reports: str = "",
    broker_url: str | None = None,
    session_expiry_s: int = 0,
) -> StationProcess:
    """A provisioned station directory for ``StationProcess``; ``reports`` adds lines to its
    ``[reports]`` section (heartbeat every 2 s unless it sets ``heartbeat_s``); ``broker_url``
    points the station somewhere else than ``broker`` itself (a proxy in front of it), while
    its certificates still come from ``broker``. ``session_expiry_s`` is 0 here (the product's
    default keeps a session 10 minutes): test stations share client ids on a shared broker, and
    a session left behind would hand the next test's station this one's subscriptions and
    queue."""
    station = StationId.parse(station_path)
    from datetime import UTC, datetime

    result = provision(
        InitRequest(
            station,
            (VECTORS / "keyring-v1.json").read_bytes(),
            directory,
            brokers=(broker_url or f"mqtts://{broker.host}:{broker.port}",),
            clock_trust="system",
        ),
        datetime.now(UTC),
    )
    keys = directory / "keys"
    (keys / "station.crt").write_bytes(broker.sign_csr((keys / "station.csr").read_bytes()))
    (keys / "ca.crt").write_bytes(broker.ca_path.read_bytes())
    config = result.config_path.read_text()
    config = config.replace(
        "[audio]\n", '[audio]\noutput = "device"\nwarmup_s = 0.2\nhold_s = 0.2\n'
    )
    config = config.replace("[gpio]\n", f"[gpio]\namp_pin = {AMP_PIN}\n")
    config = config.replace("[broker]\n", f"[broker]\nsession_expiry_s = {session_expiry_s}\n")
    config = config.replace(
        "[gpio.zones]\n", f"[gpio.zones]\nnorth = {NORTH_PIN}\nsouth = {SOUTH_PIN}\n"
    )
    if "heartbeat_s" not in reports:
        reports = "heartbeat_s = 2\n" + reports
    config += "\n[media]\nallow_http = true\ntimeout_s = 5\n\n[reports]\n" + reports
    result.config_path.write_text(config)
    home = directory / "home"
    home.mkdir()
    (home / ".asoundrc").write_text(
        'pcm.!default {\n type file\n slave.pcm "null"\n'
        f' file "{home / "speaker.raw"}"\n format "raw"\n}}\n'
    )
    return StationProcess(directory, station)
