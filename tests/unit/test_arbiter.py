"""Arbitration, resume positions and catch-up after a restart, on the pure core."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from agent.core.arbiter import Position, advance, catch_up, closes_at, locate, nominal_length_s
from agent.core.models import Playlist
from agent.core.planner import Occurrence, occurrences
from tests.harness.trust import playlist_body

WINDOW = timedelta(minutes=15)
DAY = timedelta(days=1)


def media(name: str, seconds: float | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"url": f"https://m.example.vn/{name}.mp3", "sha256": "ab" * 32,
                             "bytes": 1000}  # fmt: skip
    if seconds is not None:
        entry["duration_s"] = seconds
    return entry


def occurrence(
    items: dict[str, float | None], gap_s: float = 2, end: str | None = None, **slot: Any
) -> Occurrence:
    body_slot: dict[str, Any] = {"id": "s", "start": "06:00", "days": ["mon", "tue", "wed",
        "thu", "fri", "sat", "sun"], "items": list(items), "gap_s": gap_s} | slot  # fmt: skip
    if end:
        body_slot["end"] = end
    doc = playlist_body(media={n: media(n, d) for n, d in items.items()}, slots=[body_slot])
    start = datetime(2026, 11, 23, tzinfo=UTC)
    return occurrences([Playlist.from_body(doc)], start, start + DAY)[0]


def test_nominal_length_and_closing() -> None:
    occ = occurrence({"a": 60, "b": 30})
    assert nominal_length_s(occ) == 92
    assert closes_at(occ, WINDOW) == occ.start + timedelta(seconds=92) + WINDOW
    with_end = occurrence({"a": 60}, end="06:30")
    assert closes_at(with_end, WINDOW) == with_end.start + timedelta(minutes=30)
    assert nominal_length_s(occurrence({"a": 60, "b": None})) is None
    assert closes_at(occurrence({"a": None}), WINDOW) is None


def test_locate_walks_items_and_gaps() -> None:
    occ = occurrence({"a": 60, "b": 30})
    assert locate(occ, 0) == Position(0, 0)
    assert locate(occ, 59.5) == Position(0, 59.5)
    assert locate(occ, 61) == Position(1, 0)  # inside the gap: the next item's start
    assert locate(occ, 72) == Position(1, 10)
    assert locate(occ, 92) is None
    assert locate(occurrence({"a": None}), 5) is None


def test_advance_counts_audio_only() -> None:
    occ = occurrence({"a": 60, "b": 30})
    assert advance(occ, Position(0, 0), 10) == Position(0, 10)
    assert advance(occ, Position(0, 50), 20) == Position(1, 10)
    assert advance(occ, Position(1, 10), 19.96) is None  # within 50 ms of the end: done
    assert advance(occ, Position(0, 0), 90) is None


def test_catch_up_joins_the_open_one_and_reports_the_rest_missed() -> None:
    early = occurrence({"a": 60}, start="05:00")
    on_now = occurrence({"a": 600}, start="05:58")
    reported = occurrence({"a": 60}, start="05:30")
    later = occurrence({"a": 60}, start="07:00")
    now = on_now.start + timedelta(minutes=2)
    result = catch_up(
        [early, on_now, reported, later], now, early.start - timedelta(hours=1),
        {reported.key}, WINDOW,
    )  # fmt: skip
    assert result.join == (on_now, Position(0, 120))
    assert result.missed == (early,)


def test_catch_up_ignores_what_happened_before_the_station_went_down() -> None:
    early = occurrence({"a": 60}, start="05:00")
    now = early.start + timedelta(hours=2)
    assert catch_up([early], now, now - timedelta(minutes=5), set(), WINDOW).missed == ()


def test_catch_up_joins_the_highest_ranked_open_occurrence() -> None:
    low = occurrence({"a": 600}, start="05:58", priority=10)
    high = occurrence({"a": 600}, start="05:59", priority=55)
    now = high.start + timedelta(seconds=30)
    result = catch_up([low, high], now, now - timedelta(hours=1), set(), WINDOW)
    assert result.join is not None and result.join[0] is high
    assert result.missed == (low,)
