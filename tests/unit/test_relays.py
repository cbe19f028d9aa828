"""GpioRelays on gpiozero's MockFactory: what reaches the pins, on both board polarities."""

from __future__ import annotations

from typing import Any

import pytest

from hal.relays import GpioRelays, RelayError, pin_history

AMP, NORTH, SOUTH = 4, 17, 27
ZONES = {"north": NORTH, "south": SOUTH}


def pin_levels(factory: Any) -> dict[int, bool]:
    return {pin: bool(factory.pin(pin).state) for pin in (AMP, NORTH, SOUTH)}


def test_everything_starts_off(mock_pins: Any) -> None:
    relays = GpioRelays(AMP, ZONES)
    assert relays.states() == {"amp": False, "north": False, "south": False}
    assert pin_levels(mock_pins) == {AMP: False, NORTH: False, SOUTH: False}
    relays.close()


def test_amp_and_zones_switch_their_own_pins(mock_pins: Any) -> None:
    relays = GpioRelays(AMP, ZONES)
    relays.set_zones(["south"], True)
    assert pin_levels(mock_pins) == {AMP: False, NORTH: False, SOUTH: True}
    relays.set_amp(True)
    assert relays.states() == {"amp": True, "north": False, "south": True}
    relays.set_amp(False)
    relays.set_zones(["south"], False)
    assert pin_levels(mock_pins) == {AMP: False, NORTH: False, SOUTH: False}
    relays.close()


def test_active_low_board_drives_pins_inverted(mock_pins: Any) -> None:
    relays = GpioRelays(AMP, ZONES, active_high=False)
    # Off from the start means high on an active-low board: no relay clicks at claim time.
    assert pin_levels(mock_pins) == {AMP: True, NORTH: True, SOUTH: True}
    relays.set_amp(True)
    relays.set_zones(["north"], True)
    assert pin_levels(mock_pins) == {AMP: False, NORTH: False, SOUTH: True}
    assert relays.states() == {"amp": True, "north": True, "south": False}
    relays.close()
    assert pin_levels(mock_pins) == {AMP: True, NORTH: True, SOUTH: True}


def test_all_means_every_zone(mock_pins: Any) -> None:
    relays = GpioRelays(AMP, ZONES)
    relays.set_zones(["all"], True)
    assert relays.states() == {"amp": False, "north": True, "south": True}
    relays.set_zones(["north", "all"], False)  # overlaps are harmless
    assert relays.states() == {"amp": False, "north": False, "south": False}
    relays.close()


def test_unknown_zone_is_a_key_error_and_switches_nothing(mock_pins: Any) -> None:
    relays = GpioRelays(AMP, ZONES)
    with pytest.raises(KeyError, match=r"unknown zone 'east'.*north, south"):
        relays.set_zones(["north", "east"], True)
    assert relays.states() == {"amp": False, "north": False, "south": False}
    relays.close()


def test_reserved_names_cannot_be_zones(mock_pins: Any) -> None:
    with pytest.raises(ValueError, match="reserved"):
        GpioRelays(AMP, {"all": 22})


def test_without_amp_relay_set_amp_does_nothing(mock_pins: Any) -> None:
    relays = GpioRelays(None, ZONES)
    relays.set_amp(True)
    assert relays.states() == {"north": False, "south": False}
    relays.close()


def test_states_are_read_back_from_the_pins(mock_pins: Any) -> None:
    relays = GpioRelays(AMP, ZONES)
    relays.set_zones(["north"], True)
    # Someone else's write to the pin (a second process, a wiring fault in simulation) shows.
    mock_pins.pin(NORTH).state = False
    assert relays.states()["north"] is False
    relays.close()


def test_close_switches_everything_off_and_is_idempotent(mock_pins: Any) -> None:
    relays = GpioRelays(AMP, ZONES)
    relays.set_zones(["all"], True)
    relays.set_amp(True)
    relays.close()
    relays.close()
    assert pin_levels(mock_pins) == {AMP: False, NORTH: False, SOUTH: False}
    with pytest.raises(RelayError):  # the devices are gone: a gpiozero error, translated
        relays.set_amp(True)


def test_pin_in_use_is_a_relay_error_and_releases_what_was_claimed(mock_pins: Any) -> None:
    with pytest.raises(RelayError, match="cannot claim"):
        GpioRelays(AMP, {"north": NORTH, "again": NORTH})
    relays = GpioRelays(AMP, ZONES)  # the failed attempt left no pin reserved
    relays.close()


def test_all_off_switches_the_amp_before_the_lines(mock_pins: Any) -> None:
    relays = GpioRelays(AMP, ZONES)
    relays.set_zones(["all"], True)
    relays.set_amp(True)
    relays.all_off()
    history = pin_history(mock_pins)
    amp_off = history[AMP][-1][0]
    assert all(history[zone][-1][0] >= amp_off for zone in (NORTH, SOUTH))
    relays.close()


def test_pin_history_shows_the_transitions_in_order(mock_pins: Any) -> None:
    relays = GpioRelays(AMP, ZONES)
    relays.set_zones(["north"], True)
    relays.set_amp(True)
    relays.set_amp(False)
    relays.set_zones(["north"], False)
    relays.close()
    history = pin_history(mock_pins)
    assert set(history) == {AMP, NORTH, SOUTH}
    assert [state for _, state in history[AMP]] == [False, True, False]
    assert [state for _, state in history[NORTH]] == [False, True, False]
    assert [state for _, state in history[SOUTH]] == [False]
    # One monotonic timeline for all pins: the order of events across pins is visible.
    north_on, amp_on, amp_off, north_off = (
        history[NORTH][1][0], history[AMP][1][0], history[AMP][2][0], history[NORTH][2][0]
    )  # fmt: skip
    assert north_on <= amp_on <= amp_off <= north_off
    assert history[AMP][0][0] <= history[NORTH][0][0] <= history[SOUTH][0][0]  # creation order
