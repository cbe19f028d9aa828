"""Health-input events on the agent's Station (simulated pins, no broker): one event per real
change, none for a value already said (the simulation sets its pins "present" at start), an
input already absent at boot reported at once, and an edge the debounce dropped corrected at
the next watch tick from ``states()``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpiozero import Device

from agent.app import build_station
from agent.config import load_config
from hal.inputs import InputChange
from tests.harness.clock import FakeClock
from tests.harness.trust import make_station


def input_events(station: Any) -> list[tuple[str, bool]]:
    events = []
    for record in station.outbox.pending(limit=1000):
        doc = json.loads(record.payload)
        if record.kind == "event" and "input" in doc:
            events.append((doc["input"], doc["value"]))
    return events


def test_input_events_are_said_once_per_change(tmp_path: Path, fake_clock: FakeClock) -> None:
    made = make_station(tmp_path / "s", fake_clock)
    made.store.close()
    path = tmp_path / "s" / "station.toml"
    text = path.read_text() + "\n[inputs]\nmains = 5\namp_power = 6\n"
    config = load_config(text, {"LOA_HAL": "sim"}, path.parent)
    station, cleanup = build_station(config, fake_clock)
    try:
        station._reconcile_inputs()  # as at start: both present, as the simulation set them
        assert input_events(station) == []
        Device.pin_factory.pin(6).drive_low()  # amp power gone, its edge dropped
        station._reconcile_inputs()  # the watch tick reads states()
        station._on_input(InputChange("amp_power", False, 0.0))  # the late edge: said already
        assert input_events(station) == [("amp_power", False)]
        Device.pin_factory.pin(6).drive_high()
        station._on_input(InputChange("amp_power", True, 0.0))
        station._reconcile_inputs()
        assert input_events(station) == [("amp_power", False), ("amp_power", True)]
    finally:
        cleanup()
