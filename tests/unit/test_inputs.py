"""HealthInputs on gpiozero's MockFactory: edges reach ``deliver`` as frozen messages, on both
polarities, and the pins are claimed and released cleanly."""

from __future__ import annotations

import dataclasses
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hal.inputs import HealthInputs, InputChange, InputError
from hal.relays import GpioRelays

ROOT = Path(__file__).resolve().parents[2]
MAINS, AMP_POWER, LINE = 5, 6, 13
PINS = {"mains": MAINS, "amp_power": AMP_POWER, "speaker_line": LINE}


class Recorder:
    """A deliver callback that only records, and lets the test wait for the n-th change."""

    def __init__(self) -> None:
        self.changes: list[InputChange] = []
        self.threads: list[str] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)

    def __call__(self, change: InputChange) -> None:
        with self._arrived:
            self.changes.append(change)
            self.threads.append(threading.current_thread().name)
            self._arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 1.0) -> list[InputChange]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.changes) >= count, timeout):
                pytest.fail(f"{count} changes expected within {timeout} s, got {self.changes}")
            return list(self.changes)


def test_a_rising_edge_is_delivered_within_a_second(mock_pins: Any) -> None:
    recorder = Recorder()
    inputs = HealthInputs(PINS, recorder)
    before = time.monotonic()
    mock_pins.pin(MAINS).drive_high()
    [change] = recorder.wait_for(1)
    after = time.monotonic()
    assert (change.name, change.value) == ("mains", True)
    assert before <= change.monotonic_ts <= after
    inputs.close()


def test_changes_are_frozen_messages(mock_pins: Any) -> None:
    recorder = Recorder()
    inputs = HealthInputs(PINS, recorder)
    mock_pins.pin(LINE).drive_high()
    [change] = recorder.wait_for(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        change.value = False  # type: ignore[misc]
    inputs.close()


def test_falling_edge_and_each_input_under_its_own_name(mock_pins: Any) -> None:
    recorder = Recorder()
    inputs = HealthInputs(PINS, recorder, monotonic=lambda: 42.0)
    mock_pins.pin(AMP_POWER).drive_high()
    mock_pins.pin(MAINS).drive_high()
    mock_pins.pin(AMP_POWER).drive_low()
    assert recorder.wait_for(3) == [
        InputChange("amp_power", True, 42.0),
        InputChange("mains", True, 42.0),
        InputChange("amp_power", False, 42.0),
    ]
    inputs.close()


def test_deliver_can_be_a_queue_put(mock_pins: Any) -> None:
    # What the station does: the edge callback only enqueues, the station thread decides.
    inbox: queue.Queue[InputChange] = queue.Queue()
    inputs = HealthInputs(PINS, inbox.put)
    mock_pins.pin(MAINS).drive_high()
    change = inbox.get(timeout=1.0)
    assert (change.name, change.value) == ("mains", True)
    inputs.close()


def test_start_values_are_read_not_delivered(mock_pins: Any) -> None:
    assert mock_pins.pin(MAINS).state is False
    recorder = Recorder()
    # Claiming an active-low input turns its pull-up on: the pin goes high during start-up,
    # which is the start value, not a change.
    inputs = HealthInputs(PINS, recorder, active_high={"mains": False})
    assert mock_pins.pin(MAINS).state is True
    assert inputs.states() == {"mains": False, "amp_power": False, "speaker_line": False}
    assert recorder.changes == []
    inputs.close()


def test_same_level_twice_is_one_change(mock_pins: Any) -> None:
    recorder = Recorder()
    inputs = HealthInputs(PINS, recorder)
    mock_pins.pin(MAINS).drive_high()
    mock_pins.pin(MAINS).drive_high()
    recorder.wait_for(1)
    assert len(recorder.changes) == 1
    inputs.close()


def test_active_low_inputs_are_pulled_up_and_inverted(mock_pins: Any) -> None:
    recorder = Recorder()
    inputs = HealthInputs(PINS, recorder, active_high=False)
    # The pull-up holds a disconnected sensor at "absent", never at "present".
    assert mock_pins.pin(MAINS).state is True
    assert inputs.states() == {"mains": False, "amp_power": False, "speaker_line": False}
    mock_pins.pin(MAINS).drive_low()  # the opto-coupler conducts: mains present
    assert recorder.wait_for(1) == [InputChange("mains", True, recorder.changes[0].monotonic_ts)]
    assert inputs.states()["mains"] is True
    mock_pins.pin(MAINS).drive_high()
    assert recorder.wait_for(2)[1].value is False
    inputs.close()


def test_polarity_per_input(mock_pins: Any) -> None:
    recorder = Recorder()
    inputs = HealthInputs(PINS, recorder, active_high={"mains": False})
    assert mock_pins.pin(MAINS).pull == "up"
    assert mock_pins.pin(AMP_POWER).pull == "down"  # names left out are active high
    mock_pins.pin(MAINS).drive_low()
    mock_pins.pin(AMP_POWER).drive_high()
    assert [(c.name, c.value) for c in recorder.wait_for(2)] == [
        ("mains", True),
        ("amp_power", True),
    ]
    inputs.close()


def test_polarity_for_an_unknown_input_is_refused(mock_pins: Any) -> None:
    with pytest.raises(ValueError, match="unknown inputs: mians"):
        HealthInputs(PINS, Recorder(), active_high={"mians": False})


def test_bounce_time_reaches_the_pin_driver(mock_pins: Any) -> None:
    inputs = HealthInputs({"mains": MAINS, "amp_power": AMP_POWER}, Recorder(), bounce_s=0.05)
    assert mock_pins.pin(MAINS).bounce == 0.05
    inputs.close()
    for off in (None, 0):
        inputs = HealthInputs({"mains": MAINS}, Recorder(), bounce_s=off)
        assert mock_pins.pin(MAINS).bounce is None
        inputs.close()


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf")])
def test_bad_bounce_time_is_refused(mock_pins: Any, bad: float) -> None:
    with pytest.raises(ValueError, match="bounce_s"):
        HealthInputs(PINS, Recorder(), bounce_s=bad)


def test_every_edge_of_a_burst_arrives_in_order_and_the_last_matches_states(
    mock_pins: Any,
) -> None:
    # MockFactory does not debounce, so a contact bounce reaches the station as a burst: the
    # station must act on the latest value (and states() agrees with it).
    recorder = Recorder()
    inputs = HealthInputs(PINS, recorder)
    pin = mock_pins.pin(MAINS)
    for _ in range(3):
        pin.drive_high()
        pin.drive_low()
    pin.drive_high()
    changes = recorder.wait_for(7)
    assert [c.value for c in changes] == [True, False, True, False, True, False, True]
    assert [c.monotonic_ts for c in changes] == sorted(c.monotonic_ts for c in changes)
    assert inputs.states()["mains"] is changes[-1].value
    inputs.close()


def test_states_follow_the_pins(mock_pins: Any) -> None:
    inputs = HealthInputs(PINS, Recorder())
    mock_pins.pin(LINE).drive_high()
    mock_pins.pin(AMP_POWER).drive_high()
    assert inputs.states() == {"mains": False, "amp_power": True, "speaker_line": True}
    assert inputs.names == ("mains", "amp_power", "speaker_line")
    inputs.close()


def test_close_stops_delivery_releases_pins_and_is_idempotent(mock_pins: Any) -> None:
    recorder = Recorder()
    inputs = HealthInputs(PINS, recorder)
    inputs.close()
    inputs.close()
    mock_pins.pin(MAINS).drive_high()
    assert recorder.changes == []
    with pytest.raises(InputError, match="cannot read inputs"):  # gpiozero's error, translated
        inputs.states()
    again = HealthInputs(PINS, recorder)  # the pins were released
    again.close()


def test_an_invalid_pin_is_an_input_error_and_releases_what_was_claimed(mock_pins: Any) -> None:
    with pytest.raises(InputError, match="cannot claim input pins: 99"):
        HealthInputs({"mains": MAINS, "amp_power": 99}, Recorder())
    inputs = HealthInputs({"mains": MAINS}, Recorder())  # MAINS was released
    inputs.close()


def test_a_pin_held_by_a_relay_is_an_input_error(mock_pins: Any) -> None:
    relays = GpioRelays(None, {"north": MAINS})
    with pytest.raises(InputError, match="cannot claim"):
        HealthInputs(PINS, Recorder())
    relays.close()


def test_a_fixed_pull_up_pin_cannot_be_active_high(mock_pins: Any) -> None:
    with pytest.raises(InputError, match="fixed pull"):
        HealthInputs({"mains": 2}, Recorder())
    HealthInputs({"mains": 2}, Recorder(), active_high=False).close()


def test_duplicate_pins_are_a_configuration_error_and_claim_nothing(mock_pins: Any) -> None:
    with pytest.raises(ValueError, match="'mains' and 'amp_power' both name GPIO 5"):
        HealthInputs({"mains": MAINS, "amp_power": MAINS}, Recorder())
    assert mock_pins.pins == {}


def test_empty_name_is_refused(mock_pins: Any) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        HealthInputs({"": MAINS}, Recorder())


def test_gpiozero_is_imported_only_when_inputs_are_built() -> None:
    code = "import sys, hal.inputs; print('gpiozero' in sys.modules)"
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert run.stdout.strip() == "False"
