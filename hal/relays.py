"""Relays on GPIO: the amplifier's power and one speaker line per zone, through gpiozero.

Owns: the ``Relays`` port, its gpiozero implementation (one ``OutputDevice`` per relay, active
high or active low), and the simulation helpers (gpiozero's ``MockFactory`` and reading back what
every mock pin went through).

Leaves to others: when to switch and in which order (the player: zones before the amplifier on
the way up, the amplifier first on the way down, so lines are never switched under power), pin
numbers and board polarity (configuration).

gpiozero failures leave this module as ``RelayError``; naming a zone that does not exist is a
``KeyError`` (a bug or a stale playlist, not the hardware).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

ALL_ZONES = "all"
AMP = "amp"


class RelayError(RuntimeError):
    """The GPIO hardware (or its driver) failed: someone must look at the board."""


class Relays(Protocol):
    def set_amp(self, on: bool) -> None: ...

    def set_zones(self, names: Iterable[str], on: bool) -> None:
        """Switch the named zones; ``"all"`` stands for every zone."""
        ...

    def all_off(self) -> None: ...

    def states(self) -> dict[str, bool]:
        """Read back from the devices: ``"amp"`` (when there is an amplifier relay) and every
        zone name, True meaning the relay is energised."""
        ...

    def close(self) -> None: ...


class GpioRelays:
    """Relays on gpiozero ``OutputDevice``s, all off from the moment they are claimed.

    ``active_high=False`` is for the common opto-isolated relay boards that energise a relay
    when its input is pulled low. ``amp_pin=None`` means the amplifier is not switched by the
    station: ``set_amp`` does nothing and ``states()`` has no ``"amp"`` key.
    """

    def __init__(
        self, amp_pin: int | None, zone_pins: Mapping[str, int], active_high: bool = True
    ) -> None:
        for name in zone_pins:
            if name in (ALL_ZONES, AMP):
                raise ValueError(f"{name!r} is reserved and cannot name a zone")
        try:
            from gpiozero import OutputDevice
            from gpiozero.exc import GPIOZeroError
        except ImportError as exc:
            raise RelayError(f"gpiozero is unavailable: {exc}") from exc
        # gpiozero's pin drivers (lgpio, RPi.GPIO) also raise plain OSError, e.g. for a
        # /dev/gpiochip the service may not open.
        self._errors: tuple[type[BaseException], ...] = (GPIOZeroError, OSError)
        self._amp: Any = None
        self._zones: dict[str, Any] = {}
        self._closed = False
        try:
            if amp_pin is not None:
                self._amp = OutputDevice(amp_pin, active_high=active_high, initial_value=False)
            for name, pin in zone_pins.items():
                self._zones[name] = OutputDevice(pin, active_high=active_high, initial_value=False)
        except self._errors as exc:
            self._close_devices()  # release the pins already claimed
            raise RelayError(f"cannot claim relay pins: {exc}") from exc

    def _resolve(self, names: Iterable[str]) -> list[str]:
        wanted: list[str] = []
        for name in names:
            if name == ALL_ZONES:
                expanded = list(self._zones)
            elif name in self._zones:
                expanded = [name]
            else:
                known = ", ".join(sorted(self._zones)) or "none"
                raise KeyError(f"unknown zone {name!r} (zones: {known})")
            wanted += [zone for zone in expanded if zone not in wanted]
        return wanted

    def _switch(self, device: Any, on: bool) -> None:
        try:
            if on:
                device.on()
            else:
                device.off()
        except self._errors as exc:
            raise RelayError(f"relay on {device.pin} failed: {exc}") from exc

    def set_amp(self, on: bool) -> None:
        if self._amp is not None:
            self._switch(self._amp, on)

    def set_zones(self, names: Iterable[str], on: bool) -> None:
        # Every name is checked before any relay moves: an unknown zone switches nothing.
        for name in self._resolve(names):
            self._switch(self._zones[name], on)

    def all_off(self) -> None:
        # The amplifier goes first so the speaker lines are not cut while it drives them.
        self.set_amp(False)
        self.set_zones([ALL_ZONES], False)

    def states(self) -> dict[str, bool]:
        devices = dict(self._zones)
        if self._amp is not None:
            devices = {AMP: self._amp, **devices}
        try:
            return {name: bool(device.value) for name, device in devices.items()}
        except self._errors as exc:
            raise RelayError(f"cannot read relay states: {exc}") from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.all_off()
        finally:
            self._close_devices()

    def _close_devices(self) -> None:
        devices = [d for d in (self._amp, *self._zones.values()) if d is not None]
        failure: BaseException | None = None
        for device in devices:
            try:
                device.close()
            except self._errors as exc:
                failure = failure or exc  # keep closing the others
        if failure is not None:
            raise RelayError(f"cannot release relay pins: {failure}") from failure


def use_mock_pins() -> Any:
    """Make every gpiozero device in this process use mock pins (``LOA_HAL=sim``); returns the
    ``MockFactory`` so its pins can be inspected."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    factory = MockFactory()
    Device.pin_factory = factory
    return factory


def pin_history(factory: Any) -> dict[int, list[tuple[float, bool]]]:
    """Every pin a ``MockFactory`` has handed out, by BCM number, with the states it went
    through as (``time.monotonic()`` seconds, state) pairs, oldest first; the first pair is the
    state the pin had when it was created.

    gpiozero's ``MockPin.states`` stores each change's time relative to the previous change,
    which cannot be compared across pins; anchoring them on the pin's last change (which
    ``MockPin`` keeps as ``_last_change``) gives one timeline for all pins, so tests can check
    that the amplifier went off before the zones. Pins stay listed after their device is closed
    (until ``factory.reset()``), so a closed relay's last transitions are still visible.
    """
    history: dict[int, list[tuple[float, bool]]] = {}
    for info, pin in factory.pins.items():
        if not str(info.name).startswith("GPIO"):
            continue
        changes = list(pin.states)
        # The first entry's delta is 0.0 by construction; the rest add up to the last change.
        start = float(pin._last_change) - sum(change.timestamp for change in changes[1:])
        elapsed = 0.0
        timeline: list[tuple[float, bool]] = []
        for change in changes:
            elapsed += change.timestamp
            timeline.append((start + elapsed, bool(change.state)))
        history[int(info.name[4:])] = timeline
    return history
