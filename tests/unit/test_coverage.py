"""Coverage: expected occurrences per commune against the as-runs the collector stored.

The registry holds three active stations in two communes and one revoked station; a province
stream in two versions (the older superseded), a commune stream and a station stream.
2026-11-23 is a Monday; all times below are Vietnam time (+07:00).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core import dsse
from agent.core.reports import AsRun, asrun_body, signed_asrun, to_bytes
from agent.core.targets import StationId
from province.collector import STORED, ReportIntake
from province.coverage import (
    Cause,
    CommuneSummary,
    CoverageRow,
    below_full,
    clean_text,
    coverage,
    summarize,
    summarize_days,
    top_causes,
)
from province.coverage_render import render_csv, render_summary, render_table
from province.registry import Registry, received_at_text
from tests.harness.trust import body_bytes, playlist_body

VN = timezone(timedelta(hours=7))
A1, A2, A3 = (StationId.parse(f"25/08230/08230-0{n}") for n in (1, 2, 3))
B1 = StationId.parse("25/08231/08231-01")
KEYS = {A1: 1, A2: 2, A3: 3, B1: 4}
WINDOW = (datetime(2026, 11, 23, 0, 0, tzinfo=VN), datetime(2026, 11, 24, 0, 0, tzinfo=VN))
NOW = datetime(2026, 11, 23, 18, 0, tzinfo=VN)
EVERY_DAY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def key(station: StationId) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([KEYS[station]]) * 32)


def slot(slot_id: str, start: str) -> dict[str, Any]:
    return {"id": slot_id, "start": start, "days": EVERY_DAY, "items": ["news"]}


def publish(registry: Registry, **changes: Any) -> None:
    body = playlist_body(**changes)
    topic = f"loa/v1/{body['target']}/playlist/{body['issuer']}"
    registry.record_published(
        topic, "playlist", body["issuer"], body["target"], f"v{body['version']}",
        body_bytes(body), b"{}",
    )  # fmt: skip


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, 23, hour, minute, tzinfo=VN)


def record(
    stream: str, slot_id: str, scheduled_at: datetime, outcome: str,
    reason: str | None = None, clock_trusted: bool = True,
) -> AsRun:  # fmt: skip
    return AsRun(
        slot=slot_id, stream=stream, playlist_version=1, media="news", sha256="ab" * 32,
        scheduled_at=scheduled_at, started_at=None, ended_at=None, played_s=0.0,
        outcome=outcome, reason=reason, zones=("all",), volume=80, relay_ok=None,
        amp_power_ok=None, output_level_db=None, clock_trusted=clock_trusted,
    )  # fmt: skip


class Reports:
    """Feeds as-runs through the collector's intake, with each station's next seq."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.intake = ReportIntake(registry, "25", lambda: NOW)
        self.seq: dict[StationId, int] = {}
        self.heartbeat_seq: dict[StationId, int] = {}

    def asrun(
        self, station: StationId, stream: str, slot_id: str, when: datetime, outcome: str,
        reason: str | None = None, clock_trusted: bool = True,
    ) -> None:  # fmt: skip
        seq = self.seq.get(station, 0)
        self.seq[station] = seq + 1
        played = record(stream, slot_id, when, outcome, reason, clock_trusted)
        envelope = signed_asrun(station, seq, 1, played, key(station))
        handled = self.intake.handle(f"{station.prefix}/telemetry/asrun", envelope)
        assert handled.outcome == STORED, handled.reason

    def heartbeats(self, station: StationId, start: datetime, end: datetime, every_s: int) -> None:
        """Heartbeats from ``start`` to ``end`` (inclusive), stored as the collector would."""
        moment = start
        while moment <= end:
            seq = self.heartbeat_seq.get(station, 0)
            self.heartbeat_seq[station] = seq + 1
            body = {"kind": "heartbeat", "schema": 1, "station": station.path, "seq": seq,
                    "session": 1, "ts": moment.isoformat(), "state": "idle"}  # fmt: skip
            self.registry.store_report(
                station.path, "heartbeat", seq, 1, to_bytes(body), None, received_at_text(moment)
            )
            moment += timedelta(seconds=every_s)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry.db") as reg:
        for station in (A1, A2, A3, B1):
            reg.add_station(station, b"cert", dsse.public_raw(key(station)).hex())
        yield reg


@pytest.fixture
def scene(registry: Registry) -> Registry:
    # Province stream: v1 had a 05:00 slot, v2 (newest) has 06:00 and 17:55.
    publish(registry, version=1, slots=[slot("dawn", "05:00")])
    publish(registry, version=2, slots=[slot("morning", "06:00"), slot("evening", "17:55")])
    publish(registry, issuer="08230", target="25/08230", slots=[slot("commune-news", "07:00")])
    publish(registry, target="25/08230/08230-02", slots=[slot("local", "08:00")])

    reports = Reports(registry)
    reports.asrun(A1, "25@25", "dawn", at(5), "complete")  # superseded: never counted
    reports.asrun(A1, "25@25", "morning", at(6).astimezone(UTC), "complete")
    reports.asrun(A2, "25@25", "morning", at(6), "preempted")  # +07:00 spelling: same instant
    reports.asrun(A1, "08230@25/08230", "commune-news", at(7), "failed")
    reports.asrun(A2, "08230@25/08230", "commune-news", at(7), "missed")
    reports.asrun(A2, "25@25/08230/08230-02", "local", at(8), "complete")
    # A station outside the commune stream's target reporting it changes nothing.
    reports.asrun(B1, "08230@25/08230", "commune-news", at(7), "complete")
    reports.asrun(A3, "25@25", "morning", at(6), "complete")
    # Revoked after reporting (enrollment owns revocation; set its column the same way).
    with registry.db:
        registry.db.execute("UPDATE station SET revoked_at = ? WHERE id = ?", ("x", A3.path))
    return registry


def counts(row: CoverageRow) -> tuple[object, ...]:
    """A row without its per-station detail: what the count tests compare."""
    return (
        row.day, row.commune, row.stream, row.slot, row.scheduled_at, row.expected, row.complete,
        row.untrusted, row.partial, row.failed, row.missed, row.no_report, row.pending,
    )  # fmt: skip


def row(
    commune: str, stream: str, slot_id: str, when: datetime, expected: int, **numbers: int
) -> tuple[object, ...]:
    fields = dict.fromkeys(
        ("complete", "untrusted", "partial", "failed", "missed", "no_report", "pending"), 0
    )
    fields.update(numbers)
    return (when.date(), commune, stream, slot_id, when.astimezone(UTC), expected, *fields.values())


# Sorted by local day, then commune, then time: a commune's day reads as one block.
EXPECTED_ROWS = [
    row("25/08230", "25@25", "morning", at(6), 2, complete=1, partial=1),
    row("25/08230", "08230@25/08230", "commune-news", at(7), 2, failed=1, missed=1),
    row("25/08230", "25@25/08230/08230-02", "local", at(8), 1, complete=1),
    # 17:55 + 600 s of media + 5 min is after 18:00: still pending, not silent.
    row("25/08230", "25@25", "evening", at(17, 55), 2, pending=2),
    row("25/08231", "25@25", "morning", at(6), 1, no_report=1),
    row("25/08231", "25@25", "evening", at(17, 55), 1, pending=1),
]


def test_rows_count_each_expected_station_by_its_outcome(scene: Registry) -> None:
    rows = coverage(scene, *WINDOW, NOW)
    assert [counts(r) for r in rows] == EXPECTED_ROWS
    assert [r.coverage for r in rows] == [0.5, 0.0, 1.0, 0.0, 0.0, 0.0]
    # The bulletin's name for people is its item's title; every expected station is accounted.
    assert {r.title for r in rows} == {"Bản tin"}
    assert [len(r.stations) for r in rows] == [r.expected for r in rows]


def test_every_station_short_of_complete_has_a_reason(scene: Registry) -> None:
    rows = coverage(scene, *WINDOW, NOW)
    why = {(r.slot, s.station): (s.status, s.cause, s.detail) for r in rows for s in r.shortfalls}
    assert why[("morning", A2.path)] == ("partial", "preempted", "preempted")
    assert why[("commune-news", A1.path)] == ("failed", "failed", "failed")
    assert why[("commune-news", A2.path)] == ("missed", "missed", "missed")
    assert why[("evening", A1.path)] == ("pending", "pending", "not over yet")
    # B1 sent nothing at all (no heartbeat, no birth): the province heard nothing from it.
    status, cause, detail = why[("morning", B1.path)]
    assert (status, cause) == ("no_report", "station offline")
    assert detail == "station offline (no heartbeat or birth since 2026-11-22 00:00 (+07))"
    assert all(s.status == "complete" for r in rows for s in r.stations if s not in r.shortfalls)


def test_as_run_reason_and_offline_since_name_the_cause(registry: Registry) -> None:
    publish(registry, target="25/08230", slots=[slot("morning", "06:00")])
    reports = Reports(registry)
    reports.asrun(A1, "25@25/08230", "morning", at(6), "failed", reason="media-missing")
    # A2 was up (heartbeats every minute) but never said what happened: "no report".
    reports.heartbeats(A2, at(5), at(7), 60)
    # A3 went quiet at 05:30: "offline since" its last heartbeat became overdue.
    reports.heartbeats(A3, at(5), at(5, 30), 60)
    (only,) = coverage(registry, *WINDOW, NOW)
    why = {s.station: (s.cause, s.detail) for s in only.shortfalls}
    assert why == {
        A1.path: ("failed: media-missing", "failed: media-missing"),
        A2.path: ("no report", "no as-run although the occurrence is over"),
        A3.path: ("station offline", "station offline since 2026-11-23 05:31 (+07)"),
    }


def test_complete_with_an_untrusted_clock_is_not_counted_complete(registry: Registry) -> None:
    publish(registry, target="25/08230", slots=[slot("morning", "06:00")])
    reports = Reports(registry)
    reports.asrun(A1, "25@25/08230", "morning", at(6), "complete", clock_trusted=False)
    reports.asrun(A2, "25@25/08230", "morning", at(6), "partial", "cut", clock_trusted=False)
    reports.asrun(A3, "25@25/08230", "morning", at(6), "complete")
    (only,) = coverage(registry, *WINDOW, NOW)
    assert (only.complete, only.untrusted, only.partial, only.coverage) == (1, 1, 1, 1 / 3)
    flagged = {s.station: (s.status, s.cause, s.clock_trusted) for s in only.shortfalls}
    assert flagged == {
        A1.path: ("untrusted", "complete, clock untrusted", False),
        A2.path: ("partial", "partial: cut", False),
    }
    details = {s.station: s.detail for s in only.shortfalls}
    assert details[A2.path] == "partial: cut (clock untrusted)"
    assert "cannot be proved" in details[A1.path]


def test_a_newer_version_supersedes_older_ones_whatever_the_order_recorded(
    registry: Registry,
) -> None:
    publish(registry, version=3, slots=[slot("morning", "06:00")])
    publish(registry, version=2, slots=[slot("dawn", "05:00")])  # recorded later, but older
    rows = coverage(registry, *WINDOW, NOW)
    assert {r.slot for r in rows} == {"morning"}


def test_no_report_starts_after_media_plus_five_minutes(registry: Registry) -> None:
    publish(registry, target="25/08231", slots=[slot("morning", "06:00")])
    boundary = at(6, 15)  # 06:00 + 600 s + 5 min
    (before,) = coverage(registry, *WINDOW, boundary)
    (after,) = coverage(registry, *WINDOW, boundary + timedelta(seconds=1))
    assert (before.pending, before.no_report) == (1, 0)
    assert (after.pending, after.no_report) == (0, 1)


def test_window_is_half_open_and_the_last_word_of_a_station_counts(registry: Registry) -> None:
    publish(registry, target="25/08231", slots=[slot("morning", "06:00")])
    reports = Reports(registry)
    reports.asrun(B1, "25@25/08231", "morning", at(6), "failed")
    reports.asrun(B1, "25@25/08231", "morning", at(6), "complete")  # a higher seq
    (only,) = coverage(registry, at(6), at(6) + timedelta(days=1), NOW)
    assert (only.scheduled_at, only.complete, only.failed) == (at(6), 1, 0)
    assert coverage(registry, at(6, 1), at(6) + timedelta(days=1), NOW) == []


def test_unreadable_signed_asrun_counts_as_no_report(registry: Registry) -> None:
    publish(registry, target="25/08231", slots=[slot("morning", "06:00")])
    body = asrun_body(B1, 0, 1, record("25@25/08231", "morning", at(6), "complete"))
    body["scheduled_at"] = "yesterday"
    envelope = dsse.sign("application/vnd.loa.asrun+json", to_bytes(body), [key(B1)])
    ReportIntake(registry, "25", lambda: NOW).handle(f"{B1.prefix}/telemetry/asrun", envelope)
    (only,) = coverage(registry, *WINDOW, NOW)
    assert (only.complete, only.no_report) == (0, 1)


def test_days_are_local_days(registry: Registry) -> None:
    # 06:30 in Hanoi is 23:30 UTC the day before: the day is the local one, per the --tz.
    publish(registry, target="25/08231", slots=[slot("morning", "06:30")])
    two_days = (WINDOW[0], WINDOW[1] + timedelta(days=1))
    later = NOW + timedelta(days=2)
    rows = coverage(registry, *two_days, later)
    assert [r.day.isoformat() for r in rows] == ["2026-11-23", "2026-11-24"]
    utc_rows = coverage(registry, *two_days, later, tz="UTC")
    assert [r.day.isoformat() for r in utc_rows] == ["2026-11-22", "2026-11-23"]
    days = summarize_days(rows)
    assert [(d.day, d.commune, d.occurrences) for d in days] == [
        (rows[0].day, "25/08231", 1), (rows[1].day, "25/08231", 1),
    ]  # fmt: skip


def test_summary_per_commune_with_its_causes(scene: Registry) -> None:
    a, b = summarize(coverage(scene, *WINDOW, NOW))
    assert (a.commune, a.day, a.occurrences, a.expected) == ("25/08230", None, 4, 7)
    numbers = ("complete", "untrusted", "partial", "failed", "missed", "no_report", "pending")
    assert [getattr(a, n) for n in numbers] == [2, 0, 1, 1, 1, 0, 2]
    assert [getattr(b, n) for n in numbers] == [0, 0, 0, 0, 0, 1, 1]
    # Most frequent cause first; ties by name.
    assert a.causes == (
        Cause("pending", 2, (A1.path, A2.path)),
        Cause("failed", 1, (A1.path,)),
        Cause("missed", 1, (A2.path,)),
        Cause("preempted", 1, (A2.path,)),
    )
    assert top_causes(a, limit=2) == "pending ×2; failed ×1; 2 more"


def test_communes_below_full_worst_first(scene: Registry) -> None:
    summaries = summarize(coverage(scene, *WINDOW, NOW))
    assert [(s.commune, s.coverage) for s in below_full(summaries)] == [
        ("25/08231", 0.0), ("25/08230", 2 / 7),
    ]  # fmt: skip
    perfect = CommuneSummary("25/08232", None, 1, 2, 2, 0, 0, 0, 0, 0, 0, ())
    assert below_full([perfect]) == []


def test_station_text_is_made_harmless() -> None:
    assert clean_text("ok\x1b[2J\nnext\r") == "ok\ufffd[2J\ufffdnext\ufffd"
    assert clean_text("x" * 500) == "x" * 199 + "…"
    assert clean_text("Ba\u0300n") == "Bàn"  # NFC: one column per letter in tables


def test_table_shows_local_days_and_times_and_a_total(scene: Registry) -> None:
    text = render_table(coverage(scene, *WINDOW, NOW))
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["day", "commune", "time", "bulletin", "stream"]
    assert lines[2].split() == [
        "2026-11-23", "25/08230", "06:00", "Bản", "tin", "[morning]", "25@25", "2", "1", "0",
        "1", "0", "0", "0", "0", "50.0%",
    ]  # fmt: skip
    assert len(lines) == 2 + 6 + 2
    # Total: 9 expected, 2 complete, 0 untrusted, 1 partial, 1 failed, 1 missed, 1 silent,
    # 3 pending.
    assert lines[-1].split() == [
        "TOTAL", "6", "occurrences", "9", "2", "0", "1", "1", "1", "1", "3", "22.2%"
    ]  # fmt: skip
    # Aligned: every number column ends where its header ends.
    assert lines[2].index("50.0%") + 5 == len(lines[0])
    assert lines[-1].endswith("22.2%") and len(lines[-1]) == len(lines[0])
    assert "\x1b[" not in text  # no colour unless asked

    summary = render_summary(summarize(coverage(scene, *WINDOW, NOW))).splitlines()
    assert summary[-1].split() == ["TOTAL", "6", "9", "2", "0", "1", "1", "1", "1", "3", "22.2%"]


def test_table_of_nothing_still_has_its_total() -> None:
    lines = render_table([]).splitlines()
    assert lines[-1].split() == ["TOTAL", "0", "occurrences", *["0"] * 8, "-"]


def test_csv_has_one_line_per_row(scene: Registry) -> None:
    lines = render_csv(coverage(scene, *WINDOW, NOW)).splitlines()
    assert lines[0] == (
        "day,commune,stream,slot,title,scheduled_at,expected,complete,untrusted,partial,failed,"
        "missed,no_report,pending,coverage,why"
    )
    assert lines[1] == (
        "2026-11-23,25/08230,25@25,morning,Bản tin,2026-11-22T23:00:00Z,2,1,0,1,0,0,0,0,0.5000,"
        "preempted ×1"
    )
    assert lines[2].endswith(",0.0000,failed ×1; missed ×1")
    assert len(lines) == 7


def test_coverage_cli_prints_the_tables(
    scene: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from province.cli import main

    home = ["--home", str(tmp_path)]
    window = ["--from", "2026-11-23T00:00:00+07:00", "--to", "2026-11-23T12:00:00+07:00"]
    assert main(["coverage", *home, *window]) == 0
    out = capsys.readouterr().out
    assert "TOTAL" in out and "morning" in out and "evening" not in out
    assert "communes below 100%" in out and "availability" in out
    assert main(["coverage", *home, *window, "--csv"]) == 0
    assert ",25/08230,08230@25/08230,commune-news," in capsys.readouterr().out
    assert main(["coverage", "--home", str(tmp_path / "nowhere")]) == 1
    assert "no registry" in capsys.readouterr().err
    assert main(["coverage", *home, *window, "--tz", "Mars/Olympus"]) == 1
    assert "unknown time zone" in capsys.readouterr().err
