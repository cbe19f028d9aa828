"""Arbitration of the one programme a station plays (PROTOCOL.md sections 5 and 6), pure.

It decides, from occurrences and times, what a station does when two occurrences meet, where an
interrupted or late occurrence picks up, and which occurrences were missed while the station
was down. The runtime carries the decisions out; the planner says what is scheduled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from agent.core.planner import Occurrence


@dataclass(frozen=True, slots=True)
class Position:
    """Where in an occurrence playback stands: item index and seconds into that item."""

    item: int
    offset_s: float


def nominal_length_s(occurrence: Occurrence) -> float | None:
    """Items and gaps back to back; None when an item's duration is not declared."""
    durations = [m.duration_s for m in occurrence.items]
    if any(d is None for d in durations):
        return None
    return sum(d for d in durations if d is not None) + occurrence.gap_s * (len(durations) - 1)


def closes_at(occurrence: Occurrence, resume_window: timedelta) -> datetime | None:
    """When the slot stops being open: its ``end`` if it has one, else its nominal end plus the
    resume window (an interrupted bulletin may still finish a little late, not an hour late).
    None when neither is known."""
    if occurrence.end is not None:
        return occurrence.end
    length = nominal_length_s(occurrence)
    if length is None:
        return None
    return occurrence.start + timedelta(seconds=length) + resume_window


def locate(occurrence: Occurrence, offset_s: float) -> Position | None:
    """The position ``offset_s`` seconds after the start, items and gaps back to back; None if
    it lies past the last item or a duration is unknown. A point inside a gap is the start of
    the next item."""
    elapsed = 0.0
    for index, media in enumerate(occurrence.items):
        if media.duration_s is None:
            return None
        if offset_s < elapsed + media.duration_s:
            return Position(index, max(0.0, offset_s - elapsed))
        elapsed += media.duration_s
        if offset_s < elapsed + occurrence.gap_s and index + 1 < len(occurrence.items):
            return Position(index + 1, 0.0)
        elapsed += occurrence.gap_s
    return None


def advance(occurrence: Occurrence, start: Position, played_s: float) -> Position | None:
    """The position after ``played_s`` seconds of audio played from ``start`` (gaps excluded),
    None when that was the end or a duration is unknown."""
    index, offset = start.item, start.offset_s + played_s
    while index < len(occurrence.items):
        duration = occurrence.items[index].duration_s
        if duration is None:
            return None
        if offset < duration - 0.05:  # 50 ms left is the end: decoders round
            return Position(index, offset)
        offset -= duration
        index += 1
        offset = max(0.0, offset)
    return None


@dataclass(frozen=True, slots=True)
class CatchUp:
    join: tuple[Occurrence, Position] | None  # playing now, joined late: reported partial
    missed: tuple[Occurrence, ...]  # over while the station was down: reported missed


def catch_up(
    plan: Iterable[Occurrence],
    now: datetime,
    down_since: datetime,
    reported: set[str],
    resume_window: timedelta,
) -> CatchUp:
    """After a restart: occurrences that started in ``[down_since, now)`` and were never
    reported are either joined (still open and locatable: the highest-ranked one) or missed."""
    join: tuple[Occurrence, Position] | None = None
    missed: list[Occurrence] = []
    for occurrence in sorted(plan, key=lambda o: (-o.priority, -o.locality, o.start)):
        if occurrence.key in reported or not down_since <= occurrence.start < now:
            continue
        closes = closes_at(occurrence, resume_window)
        position = locate(occurrence, (now - occurrence.start).total_seconds())
        still_on = position is not None and (closes is None or now < closes)
        if still_on and join is None and position is not None:
            join = (occurrence, position)
        else:
            missed.append(occurrence)
    missed.sort(key=lambda o: o.start)
    return CatchUp(join, tuple(missed))
