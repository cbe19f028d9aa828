"""``loa-province stations``: the registry's stations with their live state.

This module owns that view: for each enrolled station, its enrollment (since when, its signing
key, its certificate's end) and what it last said: online or offline (its last birth or Will),
the age of its last heartbeat, what it is playing (the heartbeat's ``state``), its faults and
alerts (the heartbeat's ``alerts``, hardware faults still standing and recent fault events), and
its outbox backlog (reports not yet acknowledged, by kind, as its last heartbeat counted them).
Printed as a table, or as JSON with ``--json``. It reads the registry and writes nothing.
Revoked stations (``loa-province revoke``) are left out unless ``--all``, which shows them as
``REVOKED`` with when and why: the list is of stations in service, and a stolen station's last
word is evidence, not its state.

Faults: a hardware input fault (``mains-lost``, ``amp-power-lost``, ``speaker-line-fault``)
stands until its ``-restored`` event (looked for over 30 days); other fault events (media and
cache trouble, silence on air, dropped reports) are listed with their count when they came
within ``--recent`` hours.
Everything a station wrote is shown through ``coverage.clean_text``: no terminal escapes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.core import strict
from agent.core.timefmt import format_rfc3339, parse_rfc3339
from province import cli_collect, enrollment
from province.coverage import clean_text
from province.coverage_render import align_table
from province.errors import ProvinceError
from province.home import default_home, open_home_registry
from province.registry import Registry, StoredReport

# Hardware faults that stand until their pair says the input is back.
STANDING = {
    "mains-lost": "mains-restored",
    "amp-power-lost": "amp-power-restored",
    "speaker-line-fault": "speaker-line-restored",
}
# Fault events that are counted when recent (nothing clears them).
RECENT_FAULTS = frozenset(
    {"output-silent", "media-unreachable", "media-too-large", "media-hash-mismatch",
     "media-corrupt", "cache-full", "cache-write-failed", "reports-dropped",
     "reports-unkept", "state-unwritable"}
)  # fmt: skip
DEFAULT_RECENT_H = 24.0
STANDING_LOOKBACK = timedelta(days=30)
_SHORT = 40  # a station's alert or code is a word, not an essay


@dataclass(frozen=True, slots=True)
class StationLive:
    station: str
    commune: str
    enrolled_at: str
    signing_key: str  # fingerprint
    certificate_until: str  # YYYY-MM-DD
    online: bool | None  # None: no birth or Will ever received
    state_received_at: str | None
    last_heartbeat: str | None  # RFC 3339: its ts, or when received if its clock was untrusted
    heartbeat_age_s: float | None
    playing: str | None  # the heartbeat's state: idle, scheduled, emergency, live, test, fault
    clock_trusted: bool | None
    agent_version: str | None
    outbox: dict[str, int] = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    revoked_at: str | None = None
    revoke_reason: str | None = None

    @property
    def outbox_total(self) -> int:
        return sum(self.outbox.values())


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "stations", help="enrolled stations with their live state (online, heartbeat, faults)"
    )
    parser.add_argument("--home", type=Path, help=cli_collect.HOME_HELP)
    parser.add_argument("--json", action="store_true", help="JSON instead of the table")
    parser.add_argument(
        "--recent",
        type=float,
        default=DEFAULT_RECENT_H,
        metavar="H",
        help=f"fault events from the last H hours (default {DEFAULT_RECENT_H:g})",
    )
    parser.add_argument(
        "--all", action="store_true", help="revoked stations too (shown as REVOKED)"
    )
    parser.set_defaults(handler=cmd_stations)


def cmd_stations(args: argparse.Namespace) -> int:
    if args.recent <= 0:
        raise ProvinceError(f"--recent must be positive, got {args.recent:g}")
    now = datetime.now(UTC)
    with open_home_registry(args.home or default_home()) as registry:
        stations = live_state(registry, now, timedelta(hours=args.recent), args.all)
        hidden = 0 if args.all else len(registry.stations(include_revoked=True)) - len(stations)
    if args.json:
        doc = [{**asdict(s), "outbox_total": s.outbox_total} for s in stations]
        print(json.dumps(doc, ensure_ascii=False, indent=1))
        return 0
    if not stations:
        print("no stations enrolled")
        return 0
    sys.stdout.write(render_stations(stations, color=sys.stdout.isatty() and not _no_color()))
    if hidden:
        print(f"{hidden} revoked station{'' if hidden == 1 else 's'} not shown (--all shows them)")
    return 0


def _no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def live_state(
    registry: Registry, now: datetime, recent: timedelta, include_revoked: bool = False
) -> list[StationLive]:
    """Every active station's (with ``include_revoked``, every station's) enrollment and last
    word, by station id."""
    records = registry.stations(include_revoked=include_revoked)
    faults = recent_faults(registry, [r.id.path for r in records], now - recent, now)
    result = []
    for record in records:
        path = record.id.path
        state = registry.station_state(path)
        beat = _heartbeat(registry.last_report(path, "heartbeat"))
        moment = beat.get("moment")
        result.append(
            StationLive(
                station=path,
                commune=f"{record.id.province}/{record.id.commune}",
                enrolled_at=record.enrolled_at,
                signing_key=enrollment.signing_fingerprint(record.signing_public),
                certificate_until=_until(record.cert_pem),
                online=None if state is None else state.online,
                state_received_at=None if state is None else state.received_at,
                last_heartbeat=format_rfc3339(moment) if isinstance(moment, datetime) else None,
                heartbeat_age_s=(now - moment).total_seconds()
                if isinstance(moment, datetime)
                else None,
                playing=beat.get("state"),
                clock_trusted=beat.get("clock_trusted"),
                agent_version=beat.get("agent_version"),
                outbox=beat.get("outbox", {}),
                alerts=beat.get("alerts", []),
                faults=faults.get(path, []),
                revoked_at=record.revoked_at,
                revoke_reason=None
                if record.revoke_reason is None
                else clean_text(record.revoke_reason),
            )
        )
    return result


def _until(cert_pem: bytes) -> str:
    try:
        return f"{enrollment.not_after(cert_pem):%Y-%m-%d}"
    except ProvinceError:  # not a certificate: say so rather than fail the whole list
        return "?"


def _heartbeat(report: StoredReport | None) -> dict[str, Any]:
    """What the table needs from the last heartbeat, each value checked and cleaned."""
    if report is None:
        return {}
    try:
        doc = strict.loads(report.body)
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    found: dict[str, Any] = {}
    clock = doc.get("clock")
    trusted = clock.get("trusted") if isinstance(clock, dict) else None
    found["clock_trusted"] = trusted if isinstance(trusted, bool) else None
    moment = None
    if trusted is not False and isinstance(doc.get("ts"), str):
        try:
            moment = parse_rfc3339(doc["ts"])
        except ValueError:
            moment = None
    found["moment"] = (moment or parse_rfc3339(report.received_at)).astimezone(UTC)
    for name in ("state", "agent_version"):
        if isinstance(doc.get(name), str):
            found[name] = clean_text(doc[name], _SHORT)
    outbox = doc.get("outbox")
    if isinstance(outbox, dict):
        found["outbox"] = {
            clean_text(k, _SHORT): v
            for k, v in sorted(outbox.items())
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0
        }
    alerts = doc.get("alerts")
    if isinstance(alerts, list):
        found["alerts"] = [clean_text(a, _SHORT) for a in alerts[:10] if isinstance(a, str)]
    return found


def recent_faults(
    registry: Registry, stations: Sequence[str], since: datetime, now: datetime
) -> dict[str, list[str]]:
    """Per station: standing hardware faults, then recent fault events with their counts.

    Standing faults are judged over the events of the last ``STANDING_LOOKBACK`` (a fault
    never restored stands that long); counted ones over those received since ``since``."""
    standing: dict[str, dict[str, bool]] = {}
    counted: dict[str, dict[str, int]] = {}
    restores = {back: lost for lost, back in STANDING.items()}
    read_from = min(since, now - STANDING_LOOKBACK)
    # By station, then seq: each station's events in the order it raised them.
    for report in registry.reports("event", stations, received_since=read_from):
        try:
            doc = strict.loads(report.body)
        except ValueError:
            continue
        code = doc.get("code") if isinstance(doc, dict) else None
        if not isinstance(code, str):
            continue
        if code in STANDING:
            standing.setdefault(report.station, {})[code] = True
        elif code in restores:
            standing.setdefault(report.station, {})[restores[code]] = False
        elif code in RECENT_FAULTS and parse_rfc3339(report.received_at) >= since:
            counts = counted.setdefault(report.station, {})
            counts[code] = counts.get(code, 0) + 1
    result: dict[str, list[str]] = {}
    for station in stations:
        up = sorted(code for code, on in standing.get(station, {}).items() if on)
        counts = counted.get(station, {})
        result[station] = up + [
            code if n == 1 else f"{code} ×{n}" for code, n in sorted(counts.items())
        ]
    return result


def age(seconds: float | None) -> str:
    """``45 s ago``, ``12 min ago``, ``5 h ago``, ``3 d ago``; ``never``; ahead of us: said."""
    if seconds is None:
        return "never"
    if seconds < 0:
        return "clock ahead"
    for unit, size, limit in (("s", 1, 90), ("min", 60, 90 * 60), ("h", 3600, 48 * 3600)):
        if seconds < limit:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds / 86400:.0f} d ago"


def _outbox_text(outbox: Mapping[str, int]) -> str:
    waiting = {k: v for k, v in outbox.items() if v}
    if not waiting:
        return "0"
    return f"{sum(waiting.values())} (" + ", ".join(f"{k} {v}" for k, v in waiting.items()) + ")"


def render_stations(stations: Sequence[StationLive], *, color: bool = False) -> str:
    """The stations as an aligned table; ``color`` paints online green and offline red."""
    header = [
        "station", "online", "last heartbeat", "playing", "outbox", "enrolled at", "signing key",
        "certificate until", "faults and alerts",
    ]  # fmt: skip
    body = []
    for s in stations:
        online = "?" if s.online is None else "online" if s.online else "offline"
        trouble = [*s.faults, *(f"alert: {a}" for a in s.alerts)]
        if s.revoked_at is not None:
            online = "REVOKED"
            trouble.insert(0, f"revoked from {s.revoked_at}: {s.revoke_reason or '-'}")
        body.append(
            [s.station, online, age(s.heartbeat_age_s), s.playing or "-", _outbox_text(s.outbox),
             s.enrolled_at, s.signing_key, s.certificate_until, "; ".join(trouble) or "-"]
        )  # fmt: skip
    paint = [
        0.0 if s.revoked_at is not None else None if s.online is None else 1.0 if s.online else 0.0
        for s in stations
    ]
    return align_table(
        header, body, "llrlrllll", total=False, paint=paint if color else None, paint_column=1
    )
