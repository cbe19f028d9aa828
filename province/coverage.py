"""Coverage: what the province expected its stations to play, against what they say they played.

This module owns the computation: rows per local day, commune and bulletin, each keeping what
happened at every expected station and why, and the per-commune summaries with the reasons a
commune fell short. Rendering (table, CSV, HTML) is ``province.coverage_render``'s; when a
station was up is ``province.availability``'s. The registry supplies what was published, the
active stations and the stored as-run records; the plan comes from ``agent.core.planner``, the
very planner the stations run, so both sides agree on which occurrences exist and when.

Rules (see ``coverage``):
- A stream (issuer, target) is judged by its newest published version only; older versions are
  superseded, as they are on a station, which keeps one playlist per stream. A window reaching
  back before the newest version was published is therefore judged by that newest version.
- Expected: every station inside the playlist's target, counted in its own commune, unless it
  was revoked when the occurrence began (from its revocation's ``revoked_at`` until a
  replacement was enrolled under its id). Stations outside the target are not expected.
- **Revoked stations.** From ``revoked_at`` on a station's signatures prove nothing (its keys
  may be in a thief's hands): an as-run whose play began (``started_at``, else
  ``scheduled_at``) at or after it is set aside, and so is one that claims a time after the
  replacement's enrollment but was stored before it (only the old keys could have signed it).
  Those before still count. An expected station whose as-run was set aside is ``no_report``
  with cause "station revoked"; the report counts every as-run set aside (``SetAside``).
- An as-run matches an occurrence on (station, stream, slot, scheduled_at as an instant); when a
  station sent several for one occurrence, the highest seq (its last word) counts.
- **Clock-untrusted plays.** An as-run saying ``complete`` with ``clock_trusted: false`` is
  counted as ``untrusted``, not as complete: the station cannot prove it played at the
  scheduled time, so it does not raise coverage, and it shows as a reason. Other outcomes under
  an untrusted clock count as what they say (a bad clock cannot make a failure better); their
  detail says the clock was untrusted. An as-run without the field counts as trusted (the
  protocol's schema does not require it).
- **Why.** Each expected station's outcome keeps a short ``cause`` (shared by like cases, what
  the "why" tables count) and a ``detail``: the as-run's outcome and reason; without an as-run,
  "station offline since ..." when its availability says it was down when the occurrence began,
  else "no report".
- A bulletin is a stream's slot; it is shown by the title of the slot's first titled item
  (playlists have no slot label), else by the slot id.
- Text from stations (reasons) is cut to ``MAX_TEXT`` characters with control characters
  replaced, so that no renderer can be made to emit terminal escapes or line breaks from it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from agent.core import strict
from agent.core.models import Playlist
from agent.core.planner import Occurrence, occurrences
from agent.core.targets import is_within
from agent.core.timefmt import parse_rfc3339
from province.availability import Availability, StationAvailability, availability
from province.errors import ProvinceError
from province.registry import Registry, StationRecord

# After an occurrence's media should have finished, how long before silence counts as no_report.
REPORT_GRACE = timedelta(minutes=5)
# Stations can only report an occurrence after it fired; a day's margin covers station clocks
# running ahead of the province's when selecting which stored as-runs to read.
_RECEIVED_MARGIN = timedelta(days=1)
DEFAULT_TZ = "Asia/Ho_Chi_Minh"
MAX_TEXT = 200
TOP_CAUSES = 5

# The statuses an expected station ends in, in column order.
STATUSES = ("complete", "untrusted", "partial", "failed", "missed", "no_report", "pending")

_COUNTED = {
    "complete": "complete",
    "partial": "partial",
    "preempted": "partial",
    "skipped": "partial",
    "failed": "failed",
    "missed": "missed",
}


def clean_text(value: object, limit: int = MAX_TEXT) -> str:
    """Station text made safe to show anywhere: a string, control characters (which include
    ESC, CR and LF) replaced by U+FFFD, at most ``limit`` characters, NFC (aligned columns)."""
    text = value if isinstance(value, str) else str(value)
    text = "".join("\ufffd" if unicodedata.category(c) == "Cc" else c for c in text[: limit * 2])
    text = unicodedata.normalize("NFC", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class StationOutcome:
    """What happened at one expected station for one occurrence."""

    station: str
    status: str  # one of STATUSES
    cause: str  # short and shared by like cases: "no report", "failed: media-missing"
    detail: str  # this station's story, e.g. "station offline since 2026-11-23 05:12 (+07)"
    clock_trusted: bool | None  # None: no as-run


@dataclass(frozen=True, slots=True)
class CoverageRow:
    """One occurrence in one commune: how many stations were expected, and how each fared."""

    day: date  # local day of the occurrence, in the report's time zone
    commune: str  # "25/08230"
    stream: str  # "issuer@target", as in as-run records
    slot: str
    title: str  # the bulletin's name for people: its first item's title, else the slot id
    scheduled_at: datetime  # UTC
    expected: int
    complete: int
    untrusted: int  # said complete with an untrusted clock: not counted as complete
    partial: int  # partial, preempted and skipped: the station sounded less than the slot
    failed: int
    missed: int
    no_report: int  # no as-run although the occurrence is over (plus REPORT_GRACE)
    pending: int  # no as-run yet, and the occurrence may still be playing or not yet due
    stations: tuple[StationOutcome, ...]  # one per expected station, by station id

    @property
    def coverage(self) -> float:
        return self.complete / self.expected if self.expected else 0.0

    @property
    def shortfalls(self) -> tuple[StationOutcome, ...]:
        return tuple(s for s in self.stations if s.status != "complete")


@dataclass(frozen=True, slots=True)
class Cause:
    """One reason stations fell short: how many station-occurrences, and which stations."""

    cause: str
    count: int
    stations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CommuneSummary:
    commune: str
    day: date | None  # None: the whole window
    occurrences: int
    expected: int
    complete: int
    untrusted: int
    partial: int
    failed: int
    missed: int
    no_report: int
    pending: int
    causes: tuple[Cause, ...]  # why not complete, most frequent first

    @property
    def coverage(self) -> float:
        return self.complete / self.expected if self.expected else 0.0


def newest_playlists(registry: Registry) -> list[Playlist]:
    """The newest published version of each stream; older versions are superseded."""
    newest: dict[tuple[str, str], Playlist] = {}
    for published in registry.published("playlist"):
        try:
            playlist = Playlist.from_body(strict.loads(published.body))
        except (ValueError, KeyError, TypeError) as exc:  # StrictDecodeError is a ValueError
            raise ProvinceError(
                f"the registry's playlist on {published.topic} ({published.published_at}) "
                f"cannot be read: {exc}"
            ) from exc
        current = newest.get(playlist.stream)
        if current is None or playlist.version > current.version:
            newest[playlist.stream] = playlist
    return [newest[stream] for stream in sorted(newest)]


@dataclass(frozen=True, slots=True)
class _AsRun:
    seq: int
    outcome: str  # as the station said it
    reason: str | None
    clock_trusted: bool


_Key = tuple[str, str, str, datetime]  # (station, stream, slot, scheduled instant)
SET_ASIDE_REVOKED = "station revoked"


@dataclass(frozen=True, slots=True)
class RevokedWindow:
    """When a station's word did not count: ``[start, end)``, end None while no replacement
    is enrolled."""

    start: datetime
    end: datetime | None
    reason: str

    def covers(self, moment: datetime) -> bool:
        return self.start <= moment and (self.end is None or moment < self.end)


@dataclass(frozen=True, slots=True)
class SetAside:
    """As-runs of one station not counted, and why."""

    station: str
    reason: str  # SET_ASIDE_REVOKED
    count: int
    detail: str  # "revoked from 2026-11-23 05:12 (+07): lost"


def revoked_windows(registry: Registry) -> dict[str, list[RevokedWindow]]:
    """Per station, the windows in which it was revoked: one per revoked certificate, and one
    open from the station's own ``revoked_at`` when no listed certificate covers it (a station
    marked revoked before certificates were listed, or with an unreadable time: from always)."""
    windows: dict[str, list[RevokedWindow]] = {}
    for r in registry.revocations():
        end = None if r.replaced_at is None else _instant(r.replaced_at)
        windows.setdefault(r.station, []).append(
            RevokedWindow(_instant(r.revoked_at) or datetime.min.replace(tzinfo=UTC), end, r.reason)
        )
    for station in registry.stations(include_revoked=True):
        if station.revoked_at is None:
            continue
        listed = windows.get(station.id.path, [])
        if not any(w.end is None for w in listed):
            start = _instant(station.revoked_at) or datetime.min.replace(tzinfo=UTC)
            listed.append(RevokedWindow(start, None, station.revoke_reason or "revoked"))
            windows[station.id.path] = listed
    return windows


def _instant(text: str) -> datetime | None:
    try:
        return parse_rfc3339(text).astimezone(UTC)
    except (ValueError, TypeError):
        try:  # the registry's own isoformat times (enrolled_at, replaced_at)
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _revoked_at(
    windows: list[RevokedWindow], played: datetime, received_at: str
) -> RevokedWindow | None:
    """The window that sets this as-run aside, if any."""
    received = _instant(received_at)
    for window in windows:
        if played < window.start:
            continue
        stored_before_replacement = (
            window.end is not None and received is not None and received < window.end
        )
        if window.covers(played) or stored_before_replacement:
            return window
    return None


def _asruns(
    registry: Registry,
    stations: Iterable[str],
    since: datetime,
    revoked: dict[str, list[RevokedWindow]] | None = None,
) -> tuple[dict[_Key, _AsRun], dict[_Key, RevokedWindow]]:
    """Each occurrence's last word from each station: the readable as-run with the highest seq;
    and the occurrences whose as-runs were set aside, with the revocation that did it."""
    found: dict[_Key, _AsRun] = {}
    set_aside: dict[_Key, RevokedWindow] = {}
    revoked = revoked or {}
    for report in registry.reports("asrun", stations, received_since=since):
        try:
            doc = strict.loads(report.body)
            scheduled = parse_rfc3339(doc["scheduled_at"]).astimezone(UTC)
            stream, slot = doc["stream"], doc["slot"]
            if not isinstance(stream, str) or not isinstance(slot, str):
                continue  # signed, yet names no occurrence (and a list would not hash)
            key = (report.station, stream, slot, scheduled)
            outcome = doc["outcome"]
            if outcome not in _COUNTED:
                continue
            reason = doc.get("reason")
            trusted = doc.get("clock_trusted") is not False
            started = doc.get("started_at")
            played = parse_rfc3339(started).astimezone(UTC) if started else scheduled
        except (ValueError, KeyError, TypeError):
            continue  # signed but unreadable: it cannot be matched, so it counts as no report
        window = _revoked_at(revoked.get(report.station, []), played, report.received_at)
        if window is not None:
            set_aside[key] = window
            continue
        previous = found.get(key)
        if previous is None or report.seq > previous.seq:
            found[key] = _AsRun(
                report.seq, outcome, None if reason is None else clean_text(reason), trusted
            )
    return found, set_aside


def _over(occurrence: Occurrence, now: datetime) -> bool:
    played = sum(item.duration_s or 0.0 for item in occurrence.items)
    return occurrence.start + timedelta(seconds=played) + REPORT_GRACE < now


def _title(occurrence: Occurrence) -> str:
    titled = next((item.title for item in occurrence.items if item.title), None)
    return clean_text(titled) if titled else occurrence.slot_id


def local_time(moment: datetime, tz: str) -> str:
    """``2026-11-23 05:12 (+07)``: how the reasons name a moment for a person."""
    local = moment.astimezone(ZoneInfo(tz))
    offset = local.strftime("%z")
    short = offset[:3] if offset.endswith("00") else f"{offset[:3]}:{offset[3:]}"
    return f"{local:%Y-%m-%d %H:%M} ({short})"


def _judge(
    station: str,
    asrun: _AsRun | None,
    over: bool,
    start: datetime,
    up: StationAvailability | None,
    tz: str,
    set_aside: RevokedWindow | None = None,
) -> StationOutcome:
    if asrun is None and set_aside is not None:
        detail = f"as-run set aside: {_revoked_words(set_aside, tz)}"
        return StationOutcome(station, "no_report", SET_ASIDE_REVOKED, detail, None)
    if asrun is not None:
        said = asrun.outcome if asrun.reason is None else f"{asrun.outcome}: {asrun.reason}"
        status = _COUNTED[asrun.outcome]
        if status == "complete" and not asrun.clock_trusted:
            return StationOutcome(
                station, "untrusted", "complete, clock untrusted",
                f"{said} (clock untrusted: when it played cannot be proved)", False,
            )  # fmt: skip
        detail = said if asrun.clock_trusted else f"{said} (clock untrusted)"
        return StationOutcome(station, status, said, detail, asrun.clock_trusted)
    if not over:
        return StationOutcome(station, "pending", "pending", "not over yet", None)
    if up is not None and up.judged[0] <= start < up.judged[1] and not up.up_at(start):
        since = up.down_since(start)
        detail = (
            f"station offline since {local_time(since, tz)}"
            if since is not None
            else "station offline (no heartbeat or birth since "
            f"{local_time(up.lookback_start, tz)})"
        )
        return StationOutcome(station, "no_report", "station offline", detail, None)
    return StationOutcome(
        station, "no_report", "no report", "no as-run although the occurrence is over", None
    )


def coverage(
    registry: Registry,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
    *,
    tz: str = DEFAULT_TZ,
    available: Availability | None = None,
) -> list[CoverageRow]:
    """One row per (commune, stream, slot, scheduled start) for occurrences starting in
    ``[window_start, window_end)``, sorted by local day (in ``tz``), commune, time, stream and
    slot.

    Each expected station counts once: ``complete``; ``untrusted`` (complete with an untrusted
    clock); ``partial`` (outcomes partial, preempted and skipped: the slot did not sound in full
    at that station); ``failed``; ``missed``; or, without an as-run, ``no_report`` when the
    occurrence is over (start + the sum of its media durations + 5 minutes before ``now``) and
    ``pending`` otherwise. ``available`` (computed when not given) tells "station offline" from
    plain "no report".
    """
    return _coverage(registry, window_start, window_end, now, tz=tz, available=available)[0]


def _revoked_words(window: RevokedWindow, tz: str) -> str:
    since = "always" if window.start.year == 1 else local_time(window.start, tz)
    return f"the station was revoked from {since}: {clean_text(window.reason)}"


def _coverage(
    registry: Registry,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
    *,
    tz: str = DEFAULT_TZ,
    available: Availability | None = None,
) -> tuple[list[CoverageRow], list[SetAside]]:
    zone = ZoneInfo(tz)
    if available is None:
        available = availability(registry, window_start, window_end, now, tz=tz)
    stations = registry.stations(include_revoked=True)
    revoked = revoked_windows(registry)
    playlists = newest_playlists(registry)
    asruns, set_aside = _asruns(
        registry, [s.id.path for s in stations], window_start - _RECEIVED_MARGIN, revoked
    )
    rows: list[CoverageRow] = []
    for playlist in playlists:
        by_commune: dict[str, list[StationRecord]] = {}
        for station in stations:
            if is_within(station.id.path, playlist.target):
                commune = f"{station.id.province}/{station.id.commune}"
                by_commune.setdefault(commune, []).append(station)
        if not by_commune:
            continue
        for occurrence in occurrences([playlist], window_start, window_end):
            over = _over(occurrence, now)
            stream = occurrence.stream_name
            for commune, everyone in by_commune.items():
                # A station revoked when the occurrence began was not expected to play it.
                members = [
                    s
                    for s in everyone
                    if not any(w.covers(occurrence.start) for w in revoked.get(s.id.path, []))
                ]
                if not members:
                    continue
                judged = tuple(
                    _judge(
                        s.id.path,
                        asruns.get(
                            key := (s.id.path, stream, occurrence.slot_id, occurrence.start)
                        ),
                        over,
                        occurrence.start,
                        available.stations.get(s.id.path),
                        tz,
                        set_aside.get(key),
                    )
                    for s in members
                )
                counts = {status: 0 for status in STATUSES}
                for outcome in judged:
                    counts[outcome.status] += 1
                rows.append(
                    CoverageRow(
                        day=occurrence.start.astimezone(zone).date(),
                        commune=commune,
                        stream=stream,
                        slot=occurrence.slot_id,
                        title=_title(occurrence),
                        scheduled_at=occurrence.start,
                        expected=len(members),
                        stations=judged,
                        **counts,
                    )
                )
    rows.sort(key=lambda r: (r.day, r.commune, r.scheduled_at, r.stream, r.slot))
    return rows, _set_aside_tally(set_aside, window_start, window_end, tz)


def _set_aside_tally(
    set_aside: dict[_Key, RevokedWindow], start: datetime, end: datetime, tz: str
) -> list[SetAside]:
    """Per station, the occurrences in the window whose as-runs were set aside."""
    counts: dict[str, int] = {}
    why: dict[str, RevokedWindow] = {}
    for (station, _stream, _slot, scheduled), window in set_aside.items():
        if start <= scheduled < end:
            counts[station] = counts.get(station, 0) + 1
            why[station] = window
    return [
        SetAside(station, SET_ASIDE_REVOKED, counts[station], _revoked_words(why[station], tz))
        for station in sorted(counts)
    ]


def _causes(rows: Iterable[CoverageRow]) -> tuple[Cause, ...]:
    counts: dict[str, int] = {}
    who: dict[str, list[str]] = {}
    for row in rows:
        for outcome in row.shortfalls:
            counts[outcome.cause] = counts.get(outcome.cause, 0) + 1
            names = who.setdefault(outcome.cause, [])
            if outcome.station not in names:
                names.append(outcome.station)
    order = sorted(counts, key=lambda c: (-counts[c], c))
    return tuple(Cause(c, counts[c], tuple(sorted(who[c]))) for c in order)


def _summary(commune: str, day: date | None, rows: list[CoverageRow]) -> CommuneSummary:
    sums = {status: sum(getattr(r, status) for r in rows) for status in STATUSES}
    return CommuneSummary(
        commune=commune,
        day=day,
        occurrences=len(rows),
        expected=sum(r.expected for r in rows),
        causes=_causes(rows),
        **sums,
    )


def summarize(rows: Iterable[CoverageRow]) -> list[CommuneSummary]:
    """Per commune over the whole window: its occurrences, the station counts summed over them,
    and the causes of every shortfall."""
    groups: dict[str, list[CoverageRow]] = {}
    for row in rows:
        groups.setdefault(row.commune, []).append(row)
    return [_summary(commune, None, group) for commune, group in sorted(groups.items())]


def summarize_days(rows: Iterable[CoverageRow]) -> list[CommuneSummary]:
    """Per local day and commune, like ``summarize``."""
    groups: dict[tuple[date, str], list[CoverageRow]] = {}
    for row in rows:
        groups.setdefault((row.day, row.commune), []).append(row)
    return [_summary(commune, day, group) for (day, commune), group in sorted(groups.items())]


def below_full(summaries: Iterable[CommuneSummary]) -> list[CommuneSummary]:
    """The communes (or commune-days) below 100%, worst first, each with its causes."""
    short = [s for s in summaries if s.expected and s.complete < s.expected]
    return sorted(short, key=lambda s: (s.coverage, s.commune, s.day or date.min))


def top_causes(summary: CommuneSummary, limit: int = TOP_CAUSES) -> str:
    """``"no report ×3; failed: media-missing ×1"``: the why in one line."""
    shown = [f"{c.cause} ×{c.count}" for c in summary.causes[:limit]]
    rest = len(summary.causes) - limit
    return "; ".join(shown + ([f"{rest} more"] if rest > 0 else []))


@dataclass(frozen=True, slots=True)
class CoverageReport:
    """Everything one coverage run found, for the renderers."""

    window_start: datetime
    window_end: datetime
    now: datetime
    tz: str
    province: str | None
    rows: list[CoverageRow]
    communes: list[CommuneSummary]  # whole window
    days: list[CommuneSummary]  # per local day
    available: Availability
    set_aside: list[SetAside] = field(default_factory=list)  # as-runs not counted, and why

    @property
    def set_aside_count(self) -> int:
        return sum(s.count for s in self.set_aside)


def build_report(
    registry: Registry,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
    tz: str = DEFAULT_TZ,
) -> CoverageReport:
    """Coverage, its summaries and availability over one window, computed once."""
    available = availability(registry, window_start, window_end, now, tz=tz)
    rows, set_aside = _coverage(registry, window_start, window_end, now, tz=tz, available=available)
    return CoverageReport(
        window_start=window_start,
        window_end=window_end,
        now=now,
        tz=tz,
        province=registry.meta("province"),
        rows=rows,
        communes=summarize(rows),
        days=summarize_days(rows),
        available=available,
        set_aside=set_aside,
    )
