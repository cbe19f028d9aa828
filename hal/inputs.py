"""Health inputs on GPIO: mains present, amplifier powered, speaker line carrying current, read
through gpiozero and reported as they change.

Owns: the ``InputChange`` message, the ``Inputs`` port and its gpiozero implementation (one
``DigitalInputDevice`` per named input, polarity and pull resistor per input, the driver's
debounce), and the translation of gpiozero failures into ``InputError``.

Leaves to others: what a change means and what to do about it (the station runtime: events,
the heartbeat's ``hw``, the as-run's ``amp_power_ok`` / ``relay_ok``), queueing (``deliver`` is
normally the station's ``inbox.put``), rate-limiting a flapping input (the station compares with
the value it last reported), pin numbers and board polarity (configuration).

Edges are for promptness, ``states()`` is the truth: a debounce that drops the last edge of a
burst (RPi.GPIO's style) or an edge lost while the station was busy is corrected by the next
``states()`` read, so the runtime should read ``states()`` at start and on its periodic tick.

Simulation only: with ``LOA_FAULT=sense-stuck:<file>`` (``agent.faults``) a thread drives the
mock pins of the inputs the file names to "absent" while it exists, and back to "present" once
it is gone: a sense input that stops following its relay, and follows again, in a running
agent. Unset (always, outside tests) there is no such thread and nothing is read.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

# Conventional names; any name works, these are the ones the station gives a meaning to.
MAINS = "mains"
AMP_POWER = "amp_power"
SPEAKER_LINE = "speaker_line"
log = logging.getLogger(__name__)


class InputError(RuntimeError):
    """The GPIO hardware (or its driver) failed: someone must look at the board."""


@dataclass(frozen=True, slots=True)
class InputChange:
    """Input ``name`` became ``value`` (True: the signal is present) at ``monotonic_ts``
    (``time.monotonic()`` seconds, read when the edge was handled)."""

    name: str
    value: bool
    monotonic_ts: float


class Inputs(Protocol):
    def states(self) -> dict[str, bool]:
        """Read every input now, by name; True means the signal is present."""
        ...

    def close(self) -> None: ...


def _check_bounce(bounce_s: float | None) -> float | None:
    if bounce_s is None:
        return None
    if not (isinstance(bounce_s, int | float) and math.isfinite(bounce_s) and bounce_s >= 0):
        raise ValueError(f"bounce_s must be None or a finite number >= 0, got {bounce_s!r}")
    return float(bounce_s) or None  # gpiozero spells "no debounce" None, not 0


class HealthInputs:
    """Named inputs on gpiozero ``DigitalInputDevice``s.

    ``active_high`` (one value, or per name; names left out are active high) says which level
    means "present". An active-low input gets the internal pull-up, an active-high one the
    pull-down: the pull holds the pin at "absent" when the wire is cut, so a broken sensor
    reads as a fault, never as health. Opto-isolated sensor modules (mains, 24 V rail) pull the
    pin low when their signal is present: ``active_high=False``. GPIO 2 and 3 have fixed
    pull-ups and therefore only take active-low inputs.

    ``bounce_s`` is handed to the pin driver (gpiozero's ``bounce_time``); ``None`` or 0 turns
    debouncing off. gpiozero's ``MockFactory`` ignores it and reports every edge.

    Each edge calls ``deliver(InputChange(...))`` on gpiozero's callback thread and does nothing
    else there: ``deliver`` must be quick and must not raise (``queue.Queue.put``). The values
    at start are not delivered; read them with ``states()``.
    """

    def __init__(
        self,
        pins: Mapping[str, int],
        deliver: Callable[[InputChange], None],
        *,
        active_high: Mapping[str, bool] | bool = True,
        bounce_s: float | None = 0.05,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        for name in pins:
            if not isinstance(name, str) or not name:
                raise ValueError(f"input names must be non-empty strings, got {name!r}")
        seen: dict[int, str] = {}
        for name, pin in pins.items():
            if pin in seen:
                raise ValueError(f"inputs {seen[pin]!r} and {name!r} both name GPIO {pin}")
            seen[pin] = name
        if isinstance(active_high, bool):
            polarity = dict.fromkeys(pins, active_high)
        else:
            unknown = sorted(set(active_high) - set(pins))
            if unknown:
                # A misspelt name would silently leave its input inverted.
                raise ValueError(f"active_high names unknown inputs: {', '.join(unknown)}")
            polarity = {name: bool(active_high.get(name, True)) for name in pins}
        bounce = _check_bounce(bounce_s)
        try:
            from gpiozero import DigitalInputDevice
            from gpiozero.exc import GPIOZeroError
        except ImportError as exc:
            raise InputError(f"gpiozero is unavailable: {exc}") from exc
        # gpiozero's pin drivers (lgpio, RPi.GPIO) also raise plain OSError, e.g. for a
        # /dev/gpiochip the service may not open.
        self._errors: tuple[type[BaseException], ...] = (GPIOZeroError, OSError)
        self._deliver = deliver
        self._monotonic = monotonic
        self._devices: dict[str, Any] = {}
        self._polarity = polarity
        self._closed = False
        self._stop_fault = threading.Event()
        try:
            for name, pin in pins.items():
                device = DigitalInputDevice(pin, pull_up=not polarity[name], bounce_time=bounce)
                self._devices[name] = device
                device.when_activated = self._edge(name, True)
                device.when_deactivated = self._edge(name, False)
        except self._errors as exc:
            self._closed = True
            self._close_devices()  # release the pins already claimed
            raise InputError(f"cannot claim input pins: {exc}") from exc
        if "sense-stuck:" in os.environ.get("LOA_FAULT", ""):  # tests only: see the docstring
            self._arm_sense_stuck()

    def _arm_sense_stuck(self) -> None:
        from agent import faults  # only here: hal needs nothing of the agent otherwise

        path = faults.sense_stuck_file()
        if path is None:
            return
        if not all(hasattr(d.pin, "drive_low") for d in self._devices.values()):
            log.error("%s%s ignored: the inputs are not mock pins", faults.SENSE_STUCK_PREFIX, path)
            return
        thread = threading.Thread(
            target=self._hold_stuck, args=(path, faults), name="sense-stuck", daemon=True
        )
        thread.start()

    def _hold_stuck(self, path: Path, faults: Any) -> None:
        """Drive the named inputs "absent" while ``path`` exists (again whenever something else
        drove them "present", such as the simulation's healthy start), "present" once it is
        gone. Each drive is an edge, delivered like any other."""
        held: set[str] = set()
        while not self._stop_fault.wait(faults.SENSE_POLL_S):
            try:
                self._apply_stuck(faults.stuck_inputs(path, self._devices), held)
            except self._errors:
                if self._closed:
                    return  # closed between the check and the read: the fault ends with it
                raise

    def _apply_stuck(self, stuck: frozenset[str], held: set[str]) -> None:
        for name, device in self._devices.items():
            pin, high = device.pin, self._polarity[name]
            present = bool(device.value)
            if name in stuck and present:
                (pin.drive_low if high else pin.drive_high)()
                held.add(name)
            elif name not in stuck and name in held:
                held.discard(name)
                if not present:
                    (pin.drive_high if high else pin.drive_low)()

    def _edge(self, name: str, value: bool) -> Callable[[], None]:
        # Runs on gpiozero's thread: build the message and hand it over, nothing more.
        def changed() -> None:
            if not self._closed:
                self._deliver(InputChange(name, value, self._monotonic()))

        return changed

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._devices)

    def states(self) -> dict[str, bool]:
        try:
            return {name: bool(device.value) for name, device in self._devices.items()}
        except self._errors as exc:
            raise InputError(f"cannot read inputs: {exc}") from exc

    def close(self) -> None:
        """Release the pins; no change is delivered once this returns (one already being
        delivered on gpiozero's thread at that moment may still land)."""
        if self._closed:
            return
        self._closed = True
        self._stop_fault.set()
        self._close_devices()

    def _close_devices(self) -> None:
        failure: BaseException | None = None
        for device in self._devices.values():
            try:
                device.when_activated = None
                device.when_deactivated = None
                device.close()
            except self._errors as exc:
                failure = failure or exc  # keep closing the others
        if failure is not None:
            raise InputError(f"cannot release input pins: {failure}") from failure
