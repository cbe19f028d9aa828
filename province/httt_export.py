"""Export of station pings and play logs in the field naming of provincial source-information
systems (HTTT nguồn), and ``loa-province export``.

This module owns the mapping from what Loa stores to those field names, and the files it
writes; the registry supplies heartbeats, births and Wills, and as-runs. The mapping is two
declarative tables, ``PING_FIELDS`` and ``PLAY_FIELDS`` (field name -> where its value comes
from), so that a province whose system spells a field otherwise (``CumLoaId``) or codes a value
otherwise changes one line. ``docs/httt-export.md`` explains each field.

The names follow what deployed systems send (vendor station firmware posting to provincial
"ping" and "log" endpoints); they have **not** been checked against the annexes of Circular
39/2020/TT-BTTTT or the ministry's HTTT nguồn guidance (CV 1273/2021, CV 2455/2023).

Rules:
- Pings are heartbeats (at their ``ts``; at the time received when the station said its clock
  was untrusted) and births and Wills (at the time received), in ``[--from, --to)``.
- Play logs are as-runs whose ``scheduled_at`` lies in ``[--from, --to)``, the last word (the
  highest seq) of each station for each occurrence.
- Every string a station wrote passes ``coverage.clean_text``; CSV cells that a spreadsheet
  would read as a formula get a leading apostrophe. JSON is UTF-8, not ASCII-escaped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.core import strict
from agent.core.targets import StationId
from agent.core.timefmt import format_rfc3339, parse_rfc3339
from hal.files import atomic_write
from province import cli_collect
from province.coverage import DEFAULT_TZ, clean_text, newest_playlists
from province.coverage_render import csv_cell
from province.errors import ProvinceError
from province.registry import Registry, received_at_text

# As-runs and heartbeats are read from this long before --from: a report is received after it
# was made (stations catch up after an outage), never before, unless a station clock runs ahead.
_RECEIVED_MARGIN = timedelta(days=1)

# TrangThaiHoatDong as deployed firmware codes it: 0 playing, 1 paused, 2 stopped. A Loa
# station never pauses; "fault" has no code of its own there, and counts as stopped.
OPERATING_CODE = {"scheduled": 0, "emergency": 0, "live": 0, "test": 0, "idle": 2, "fault": 2}


@dataclass(frozen=True, slots=True)
class Ping:
    """One sign of life: a heartbeat, a birth or a Will."""

    station: StationId
    kind: str  # heartbeat | birth | will
    moment: datetime
    state: str | None  # heartbeat's state
    connected: bool | None
    volume: int | None
    agent_version: str | None
    seq: int | None  # heartbeat seq


@dataclass(frozen=True, slots=True)
class Play:
    """One as-run, with the title the published playlist gives its media."""

    station: StationId
    stream: str
    slot: str
    media: str | None
    title: str | None
    scheduled_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    played_s: float
    outcome: str
    reason: str | None
    volume: int | None
    clock_trusted: bool
    seq: int


@dataclass(frozen=True, slots=True)
class Field:
    name: str  # the HTTT nguồn field name
    source: str  # where the value comes from, for people (docs/httt-export.md says the same)
    get: Callable[[Any], object]
    loa: bool = False  # True: Loa's own addition, not seen in deployed systems


def when(moment: datetime | None) -> str | None:
    """Times as RFC 3339 with Vietnam's offset (one deployed firmware sends Unix seconds
    instead: ``int(moment.timestamp())`` here would say the same)."""
    return None if moment is None else format_rfc3339(moment.astimezone(ZoneInfo(DEFAULT_TZ)))


# -- the mapping ---------------------------------------------------------------------------------

PING_FIELDS: tuple[Field, ...] = (
    Field("NguonID", "province code (PP of the station id)", lambda p: p.station.province),
    Field("DichID", "commune code (CCCCC of the station id)", lambda p: p.station.commune),
    Field("CumLoaID", "station id PP/CCCCC/name", lambda p: p.station.path),
    Field("TenThietBi", "station name (the last part of its id)", lambda p: p.station.name),
    Field(
        "TrangThaiHoatDong",
        "heartbeat state coded 0 playing (scheduled, emergency, live, test), 2 stopped (idle, "
        "fault); empty for births and Wills",
        lambda p: None if p.state is None else OPERATING_CODE.get(p.state),
    ),
    Field(
        "TrangThaiKetNoi",
        "1 connected, 0 not: heartbeat link.connected; birth 1, Will 0",
        lambda p: None if p.connected is None else int(p.connected),
    ),
    Field("AmLuong", "heartbeat volume, 0-100", lambda p: p.volume),
    Field(
        "ThoiDiem", "heartbeat ts, or when a birth or Will was received", lambda p: when(p.moment)
    ),
    Field("PhienBanUngDung", "agent version (heartbeat, birth)", lambda p: p.agent_version),
    Field("LoaiBanGhi", "heartbeat, birth or will", lambda p: p.kind, loa=True),
)

PLAY_FIELDS: tuple[Field, ...] = (
    Field("NguonID", "province code (PP of the station id)", lambda r: r.station.province),
    Field("DichID", "commune code (CCCCC of the station id)", lambda r: r.station.commune),
    Field("CumLoaID", "station id PP/CCCCC/name", lambda r: r.station.path),
    Field("TenThietBi", "station name (the last part of its id)", lambda r: r.station.name),
    Field("BanTinID", "as-run media: the item names played, comma-joined", lambda r: r.media),
    Field(
        "LichPhatID", "the slot: stream/slot, e.g. 25@25/morning", lambda r: f"{r.stream}/{r.slot}"
    ),
    Field("TieuDe", "the media's title in the newest published playlist", lambda r: r.title),
    Field(
        "ThoiDiemBatDau",
        "as-run started_at (empty when it never started)",
        lambda r: when(r.started_at),
    ),
    Field("ThoiDiemKetThuc", "as-run ended_at", lambda r: when(r.ended_at)),
    Field("ThoiLuong", "as-run played_s, whole seconds", lambda r: round(r.played_s)),
    Field("AmLuong", "as-run volume, 0-100", lambda r: r.volume),
    Field(
        "KetQua",
        "as-run outcome: complete, partial, preempted, skipped, missed, failed",
        lambda r: r.outcome,
    ),
    Field("ThoiDiemDuKien", "as-run scheduled_at", lambda r: when(r.scheduled_at), loa=True),
    Field("LyDo", "as-run reason", lambda r: r.reason, loa=True),
    Field(
        "DongHoTinCay",
        "as-run clock_trusted: false means its times cannot be proved",
        lambda r: r.clock_trusted,
        loa=True,
    ),
)


def record(fields: Sequence[Field], source: object) -> dict[str, object]:
    return {f.name: f.get(source) for f in fields}


# -- reading the registry ------------------------------------------------------------------------


def _doc(body: bytes) -> dict[str, Any] | None:
    try:
        doc = strict.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return clean_text(value) if isinstance(value, str) else None


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_rfc3339(value)
    except ValueError:
        return None


def pings(registry: Registry, start: datetime, end: datetime) -> list[Ping]:
    """Heartbeats, births and Wills of every station (revoked ones too) in ``[start, end)``,
    by station then time."""
    stations = {s.id.path: s.id for s in registry.stations(include_revoked=True)}
    found: list[Ping] = []
    for report in registry.reports("heartbeat", stations, received_since=start - _RECEIVED_MARGIN):
        doc = _doc(report.body)
        if doc is None:
            continue
        clock, link = doc.get("clock"), doc.get("link")
        trusted = not (isinstance(clock, dict) and clock.get("trusted") is False)
        moment = (_time(doc.get("ts")) if trusted else None) or parse_rfc3339(report.received_at)
        connected = link.get("connected") if isinstance(link, dict) else None
        state = doc.get("state")
        found.append(
            Ping(
                station=stations[report.station], kind="heartbeat", moment=moment,
                state=clean_text(state) if isinstance(state, str) else None,
                connected=connected if isinstance(connected, bool) else None,
                volume=_int(doc.get("volume")), agent_version=_text(doc.get("agent_version")),
                seq=report.seq,
            )
        )  # fmt: skip
    for path, station in stations.items():
        for state in registry.state_history(path, received_at_text(start), received_at_text(end)):
            doc = _doc(state.body) or {}
            found.append(
                Ping(
                    station=station, kind="birth" if state.online else "will",
                    moment=parse_rfc3339(state.received_at), state=None, connected=state.online,
                    volume=None, agent_version=_text(doc.get("agent_version")), seq=None,
                )
            )  # fmt: skip
    inside = [p for p in found if start <= p.moment < end]
    return sorted(inside, key=lambda p: (p.station.path, p.moment, p.kind))


def plays(registry: Registry, start: datetime, end: datetime) -> list[Play]:
    """The last word of each station on each occurrence scheduled in ``[start, end)``, by
    station then scheduled time."""
    stations = {s.id.path: s.id for s in registry.stations(include_revoked=True)}
    titles = {
        (f"{p.issuer}@{p.target}", name): media.title
        for p in newest_playlists(registry)
        for name, media in p.media.items()
    }
    last: dict[tuple[str, str, str, datetime], Play] = {}
    for report in registry.reports("asrun", stations, received_since=start - _RECEIVED_MARGIN):
        doc = _doc(report.body)
        scheduled = _time(doc.get("scheduled_at")) if doc else None
        if doc is None or scheduled is None or not start <= scheduled < end:
            continue
        stream, slot, outcome = doc.get("stream"), doc.get("slot"), doc.get("outcome")
        if not (isinstance(stream, str) and isinstance(slot, str) and isinstance(outcome, str)):
            continue
        media = _text(doc.get("media"))
        first_item = media.split(",")[0] if media else None
        title = titles.get((stream, first_item)) if first_item else None
        played = doc.get("played_s")
        play = Play(
            station=stations[report.station], stream=clean_text(stream), slot=clean_text(slot),
            media=media, title=clean_text(title) if title else None,
            scheduled_at=scheduled, started_at=_time(doc.get("started_at")),
            ended_at=_time(doc.get("ended_at")),
            played_s=float(played) if isinstance(played, int | float) else 0.0,
            outcome=clean_text(outcome), reason=_text(doc.get("reason")),
            volume=_int(doc.get("volume")), clock_trusted=doc.get("clock_trusted") is not False,
            seq=report.seq,
        )  # fmt: skip
        key = (report.station, stream, slot, scheduled.astimezone(UTC))
        if key not in last or last[key].seq < report.seq:
            last[key] = play
    return sorted(last.values(), key=lambda p: (p.station.path, p.scheduled_at, p.stream, p.slot))


# -- files ---------------------------------------------------------------------------------------


def to_json(fields: Sequence[Field], sources: Iterable[object]) -> str:
    return json.dumps([record(fields, s) for s in sources], ensure_ascii=False, indent=1) + "\n"


def _csv_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return csv_cell(str(value))


def to_csv(fields: Sequence[Field], sources: Iterable[object]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([f.name for f in fields])
    for source in sources:
        writer.writerow([_csv_value(f.get(source)) for f in fields])
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class Written:
    pings: int
    plays: int
    files: tuple[Path, ...]


def export(registry: Registry, start: datetime, end: datetime, out: Path) -> Written:
    """Write ``pings.json``, ``pings.csv``, ``play-logs.json`` and ``play-logs.csv`` to ``out``."""
    found_pings, found_plays = pings(registry, start, end), plays(registry, start, end)
    files = {
        out / "pings.json": to_json(PING_FIELDS, found_pings),
        out / "pings.csv": to_csv(PING_FIELDS, found_pings),
        out / "play-logs.json": to_json(PLAY_FIELDS, found_plays),
        out / "play-logs.csv": to_csv(PLAY_FIELDS, found_plays),
    }
    for path, text in files.items():
        atomic_write(path, text.encode("utf-8"))
    return Written(len(found_pings), len(found_plays), tuple(files))


# -- the subcommand ------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "export", help="station pings and play logs in HTTT nguồn field names (JSON and CSV)"
    )
    parser.add_argument("--home", type=Path, help=cli_collect.HOME_HELP)
    parser.add_argument("--from", dest="start", required=True, metavar="TIME",
                        help="RFC 3339 with offset, e.g. 2026-11-23T00:00:00+07:00")  # fmt: skip
    parser.add_argument("--to", dest="end", required=True, metavar="TIME", help="RFC 3339")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="written into")
    parser.set_defaults(handler=cmd_export)


def _moment(text: str, option: str) -> datetime:
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise ProvinceError(f"{option}: {exc} (e.g. 2026-11-23T00:00:00+07:00)") from exc


def cmd_export(args: argparse.Namespace) -> int:
    start, end = _moment(args.start, "--from"), _moment(args.end, "--to")
    if start >= end:
        raise ProvinceError("--from must be before --to")
    home: Path = args.home or cli_collect.default_home()
    with cli_collect._open_registry(home) as registry:
        written = export(registry, start, end, args.out)
    print(f"exported {written.pings} pings and {written.plays} play logs to {args.out}")
    for path in written.files:
        print(f"  {path}")
    return 0
