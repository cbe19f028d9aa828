"""The MockFactory fixture really resets: a pin reserved in one test is free in the next."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.parametrize("round_", [1, 2])
def test_pin_is_free_again_in_every_test(mock_pins: Any, round_: int) -> None:
    from gpiozero import OutputDevice

    relay = OutputDevice(17, active_high=False, initial_value=False)  # not closed on purpose
    relay.on()
    assert mock_pins.pin(17).state == 0  # active-low board: "on" drives the pin low
    relay.off()
    assert mock_pins.pin(17).state == 1
