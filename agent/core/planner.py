"""The pure planner: which slot occurrences fall inside a time window (PROTOCOL.md section 5).

Occurrences are computed in each playlist's own time zone (a slot at 06:00 is 06:00 local, every
day, whatever UTC says), on its recurring ``days`` or explicit ``dates``, and only inside the
playlist's ``[valid_from, expires)``. An ``end`` earlier than ``start`` means the next day. The
scheduler adapter turns the result into timers; arbitration between overlapping occurrences is
the player's business.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from agent.core.models import MediaRef, Playlist, Slot
from agent.core.timefmt import format_rfc3339


@dataclass(frozen=True, slots=True)
class Occurrence:
    stream: tuple[str, str]  # (issuer, target)
    playlist_version: int
    slot_id: str
    start: datetime  # aware, UTC
    end: datetime | None  # hard stop when the slot has an `end`
    items: tuple[MediaRef, ...]
    priority: int
    zones: tuple[str, ...]
    volume: int | None
    gap_s: float

    @property
    def key(self) -> str:
        """Stable identity: the same occurrence has the same key across restarts."""
        issuer, target = self.stream
        return f"{issuer}@{target}/{self.slot_id}/{format_rfc3339(self.start)}"

    @property
    def stream_name(self) -> str:
        return f"{self.stream[0]}@{self.stream[1]}"

    @property
    def locality(self) -> int:
        """2 for a station target, 1 for a commune, 0 for the province: more local wins ties."""
        return self.stream[1].count("/")


def _slot_days(slot: Slot, first: date, last: date) -> Iterable[date]:
    if slot.dates is not None:
        yield from (d for d in slot.dates if first <= d <= last)
        return
    days = slot.days or frozenset()
    day = first
    while day <= last:
        if day.weekday() in days:
            yield day
        day += timedelta(days=1)


def occurrences(
    playlists: Iterable[Playlist], window_start: datetime, window_end: datetime
) -> list[Occurrence]:
    """Occurrences starting in ``[window_start, window_end)``, sorted by start then priority."""
    found: list[Occurrence] = []
    for playlist in playlists:
        tz = ZoneInfo(playlist.timezone)
        # One extra day either side covers every offset from UTC.
        first = window_start.astimezone(tz).date() - timedelta(days=1)
        last = window_end.astimezone(tz).date() + timedelta(days=1)
        for slot in playlist.slots:
            for day in _slot_days(slot, first, last):
                start = datetime.combine(day, slot.start, tz).astimezone(UTC)
                if not (window_start <= start < window_end):
                    continue
                if not (playlist.valid_from <= start < playlist.expires):
                    continue
                end = None
                if slot.end is not None:
                    end_day = day if slot.end > slot.start else day + timedelta(days=1)
                    end = datetime.combine(end_day, slot.end, tz).astimezone(UTC)
                found.append(
                    Occurrence(
                        stream=playlist.stream,
                        playlist_version=playlist.version,
                        slot_id=slot.id,
                        start=start,
                        end=end,
                        items=tuple(playlist.media[name] for name in slot.items),
                        priority=slot.priority,
                        zones=slot.zones,
                        volume=slot.volume,
                        gap_s=slot.gap_s,
                    )
                )
    found.sort(key=lambda o: (o.start, -o.priority, -o.locality, o.key))
    return found


def outranks(challenger: Occurrence, incumbent: Occurrence) -> bool:
    """Section 5: higher priority wins; at equal priority the more local stream wins."""
    return (challenger.priority, challenger.locality) > (incumbent.priority, incumbent.locality)
