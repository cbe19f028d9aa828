"""Coverage: what the province expected its stations to play, against what they say they played.

This module owns the computation and its rendering (text table, CSV), nothing else: the
registry supplies what was published, the active stations and the stored as-run records; the
plan comes from ``agent.core.planner``, the very planner the stations run, so both sides agree on
which occurrences exist and when.

Rules (see ``coverage``):
- A stream (issuer, target) is judged by its newest published version only; older versions are
  superseded, as they are on a station, which keeps one playlist per stream. A window reaching
  back before the newest version was published is therefore judged by that newest version.
- Expected: every active (not revoked) station inside the playlist's target, counted in its
  own commune. Stations outside the target, and revoked ones, are not expected.
- An as-run matches an occurrence on (station, stream, slot, scheduled_at as an instant); when a
  station sent several for one occurrence, the highest seq (its last word) counts.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from agent.core import strict
from agent.core.models import Playlist
from agent.core.planner import Occurrence, occurrences
from agent.core.targets import is_within
from agent.core.timefmt import format_rfc3339, parse_rfc3339
from province.errors import ProvinceError
from province.registry import Registry, StationRecord

# After an occurrence's media should have finished, how long before silence counts as no_report.
REPORT_GRACE = timedelta(minutes=5)
# Stations can only report an occurrence after it fired; a day's margin covers station clocks
# running ahead of the province's when selecting which stored as-runs to read.
_RECEIVED_MARGIN = timedelta(days=1)
DEFAULT_TZ = "Asia/Ho_Chi_Minh"

_COUNTED = {
    "complete": "complete",
    "partial": "partial",
    "preempted": "partial",
    "skipped": "partial",
    "failed": "failed",
    "missed": "missed",
}


@dataclass(frozen=True, slots=True)
class CoverageRow:
    """One occurrence in one commune: how many stations were expected, and how each fared."""

    commune: str  # "25/08230"
    stream: str  # "issuer@target", as in as-run records
    slot: str
    scheduled_at: datetime  # UTC
    expected: int
    complete: int
    partial: int  # partial, preempted and skipped: the station sounded less than the slot
    failed: int
    missed: int
    no_report: int  # no as-run although the occurrence is over (plus REPORT_GRACE)
    pending: int  # no as-run yet, and the occurrence may still be playing or not yet due

    @property
    def coverage(self) -> float:
        return self.complete / self.expected if self.expected else 0.0


@dataclass(frozen=True, slots=True)
class CommuneSummary:
    commune: str
    occurrences: int
    expected: int
    complete: int
    partial: int
    failed: int
    missed: int
    no_report: int
    pending: int

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


def _outcomes(
    registry: Registry, stations: Iterable[str], since: datetime
) -> dict[tuple[str, str, str, datetime], str]:
    """(station, stream, slot, scheduled instant) -> counted outcome, the highest seq winning."""
    found: dict[tuple[str, str, str, datetime], tuple[int, str]] = {}
    for report in registry.reports("asrun", stations, received_since=since):
        try:
            doc = strict.loads(report.body)
            key = (
                report.station,
                doc["stream"],
                doc["slot"],
                parse_rfc3339(doc["scheduled_at"]).astimezone(UTC),
            )
            counted = _COUNTED[doc["outcome"]]
        except (ValueError, KeyError, TypeError):
            continue  # signed but unreadable: it cannot be matched, so it counts as no report
        previous = found.get(key)
        if previous is None or report.seq > previous[0]:
            found[key] = (report.seq, counted)
    return {key: outcome for key, (_, outcome) in found.items()}


def _over(occurrence: Occurrence, now: datetime) -> bool:
    played = sum(item.duration_s or 0.0 for item in occurrence.items)
    return occurrence.start + timedelta(seconds=played) + REPORT_GRACE < now


def coverage(
    registry: Registry, window_start: datetime, window_end: datetime, now: datetime
) -> list[CoverageRow]:
    """One row per (commune, stream, slot, scheduled start) for occurrences starting in
    ``[window_start, window_end)``, sorted by time, commune, stream and slot.

    Each expected station counts once: ``complete``; ``partial`` (outcomes partial, preempted
    and skipped: the slot did not sound in full at that station); ``failed``; ``missed``; or,
    without an as-run, ``no_report`` when the occurrence is over (start + the sum of its media
    durations + 5 minutes before ``now``) and ``pending`` otherwise.
    """
    stations = registry.stations()
    playlists = newest_playlists(registry)
    outcomes = _outcomes(registry, [s.id.path for s in stations], window_start - _RECEIVED_MARGIN)
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
            for commune, members in by_commune.items():
                counts = dict.fromkeys(("complete", "partial", "failed", "missed"), 0)
                silent = 0
                for station in members:
                    key = (
                        station.id.path,
                        occurrence.stream_name,
                        occurrence.slot_id,
                        occurrence.start,
                    )
                    outcome = outcomes.get(key)
                    if outcome is None:
                        silent += 1
                    else:
                        counts[outcome] += 1
                rows.append(
                    CoverageRow(
                        commune=commune,
                        stream=occurrence.stream_name,
                        slot=occurrence.slot_id,
                        scheduled_at=occurrence.start,
                        expected=len(members),
                        complete=counts["complete"],
                        partial=counts["partial"],
                        failed=counts["failed"],
                        missed=counts["missed"],
                        no_report=silent if over else 0,
                        pending=0 if over else silent,
                    )
                )
    rows.sort(key=lambda r: (r.scheduled_at, r.commune, r.stream, r.slot))
    return rows


def summarize(rows: Iterable[CoverageRow]) -> list[CommuneSummary]:
    """Per commune: its occurrences and the station counts summed over them."""
    totals: dict[str, list[int]] = {}
    for row in rows:
        t = totals.setdefault(row.commune, [0] * 8)
        for i, value in enumerate(
            (1, row.expected, row.complete, row.partial, row.failed, row.missed,
             row.no_report, row.pending)
        ):  # fmt: skip
            t[i] += value
    return [CommuneSummary(commune, *t) for commune, t in sorted(totals.items())]


# -- rendering -----------------------------------------------------------------------------------

_COUNT_HEADERS = (
    "expected", "complete", "partial", "failed", "missed", "no report", "pending", "coverage",
)  # fmt: skip


def _percent(complete: int, expected: int) -> str:
    return f"{100 * complete / expected:.1f}%" if expected else "-"


def _counts(r: CoverageRow | CommuneSummary) -> list[str]:
    numbers = (r.expected, r.complete, r.partial, r.failed, r.missed, r.no_report, r.pending)
    return [str(n) for n in numbers] + [_percent(r.complete, r.expected)]


def _sums(rows: Sequence[CoverageRow] | Sequence[CommuneSummary]) -> list[str]:
    columns = ("expected", "complete", "partial", "failed", "missed", "no_report", "pending")
    sums = [sum(getattr(r, c) for r in rows) for c in columns]
    return [str(n) for n in sums] + [_percent(sums[1], sums[0])]


def _align(header: Sequence[str], body: Sequence[Sequence[str]], text_columns: int) -> str:
    """Text columns left-aligned, numbers right-aligned, a rule under the header and above the
    last line (the total)."""
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(line: Sequence[str]) -> str:
        cells = [
            cell.ljust(w) if i < text_columns else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    data = [render(line) for line in body[:-1]]
    lines = [render(header), rule, *data, *([rule] if data else []), render(body[-1])]
    return "\n".join(lines) + "\n"


def render_table(rows: Sequence[CoverageRow], tz: str = DEFAULT_TZ) -> str:
    """The rows as an aligned text table, times local to ``tz``, ending with a total line."""
    zone = ZoneInfo(tz)
    header = ["commune", f"time ({tz})", "stream", "slot", *_COUNT_HEADERS]
    body = [
        [
            r.commune,
            r.scheduled_at.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
            r.stream,
            r.slot,
            *_counts(r),
        ]
        for r in rows
    ]
    occurrences_word = "occurrence" if len(rows) == 1 else "occurrences"
    body.append(["TOTAL", f"{len(rows)} {occurrences_word}", "", "", *_sums(rows)])
    return _align(header, body, text_columns=4)


def render_summary(summaries: Sequence[CommuneSummary]) -> str:
    """The per-commune summary as an aligned text table, ending with a total line."""
    header = ["commune", "occurrences", *_COUNT_HEADERS]
    body = [[s.commune, str(s.occurrences), *_counts(s)] for s in summaries]
    body.append(["TOTAL", str(sum(s.occurrences for s in summaries)), *_sums(summaries)])
    return _align(header, body, text_columns=1)


CSV_FIELDS = (
    "commune", "stream", "slot", "scheduled_at", "expected", "complete", "partial", "failed",
    "missed", "no_report", "pending", "coverage",
)  # fmt: skip


def render_csv(rows: Iterable[CoverageRow]) -> str:
    """One CSV line per row, ``scheduled_at`` in RFC 3339 UTC, ``coverage`` a fraction."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        writer.writerow(
            [r.commune, r.stream, r.slot, format_rfc3339(r.scheduled_at), r.expected,
             r.complete, r.partial, r.failed, r.missed, r.no_report, r.pending,
             f"{r.coverage:.4f}"]
        )  # fmt: skip
    return out.getvalue()
