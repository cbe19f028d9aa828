"""Coverage scale: the province's coverage report over 30 days x 1,000 stations, on SQLite and on
PostgreSQL, against one grouped ``SELECT count(*)`` over the same reports.

The registry is filled the way the collector fills it: 1,000 stations (100 communes of 10)
enrolled with their own Ed25519 report keys, the province playlist (4 slots a day, every day)
recorded as published, and each station's as-runs for each occurrence of the window, built and
signed with the agent's own report code (``signed_asrun``, the station's key) and stored through
``ReportIntake.handle``, which checks each signature against the registered key before
``Registry.store_report``. Outcomes are drawn with a fixed seed: most complete, some partial,
failed or missed, and some occurrences with no as-run at all. No heartbeats or station states are
stored: availability finds none and calls every silent station offline.

The fill is not measured (its time is in the detail). ``store_report`` commits each report on its
own, so there is no bulk path through the API: on SQLite the fill runs with ``PRAGMA
synchronous=OFF`` (set back to the registry's ``FULL`` before anything is measured); on
PostgreSQL it runs inside outer transactions of 2,000 reports (each ``store_report`` is then a
savepoint), on a server started with ``fsync=off`` by ``tests.harness.postgres``.

``seconds`` is ``coverage.build_report`` (what ``loa-province coverage`` computes before it
renders: availability, every occurrence of the window per commune, each station's last as-run
for it) over the whole window, median of trials; ``render_html`` of the same report is in the
detail. The baseline, in the same run and alternating with the trials, is one ``SELECT station,
day, count(*) ... GROUP BY station, day`` over the as-runs: the floor of reading the data once.
PostgreSQL's half is skipped, with the reason in ``missing``, when no server can be started.

Target: under 10 s on SQLite.

    .venv/bin/python -m bench.coverage_scale [--quick] [--results DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core import dsse
from agent.core.reports import AsRun, signed_asrun
from agent.core.targets import StationId
from bench.common import RESULTS, machine_info, write_result
from province.collector import STORED, ReportIntake
from province.coverage import build_report
from province.coverage_render import render_html
from province.registry import Registry, SqliteStore, open_registry
from tests.harness.trust import body_bytes, playlist_body

COMMAND = ".venv/bin/python -m bench.coverage_scale"
PROVINCE = "25"
TZ = "Asia/Ho_Chi_Minh"
SLOTS = (("sang", "05:30"), ("trua", "11:00"), ("chieu", "17:00"), ("toi", "20:00"))
MEDIA_S = 600.0
PER_COMMUNE = 10
TARGET_S = 10.0
PG_BATCH = 2000
# Per occurrence and station: the as-run's outcome, or None for no as-run at all.
OUTCOMES: tuple[tuple[str | None, float], ...] = (
    ("complete", 0.92), ("partial", 0.03), ("failed", 0.015), ("missed", 0.01), (None, 0.025),
)  # fmt: skip
BASELINE_SQL = (
    "SELECT station, substr(received_at, 1, 10), count(*) FROM report WHERE kind = ? "
    "GROUP BY station, substr(received_at, 1, 10)"
)


@dataclass(frozen=True)
class Mode:
    days: int
    stations: int
    trials: int


FULL = Mode(days=30, stations=1000, trials=3)
QUICK = Mode(days=3, stations=100, trials=2)


def station_ids(count: int) -> list[StationId]:
    return [
        StationId(PROVINCE, f"{10000 + n // PER_COMMUNE:05d}",
                  f"{10000 + n // PER_COMMUNE:05d}-{n % PER_COMMUNE + 1:02d}")
        for n in range(count)
    ]  # fmt: skip


def report_key(station: StationId) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(station.path.encode()).digest())


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    now: datetime


def window(days: int) -> Window:
    """The last ``days`` whole local days before today, with ``now`` an hour into today, so
    every occurrence of the window is over."""
    zone = ZoneInfo(TZ)
    today = datetime.combine(date.today(), clock_time(0), zone)
    return Window(today - timedelta(days=days), today, today + timedelta(hours=1))


def province_playlist(span: Window) -> tuple[str, bytes]:
    body = playlist_body(
        issuer=PROVINCE, target=PROVINCE, version=1,
        issued_at=(span.start - timedelta(days=1)).isoformat(timespec="seconds"),
        valid_from=(span.start - timedelta(days=1)).isoformat(timespec="seconds"),
        expires=(span.end + timedelta(days=365)).isoformat(timespec="seconds"),
        media={"ban-tin": {
            "url": "https://media.example.vn/25/ban-tin.mp3", "sha256": "ab" * 32,
            "bytes": 4_800_000, "duration_s": MEDIA_S, "title": "Bản tin", "category": "news",
        }},
        slots=[{"id": slot, "start": start, "items": ["ban-tin"],
                "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}
               for slot, start in SLOTS],
    )  # fmt: skip
    return f"loa/v1/{PROVINCE}/playlist/{PROVINCE}", body_bytes(body)


@dataclass(frozen=True)
class Message:
    topic: str
    envelope: bytes
    received_at: datetime


def messages(stations: list[StationId], span: Window) -> tuple[list[Message], dict[str, int]]:
    """Every station's signed as-runs for the window, in the order each sends them."""
    zone = ZoneInfo(TZ)
    draw = random.Random(12)
    outcomes = [o for o, _ in OUTCOMES]
    weights = [w for _, w in OUTCOMES]
    out: list[Message] = []
    tally: dict[str, int] = {}
    for station in stations:
        key = report_key(station)
        topic = f"{station.prefix}/telemetry/asrun"
        seq = 0
        day = span.start.date()
        while day < span.end.date():
            for slot, start in SLOTS:
                scheduled = datetime.combine(day, clock_time.fromisoformat(start), zone)
                outcome = draw.choices(outcomes, weights)[0]
                tally[str(outcome)] = tally.get(str(outcome), 0) + 1
                if outcome is None:
                    continue
                played = MEDIA_S if outcome == "complete" else (
                    MEDIA_S / 2 if outcome == "partial" else 0.0)  # fmt: skip
                began = scheduled + timedelta(seconds=0.01) if played else None
                record = AsRun(
                    slot=slot, stream=f"{PROVINCE}@{PROVINCE}", playlist_version=1,
                    media="ban-tin", sha256="ab" * 32, scheduled_at=scheduled,
                    started_at=began,
                    ended_at=began + timedelta(seconds=played) if began else None,
                    played_s=played, outcome=outcome,
                    reason=None if outcome == "complete" else f"bench: {outcome}",
                    zones=("all",), volume=80, relay_ok=True, amp_power_ok=True,
                    output_level_db=-16.0 if played else None, clock_trusted=True,
                )  # fmt: skip
                out.append(Message(topic, signed_asrun(station, seq, 1, record, key),
                                   scheduled + timedelta(seconds=MEDIA_S + 30)))  # fmt: skip
                seq += 1
            day += timedelta(days=1)
    return out, tally


def fill(
    registry: Registry, stations: list[StationId], span: Window, signed: list[Message],
    batch: Callable[[], contextlib.AbstractContextManager[None]],
) -> float:  # fmt: skip
    """Enrol, publish and store every as-run through the collector's intake; seconds."""
    started = time.perf_counter()
    registry.set_meta("province", PROVINCE)
    for station in stations:
        registry.add_station(station, b"bench", dsse.public_raw(report_key(station)).hex())
    topic, body = province_playlist(span)
    registry.record_published(topic, "playlist", PROVINCE, PROVINCE, "v1", body, b"{}")
    received = span.start
    intake = ReportIntake(registry, PROVINCE, lambda: received)
    for first in range(0, len(signed), PG_BATCH):
        with batch():
            for message in signed[first : first + PG_BATCH]:
                received = message.received_at
                handled = intake.handle(message.topic, message.envelope)
                if handled.outcome != STORED:
                    raise RuntimeError(f"the intake did not store an as-run: {handled}")
    return time.perf_counter() - started


def measure(registry: Registry, span: Window, trials: int, expected: int) -> dict[str, Any]:
    """build_report and the baseline query, alternating; every time in seconds."""
    reports: list[float] = []
    floors: list[float] = []
    report = None
    for trial in range(trials):
        for which in ("baseline", "report") if trial % 2 == 0 else ("report", "baseline"):
            started = time.perf_counter()
            if which == "report":
                report = build_report(registry, span.start, span.end, span.now, TZ)
                reports.append(time.perf_counter() - started)
            else:
                rows = registry.store.rows(BASELINE_SQL, ("asrun",))
                floors.append(time.perf_counter() - started)
                counted = sum(int(r[2]) for r in rows)
                if counted != expected:
                    raise RuntimeError(f"the baseline counted {counted} as-runs of {expected}")
    assert report is not None
    started = time.perf_counter()
    html = render_html(report)
    render_s = time.perf_counter() - started
    expected_cells = sum(r.expected for r in report.rows)
    complete = sum(r.complete for r in report.rows)
    return {
        "seconds": round(statistics.median(reports), 4),
        "baseline_seconds": round(statistics.median(floors), 5),
        "report_s": [round(s, 3) for s in reports],
        "baseline_s": [round(s, 4) for s in floors],
        "render_html_s": round(render_s, 3),
        "html_bytes": len(html.encode()),
        "rows": len(report.rows),
        "station_occurrences": expected_cells,
        "complete": complete,
    }


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A fresh database on a private PostgreSQL server (tests.harness.postgres); its URL."""
    from tests.harness import postgres as pg

    bindir = pg._bindir()
    if bindir is None:
        raise RuntimeError(f"no PostgreSQL server (/usr/lib/postgresql/*/bin/initdb): "
                           f"{pg.INSTALL_HINT}")  # fmt: skip
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam(pg.SERVER_USER)
        except KeyError as exc:
            raise RuntimeError(f"no {pg.SERVER_USER} user: {pg.INSTALL_HINT}") from exc
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"psycopg cannot be loaded ({exc}): {pg.INSTALL_HINT}") from exc
    server = pg._start(bindir)
    try:
        yield server.url(server.create_database())
    finally:
        pg._stop(server)


def run(tmp: Path, mode: Mode, quick: bool) -> dict[str, Any]:
    span = window(mode.days)
    stations = station_ids(mode.stations)
    started = time.perf_counter()
    signed, tally = messages(stations, span)
    sign_s = time.perf_counter() - started
    stores: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}

    registry = Registry(tmp / "registry.db")
    try:
        store = registry.store
        assert isinstance(store, SqliteStore)
        store.db.execute("PRAGMA synchronous=OFF")
        fill_s = fill(registry, stations, span, signed, contextlib.nullcontext)
        store.db.execute("PRAGMA synchronous=FULL")
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        measured = measure(registry, span, mode.trials, len(signed))
        stores["sqlite"] = {"fill_s": round(fill_s, 1), **measured}
        stores["sqlite"]["file_mb"] = round((tmp / "registry.db").stat().st_size / 2**20, 1)
    finally:
        registry.close()

    try:
        with postgres() as url:
            registry = open_registry(url)
            try:
                fill_s = fill(registry, stations, span, signed, registry.store.transaction)
                measured = measure(registry, span, mode.trials, len(signed))
                stores["postgresql"] = {"fill_s": round(fill_s, 1), **measured}
            finally:
                registry.close()
    except RuntimeError as exc:
        missing["postgresql_seconds"] = f"PostgreSQL could not start: {exc}"[:300]

    sqlite, pg = stores["sqlite"], stores.get("postgresql")
    n = mode.days * mode.stations * len(SLOTS)
    result: dict[str, Any] = {
        "benchmark": "coverage_scale",
        "title": f"Coverage report over {mode.days} days x {mode.stations} stations "
        f"({len(SLOTS)} slots a day)",
        "command": COMMAND + (" --quick" if quick else ""),
        "quick": quick,
        "n": n,
        "sqlite_seconds": round(sqlite["seconds"], 3),
        "baseline_sqlite_seconds": round(sqlite["baseline_seconds"], 4),
        "postgresql_seconds": None if pg is None else round(pg["seconds"], 3),
        "baseline_postgresql_seconds": None if pg is None else round(pg["baseline_seconds"], 4),
        "sqlite_ratio": round(sqlite["seconds"] / sqlite["baseline_seconds"], 1),
        "figures": ["sqlite_seconds", "postgresql_seconds", "sqlite_ratio"],
        "labels": {
            "sqlite_seconds": f"build_report, {mode.days} days x {mode.stations} stations "
            f"({len(signed)} signed as-runs), SQLite registry, median of trials, seconds; "
            f"target < {TARGET_S:g} s",
            "postgresql_seconds": "the same on a PostgreSQL registry, seconds",
            "sqlite_ratio": "build_report / the baseline query, SQLite",
            "baseline_sqlite_seconds": "one SELECT count(*) GROUP BY station, day",
            "baseline_postgresql_seconds": "one SELECT count(*) GROUP BY station, day",
        },
        "baselines": {
            "sqlite_seconds": "baseline_sqlite_seconds",
            "postgresql_seconds": "baseline_postgresql_seconds",
        },
        "missing": missing,
        "target": {"sqlite_seconds_below": TARGET_S, "met": sqlite["seconds"] < TARGET_S},
        "detail": {
            "days": mode.days,
            "stations": mode.stations,
            "communes": mode.stations // PER_COMMUNE,
            "slots_per_day": len(SLOTS),
            "station_occurrences": n,
            "asruns_stored": len(signed),
            "outcomes_drawn": tally,
            "sign_s": round(sign_s, 1),
            "stores": stores,
            "window": {
                "start": span.start.isoformat(),
                "end": span.end.isoformat(),
                "now": span.now.isoformat(),
            },
            "fill": "ReportIntake.handle per as-run (signature checked, store_report); SQLite "
            f"with synchronous=OFF during the fill only, PostgreSQL in transactions of "
            f"{PG_BATCH} (fsync=off server)",
            "not_stored": "heartbeats and station states: availability finds none",
            "baseline_sql": BASELINE_SQL,
        },
        "machine": machine_info(),
    }
    if pg is not None:
        result["postgresql_ratio"] = round(pg["seconds"] / pg["baseline_seconds"], 1)
        result["figures"].append("postgresql_ratio")
        result["labels"]["postgresql_ratio"] = "build_report / the baseline query, PostgreSQL"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 days x 100 stations")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="loa-bench-coverage-") as tmp:
        result = run(Path(tmp), mode, args.quick)
    path = write_result("coverage_scale", result, args.results)
    stores = result["detail"]["stores"]
    pg = (
        f"PostgreSQL {result['postgresql_seconds']:.3f} s (baseline "
        f"{result['baseline_postgresql_seconds']:.4f} s, fill {stores['postgresql']['fill_s']} s)"
        if result["postgresql_seconds"] is not None
        else f"PostgreSQL skipped: {result['missing'].get('postgresql_seconds')}"
    )
    met = "met" if result["target"]["met"] else "NOT met"
    print(
        f"coverage_scale: SQLite {result['sqlite_seconds']:.3f} s (baseline "
        f"{result['baseline_sqlite_seconds']:.4f} s, fill {stores['sqlite']['fill_s']} s); {pg};"
        f" {result['n']} station-occurrences; target < {TARGET_S:g} s {met}"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
