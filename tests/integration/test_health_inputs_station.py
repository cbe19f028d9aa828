"""Health inputs on a running station (in-process, MockFactory, no broker): a change becomes an
event within one second, and heartbeats carry the inputs' state."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.app import build_station
from agent.config import load_config
from agent.outbox import Outbox
from agent.station import Station
from hal.clock import SystemClock
from tests.harness.clock import FakeClock
from tests.harness.trust import make_station

pytestmark = pytest.mark.integration


def test_mains_loss_is_an_event_within_a_second(tmp_path: Path) -> None:
    made = make_station(tmp_path / "s", FakeClock(datetime.now(UTC)))
    made.store.close()
    path = tmp_path / "s" / "station.toml"
    text = path.read_text() + "\n[inputs]\nmains = 5\namp_power = 6\n\n[reports]\nheartbeat_s = 1\n"
    config = load_config(text, {"LOA_HAL": "sim", "LOA_CLOCK_TRUST": "system"}, path.parent)
    built: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:  # the station's own thread owns its SQLite connections
        station, cleanup = build_station(config, SystemClock())
        built.update(station=station, cleanup=cleanup)
        ready.set()
        try:
            station.run()
        finally:
            cleanup()

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    assert ready.wait(10)
    station: Station = built["station"]
    reader = Outbox(config.paths.outbox)

    def reports(kind: str) -> list[dict[str, Any]]:
        return [json.loads(r.payload) for r in reader.pending(limit=10_000) if r.kind == kind]

    try:
        deadline = time.monotonic() + 10
        while not any(h["hw"]["inputs"] == {"mains": True, "amp_power": True}
                      for h in reports("heartbeat")):  # fmt: skip
            assert time.monotonic() < deadline, "no heartbeat with both inputs present"
            time.sleep(0.02)  # polling another thread's database, with a deadline
        from gpiozero import Device

        lost_at = time.monotonic()
        Device.pin_factory.pin(5).drive_low()  # type: ignore[union-attr]
        while not any(e.get("code") == "mains-lost" for e in reports("event")):
            assert time.monotonic() - lost_at < 1.0, "no mains-lost event within one second"
            time.sleep(0.01)
        event = next(e for e in reports("event") if e.get("code") == "mains-lost")
        assert event["event"] == "power" and event["value"] is False
    finally:
        station.stop("test over")
        runner.join(10)
        reader.close()
