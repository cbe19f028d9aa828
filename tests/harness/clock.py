"""A fake Clock: time moves only when a test moves it; ``sleep`` advances it instantly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest


class FakeClock:
    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._wall = start.astimezone(UTC)
        self._mono = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        """Both clocks move forward together, as on a real machine."""
        self._wall += timedelta(seconds=seconds)
        self._mono += seconds

    def set_wall(self, moment: datetime) -> None:
        """Jump the wall clock only (NTP step, a wrong RTC): monotonic time is unaffected."""
        self._wall = moment.astimezone(UTC)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 22, 10, 0, tzinfo=UTC))
