"""When a station may stop for an update (docs/releases.md): nothing on air, no slot in
progress, none starting within ``[update] margin_s``; decided on a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.core.planner import Occurrence
from agent.core.release import update_window
from tests.harness.clock import FakeClock

MARGIN = timedelta(seconds=600)
T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)


def slot(slot_id: str, start: datetime, minutes: float | None = 30) -> Occurrence:
    end = start + timedelta(minutes=minutes) if minutes is not None else None
    return Occurrence(("25", "25"), 1, slot_id, start, end, (), 50, ("all",), None, 0.0)


def test_an_idle_station_with_an_empty_plan_may_update() -> None:
    window = update_window(T0, False, [], MARGIN)
    assert window.open and window.next_start is None


def test_on_air_waits_whatever_the_plan() -> None:
    assert not update_window(T0, True, [], MARGIN).open


def first_open(plan: list[Occurrence], due: datetime, until: datetime) -> datetime:
    """The first watch tick (every 5 s on the fake clock) at which the window is open."""
    clock = FakeClock(due)
    while clock.now() < until:
        if update_window(clock.now(), False, plan, MARGIN).open:
            return clock.now()
        clock.advance(5)
    raise AssertionError("the window never opened")


def test_an_update_due_during_a_slot_waits_until_after_it() -> None:
    plan = [slot("morning", T0), slot("noon", T0 + timedelta(minutes=45))]  # 06:00-06:30, 06:45
    due = T0 + timedelta(minutes=10)
    during = update_window(due, False, plan, MARGIN)
    assert not during.open and "morning" in during.reason
    # The next slot is 15 min after the first ends, beyond the margin: open at 06:30.
    assert first_open(plan, due, T0 + timedelta(hours=3)) == T0 + timedelta(minutes=30)


def test_and_past_the_next_slot_when_that_starts_within_the_margin() -> None:
    plan = [slot("morning", T0), slot("noon", T0 + timedelta(minutes=35))]  # 06:35-07:05
    due = T0 + timedelta(minutes=10)
    between = update_window(T0 + timedelta(minutes=31), False, plan, MARGIN)
    assert not between.open and "noon" in between.reason
    assert between.next_start == T0 + timedelta(minutes=35)
    assert first_open(plan, due, T0 + timedelta(hours=3)) == T0 + timedelta(minutes=65)


def test_open_between_slots_when_the_next_is_beyond_the_margin() -> None:
    plan = [slot("morning", T0), slot("evening", T0 + timedelta(hours=12))]
    after = T0 + timedelta(minutes=31)
    window = update_window(after, False, plan, MARGIN)
    assert window.open and window.next_start == T0 + timedelta(hours=12)
    # 600 s before the evening slot exactly: closed until the slot is over.
    assert update_window(T0 + timedelta(hours=12) - MARGIN, False, plan, MARGIN).open
    just_in = T0 + timedelta(hours=12) - MARGIN + timedelta(seconds=1)
    assert not update_window(just_in, False, plan, MARGIN).open


def test_a_slot_without_end_counts_only_while_on_air() -> None:
    # No `end`: it lasts as long as its items play, which the player's being on air says.
    plan = [slot("news", T0, minutes=None)]
    assert update_window(T0 + timedelta(minutes=5), False, plan, MARGIN).open
    assert not update_window(T0 + timedelta(minutes=5), True, plan, MARGIN).open


def test_a_zero_margin_waits_only_for_what_is_on() -> None:
    plan = [slot("morning", T0 + timedelta(seconds=1))]
    assert update_window(T0, False, plan, timedelta(0)).open
