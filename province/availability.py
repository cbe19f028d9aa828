"""Station availability: over a window, when was each station up, as far as the province knows.

This module owns that judgement and its time series for the charts; the registry supplies the
stored heartbeats and the history of births and Wills, and nothing here writes.

Rules:
- **Heartbeats.** A heartbeat vouches for its station from its ``ts`` until the next one is
  overdue: ``ts + 1.5 × interval``. The interval lives in the station's config, which the
  province never sees, so it is inferred per station as the median gap between consecutive
  heartbeats (at least ``MIN_GAPS`` gaps; the median shrugs off the long gaps of outages), else
  the agent's default, 300 s. A heartbeat sent with an untrusted clock is placed at the time
  the collector received it instead: its ``ts`` may be anything.
- **Births and Wills.** From a birth (``online: true``) until the next offline state (the Will,
  or a clean stop), the agent held its broker connection, so it was running. Times are the
  collector's ``received_at``; a Will arrives after the Will Delay (60 s), which this does not
  subtract.
- **Up** is the union of both. Availability is up time over the part of the window already past
  (``now`` cuts it). Heartbeats written while a station was offline reach the province only
  when it reconnects: until then the station counts as down, and a later run can raise its
  availability. That is "as far as the province knows", deliberately.
- A commune's availability is the mean of its stations' (each station weighs the same).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from agent.core import strict
from agent.core.timefmt import parse_rfc3339
from province.registry import Registry, StoredReport, received_at_text

Span = tuple[datetime, datetime]  # half-open [start, end), aware UTC

DEFAULT_INTERVAL_S = 300.0  # the agent's reports.heartbeat_s default
OVERDUE_FACTOR = 1.5
MIN_GAPS = 3  # fewer gaps than this say too little about the interval: use the default
# Heartbeats and states this far before the window are read too, so that a station down at the
# window's start can be said to be "offline since" a moment before it.
LOOKBACK = timedelta(days=1)
DEFAULT_TZ = "Asia/Ho_Chi_Minh"


@dataclass(frozen=True, slots=True)
class StationAvailability:
    station: str
    commune: str  # "25/08230"
    judged: Span  # the part of the window already past: [window_start, min(window_end, now))
    up: tuple[Span, ...]  # merged, sorted; reaches back LOOKBACK before the window
    connected: tuple[Span, ...]  # from births and Wills only
    interval_s: float
    interval_inferred: bool  # False: too few heartbeats, DEFAULT_INTERVAL_S assumed
    heartbeats: int  # heartbeats placed inside the judged window
    last_heartbeat: datetime | None  # the latest heartbeat placed before the judged end
    buckets: tuple[float | None, ...]  # up fraction per bucket of ``Availability.buckets``

    @property
    def fraction(self) -> float:
        return _fraction(self.up, self.judged)

    @property
    def connected_fraction(self) -> float:
        return _fraction(self.connected, self.judged)

    def up_at(self, moment: datetime) -> bool:
        return any(start <= moment < end for start, end in self.up)

    def down_since(self, moment: datetime) -> datetime | None:
        """When the station was last known up before ``moment``, if it was down at ``moment``;
        None when it was up, or when nothing says it was up since the lookback began."""
        if self.up_at(moment):
            return None
        ends = [end for _, end in self.up if end <= moment]
        return max(ends) if ends else None

    @property
    def lookback_start(self) -> datetime:
        return self.judged[0] - LOOKBACK


@dataclass(frozen=True, slots=True)
class CommuneAvailability:
    commune: str
    stations: int
    fraction: float  # mean of its stations'
    buckets: tuple[float | None, ...]


@dataclass(frozen=True, slots=True)
class Availability:
    judged: Span
    bucket: timedelta
    buckets: tuple[datetime, ...]  # bucket starts over the whole window, UTC, ``bucket`` long
    stations: Mapping[str, StationAvailability]

    def communes(self) -> list[CommuneAvailability]:
        members: dict[str, list[StationAvailability]] = {}
        for s in self.stations.values():
            members.setdefault(s.commune, []).append(s)
        result = []
        for commune, group in sorted(members.items()):
            series = []
            for i in range(len(self.buckets)):
                values = [v for s in group if (v := s.buckets[i]) is not None]
                series.append(sum(values) / len(values) if values else None)
            mean = sum(s.fraction for s in group) / len(group)
            result.append(CommuneAvailability(commune, len(group), mean, tuple(series)))
        return result


def default_bucket(span: timedelta) -> timedelta:
    """A chart of a few dozen to about a hundred columns: minutes up to half an hour, ten
    minutes up to six hours, hours up to four days, six hours up to two weeks, days beyond."""
    for limit, size in (
        (timedelta(minutes=30), timedelta(minutes=1)),
        (timedelta(hours=6), timedelta(minutes=10)),
        (timedelta(days=4), timedelta(hours=1)),
        (timedelta(days=14), timedelta(hours=6)),
    ):
        if span <= limit:
            return size
    return timedelta(days=1)


def bucket_starts(span: Span, bucket: timedelta, tz: str) -> tuple[datetime, ...]:
    """Bucket starts covering ``span``, the first at the local time at or before its start that
    is a whole multiple of the bucket within its hour (minute buckets), day (hour buckets), or
    local midnight (daily buckets)."""
    start, end = span
    local = start.astimezone(ZoneInfo(tz)).replace(second=0, microsecond=0)
    size_s = int(bucket.total_seconds())
    if bucket >= timedelta(days=1):
        local = local.replace(hour=0, minute=0)
    elif bucket >= timedelta(hours=1):
        whole_hours = max(1, size_s // 3600)
        local = local.replace(hour=local.hour - local.hour % whole_hours, minute=0)
    else:
        whole_minutes = max(1, size_s // 60)
        local = local.replace(minute=local.minute - local.minute % whole_minutes)
    edges = []
    edge = local.astimezone(UTC)
    while edge < end:
        edges.append(edge)
        edge += bucket
    return tuple(edges)


def availability(
    registry: Registry,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
    *,
    tz: str = DEFAULT_TZ,
    bucket: timedelta | None = None,
) -> Availability:
    """Every active station's availability over ``[window_start, min(window_end, now))``."""
    start = window_start.astimezone(UTC)
    end = max(start, min(window_end, now).astimezone(UTC))
    judged = (start, end)
    # Buckets span the whole window, so a chart shows what is still to come as blank.
    whole = (start, max(start, window_end.astimezone(UTC)))
    size = bucket or default_bucket(whole[1] - start)
    edges = bucket_starts(whole, size, tz)
    stations = registry.stations()
    reading_from = start - LOOKBACK
    heartbeats: dict[str, list[StoredReport]] = {}
    for report in registry.reports(
        "heartbeat", [s.id.path for s in stations], received_since=reading_from
    ):
        heartbeats.setdefault(report.station, []).append(report)
    result: dict[str, StationAvailability] = {}
    for station in stations:
        path = station.id.path
        states = registry.state_history(
            path, received_at_text(reading_from - LOOKBACK), received_at_text(end)
        )
        beats = _placed(heartbeats.get(path, []))
        interval, inferred = infer_interval(beats)
        overdue = timedelta(seconds=interval * OVERDUE_FACTOR)
        lookback_span = (reading_from, end)
        beat_spans = [(t, t + overdue) for t in beats]
        connected = _connected([(parse_rfc3339(s.received_at), s.online) for s in states], end)
        up = _merge(_clip(span, lookback_span) for span in [*beat_spans, *connected])
        before_end = [t for t in beats if t < end]
        result[path] = StationAvailability(
            station=path,
            commune=f"{station.id.province}/{station.id.commune}",
            judged=judged,
            up=up,
            connected=_merge(_clip(span, lookback_span) for span in connected),
            interval_s=interval,
            interval_inferred=inferred,
            heartbeats=sum(1 for t in beats if start <= t < end),
            last_heartbeat=max(before_end) if before_end else None,
            buckets=tuple(_bucket_fraction(up, (e, e + size), judged) for e in edges),
        )
    return Availability(judged, size, edges, result)


def _placed(reports: Iterable[StoredReport]) -> list[datetime]:
    """Each readable heartbeat's moment, sorted: its ``ts``, or when it was received if the
    station said its clock was untrusted (or wrote no readable ``ts``)."""
    moments = []
    for report in reports:
        try:
            doc = strict.loads(report.body)
        except ValueError:
            continue
        if not isinstance(doc, dict):
            continue
        clock = doc.get("clock")
        trusted = not (isinstance(clock, dict) and clock.get("trusted") is False)
        moment: datetime | None = None
        if trusted and isinstance(doc.get("ts"), str):
            try:
                moment = parse_rfc3339(doc["ts"])
            except ValueError:
                moment = None
        if moment is None:
            moment = parse_rfc3339(report.received_at)
        moments.append(moment.astimezone(UTC))
    return sorted(moments)


def infer_interval(moments: Sequence[datetime]) -> tuple[float, bool]:
    """The station's heartbeat interval in seconds: the median gap between consecutive
    heartbeats when there are at least ``MIN_GAPS`` gaps, else the default (and False)."""
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(moments) if b > a]
    if len(gaps) < MIN_GAPS:
        return DEFAULT_INTERVAL_S, False
    return min(max(statistics.median(gaps), 1.0), 86400.0), True


def _connected(states: Sequence[tuple[datetime, bool]], end: datetime) -> list[Span]:
    """Spans from each birth to the next offline state (or ``end`` if none came)."""
    spans = []
    since: datetime | None = None
    for moment, online in states:
        if online and since is None:
            since = moment
        elif not online and since is not None:
            spans.append((since, moment))
            since = None
    if since is not None and since < end:
        spans.append((since, end))
    return [(a.astimezone(UTC), b.astimezone(UTC)) for a, b in spans]


def _clip(span: Span, within: Span) -> Span:
    return (max(span[0], within[0]), min(span[1], within[1]))


def _merge(spans: Iterable[Span]) -> tuple[Span, ...]:
    merged: list[Span] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


def _covered(spans: Iterable[Span], within: Span) -> float:
    total = 0.0
    for span in spans:
        start, end = _clip(span, within)
        if end > start:
            total += (end - start).total_seconds()
    return total


def _fraction(spans: Iterable[Span], within: Span) -> float:
    length = (within[1] - within[0]).total_seconds()
    return _covered(spans, within) / length if length > 0 else 0.0


def _bucket_fraction(up: Iterable[Span], bucket: Span, judged: Span) -> float | None:
    """Up fraction of the bucket's judged part; None for a bucket wholly in the future."""
    part = _clip(bucket, judged)
    if part[1] <= part[0]:
        return None
    return _fraction(up, part)
