"""The monotonic ticks of agent/scheduler.py: every N seconds of the monotonic clock, whatever
the wall clock does, with no burst of catch-up runs after a stall."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from agent.scheduler import Ticks
from tests.harness.clock import FakeClock


def test_ticks_follow_the_monotonic_clock_not_the_wall_clock() -> None:
    clock = FakeClock(datetime(2026, 11, 22, 10, 0, tzinfo=UTC))
    ticks = Ticks(clock.monotonic)
    ran: list[str] = []
    ticks.every("heartbeat", 1.0, lambda: ran.append("heartbeat"))
    ticks.every("watch", 5.0, lambda: ran.append("watch"))
    assert ticks.due() == ([], 1.0)
    clock.set_wall(datetime(1970, 1, 1, tzinfo=UTC))  # a step back: nothing stalls
    clock.advance(1.0)
    jobs, wait = ticks.due()
    assert len(jobs) == 1 and wait == pytest.approx(1.0)
    clock.set_wall(clock.now() + timedelta(days=20000))  # a step forward: no backlog
    clock.advance(1.0)
    assert len(ticks.due()[0]) == 1
    for job in ticks.due()[0]:
        job()
    assert ran == []  # due() only hands the jobs out


def test_a_late_tick_runs_once_then_a_period_later() -> None:
    clock = FakeClock(datetime(2026, 11, 22, 10, 0, tzinfo=UTC))
    ticks = Ticks(clock.monotonic)
    ticks.every("heartbeat", 1.0, lambda: None)
    clock.advance(10.5)  # a stalled machine
    jobs, wait = ticks.due()
    assert len(jobs) == 1 and wait == pytest.approx(1.0)
    assert ticks.due()[0] == []


def test_the_thread_runs_ticks_and_stops() -> None:
    ticks = Ticks()
    hit = threading.Event()
    ticks.every("fast", 0.01, hit.set)
    ticks.start()
    try:
        assert hit.wait(5)
    finally:
        ticks.stop()
    with pytest.raises(ValueError, match="positive"):
        ticks.every("never", 0, hit.set)
