"""``LOA_FAULT=sense-stuck:<file>`` (agent/faults.py, hal/inputs.py): on gpiozero's mock pins,
the inputs the file names read "absent" while it exists and "present" once it is gone, each
change a real edge delivered as an ``InputChange``; unset, no thread and nothing read."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import pytest

from agent import faults
from hal.inputs import HealthInputs, InputChange

PINS = {"amp_power": 6, "speaker_line": 13}


def healthy(mock_pins: Any, active_high: bool) -> None:
    """As the simulation starts: every input reads present (agent/app.py)."""
    for pin in PINS.values():
        mock = mock_pins.pin(pin)
        (mock.drive_high if active_high else mock.drive_low)()


@pytest.mark.parametrize("active_high", [True, False])
def test_named_inputs_stop_and_start_following(
    mock_pins: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, active_high: bool
) -> None:
    stuck = tmp_path / "stuck"
    monkeypatch.setenv(faults.ENV, f"{faults.SENSE_STUCK_PREFIX}{stuck}")
    changes: queue.Queue[InputChange] = queue.Queue()
    inputs = HealthInputs(PINS, changes.put, active_high=active_high, bounce_s=None)
    healthy(mock_pins, active_high)
    while not changes.empty():  # the healthy start's own edges
        changes.get()
    try:
        stuck.write_text("speaker_line\n")
        change = changes.get(timeout=5)
        assert (change.name, change.value) == ("speaker_line", False)
        assert inputs.states() == {"amp_power": True, "speaker_line": False}
        stuck.unlink()
        change = changes.get(timeout=5)
        assert (change.name, change.value) == ("speaker_line", True)
        stuck.write_text("")  # names none: all of them
        got = {changes.get(timeout=5).name for _ in range(2)}
        assert got == set(PINS) and inputs.states() == dict.fromkeys(PINS, False)
    finally:
        inputs.close()
    assert _joined(), "the fault's thread outlived the inputs"


def _joined() -> bool:
    for thread in threading.enumerate():
        if thread.name == "sense-stuck":
            thread.join(2)
    return not any(t.name == "sense-stuck" for t in threading.enumerate())


def test_unset_there_is_no_thread(mock_pins: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.ENV, raising=False)
    inputs = HealthInputs(PINS, lambda change: None)
    try:
        assert not any(t.name == "sense-stuck" for t in threading.enumerate())
    finally:
        inputs.close()


def test_the_spec_is_known_and_parsed(tmp_path: Path) -> None:
    env = {faults.ENV: f"sense-stuck:{tmp_path / 'f'}, sense-stuck:"}
    assert faults.sense_stuck_file(env) == tmp_path / "f"
    assert faults.unknown(env) == {"sense-stuck:"}
    assert faults.stuck_inputs(tmp_path / "f", PINS) == frozenset()
    (tmp_path / "f").write_text("amp_power, nowhere")
    assert faults.stuck_inputs(tmp_path / "f", PINS) == {"amp_power"}
