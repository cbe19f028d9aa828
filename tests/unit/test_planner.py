"""The pure planner: local times in the playlist's zone, days and dates, validity window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.core.models import Playlist
from agent.core.planner import occurrences, outranks
from tests.harness.trust import playlist_body

DAY = timedelta(days=1)


def playlist(**changes: Any) -> Playlist:
    return Playlist.from_body(playlist_body(**changes))


def slot(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(playlist_body()["slots"][0])
    base.update(changes)
    return base


def test_daily_slot_is_local_time_in_the_playlist_zone() -> None:
    start = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    found = occurrences([playlist()], start, start + 3 * DAY)
    # 06:00 in Hanoi (UTC+7) is 23:00 UTC the day before.
    assert [o.start for o in found] == [
        datetime(2026, 11, 23, 23, 0, tzinfo=UTC),
        datetime(2026, 11, 24, 23, 0, tzinfo=UTC),
        datetime(2026, 11, 25, 23, 0, tzinfo=UTC),
    ]
    assert found[0].key == "25@25/morning/2026-11-23T23:00:00Z"
    assert [m.name for m in found[0].items] == ["news"]


def test_weekdays_only() -> None:
    p = playlist(slots=[slot(days=["sat", "sun"])])
    start = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)  # Sunday 19:00 in Hanoi
    found = occurrences([p], start, start + 7 * DAY)
    local = [o.start.astimezone(UTC) + timedelta(hours=7) for o in found]
    assert [d.strftime("%a") for d in local] == ["Sat", "Sun"]


def test_explicit_dates_and_validity_window() -> None:
    p = playlist(
        valid_from="2026-11-24T00:00:00+07:00",
        expires="2026-11-26T06:00:00+07:00",  # exclusive: the 26th's 06:00 is out
        slots=[
            {k: v for k, v in slot().items() if k != "days"}
            | {"dates": ["2026-11-23", "2026-11-24", "2026-11-26"]},
            slot(id="daily"),
        ],
    )
    start = datetime(2026, 11, 20, tzinfo=UTC)
    found = occurrences([p], start, start + 10 * DAY)
    assert [(o.slot_id, o.start.isoformat()) for o in found] == [
        ("daily", "2026-11-23T23:00:00+00:00"),  # equal start and rank: ordered by key
        ("morning", "2026-11-23T23:00:00+00:00"),
        ("daily", "2026-11-24T23:00:00+00:00"),
    ]


def test_window_is_half_open() -> None:
    start = datetime(2026, 11, 23, 23, 0, tzinfo=UTC)
    assert len(occurrences([playlist()], start, start + DAY)) == 1
    assert occurrences([playlist()], start + timedelta(seconds=1), start + DAY) == []


def test_overnight_end_is_the_next_day() -> None:
    p = playlist(slots=[slot(start="22:00", end="01:30")])
    start = datetime(2026, 11, 23, tzinfo=UTC)
    first = occurrences([p], start, start + DAY)[0]
    assert first.end is not None
    assert first.end - first.start == timedelta(hours=3, minutes=30)


def test_other_time_zone() -> None:
    p = playlist(timezone="Europe/Berlin", slots=[slot(start="06:00")])
    start = datetime(2026, 11, 23, tzinfo=UTC)
    assert occurrences([p], start, start + DAY)[0].start == datetime(2026, 11, 23, 5, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((60, "25"), (50, "25/08230/08230-01"), True),
        ((50, "25/08230"), (50, "25"), True),
        ((50, "25"), (50, "25/08230"), False),
        ((50, "25"), (50, "25"), False),
    ],
)
def test_outranks(a: tuple[int, str], b: tuple[int, str], expected: bool) -> None:
    start = datetime(2026, 11, 23, tzinfo=UTC)

    def occ(priority: int, target: str) -> Any:
        p = playlist(target=target, slots=[slot(priority=priority)])
        return occurrences([p], start, start + DAY)[0]

    assert outranks(occ(*a), occ(*b)) is expected
