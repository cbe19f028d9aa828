"""gpiozero's own MockFactory for every test that touches pins, reset around each test so no
pin state or reservation leaks from one test into the next."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def mock_pins() -> Iterator[Any]:
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    previous = Device.pin_factory
    factory = MockFactory()
    Device.pin_factory = factory
    try:
        yield factory
    finally:
        factory.reset()  # closes every device and releases every pin
        Device.pin_factory = previous
