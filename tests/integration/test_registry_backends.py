"""The province registry's contract, run against each store: SQLite and a real PostgreSQL.

What the collector, coverage and enrollment rely on: a report stored once per (station, kind,
seq), a watermark that only names stored reports (also while two collectors write one
database), refusals, published documents, stations and their revocation, station state and the
state history an availability chart reads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.core.targets import StationId
from province.registry import (
    REFUSED_PAYLOAD_CAP,
    Published,
    Refusal,
    Registry,
    RegistryError,
    SqliteStore,
    StationState,
    StoreResult,
    open_registry,
    received_at_text,
)
from province.registry_pg import PostgresStore, redacted

pytestmark = pytest.mark.integration

ONE = StationId.parse("25/08230/08230-01")
TWO = StationId.parse("25/08230/08230-02")
T0 = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


def at(minutes: float) -> str:
    return received_at_text(T0 + timedelta(minutes=minutes))


@pytest.fixture
def registry(registry_location: str) -> Iterator[Registry]:
    with open_registry(registry_location) as reg:
        reg.add_station(ONE, b"cert-1", "11" * 32)
        reg.add_station(TWO, b"cert-2", "22" * 32)
        yield reg


def store(registry: Registry, seq: int, body: bytes | None = None, **where: str) -> StoreResult:
    station, kind = where.get("station", ONE.path), where.get("kind", "heartbeat")
    body = body if body is not None else f"{station} {kind} {seq}".encode()
    return registry.store_report(station, kind, seq, 1, body, None, at(seq))


# the store each location opens ---------------------------------------------------------------


def test_a_location_opens_its_store(registry: Registry, registry_location: str) -> None:
    if registry_location.startswith("postgresql://"):
        assert isinstance(registry.store, PostgresStore)
        with pytest.raises(RegistryError, match="not a SQLite registry"):
            _ = registry.db
    else:
        assert isinstance(registry.store, SqliteStore)
        assert registry.path == Path(registry_location)
        # Registry(path) is still the SQLite registry, on the same file
        with Registry(Path(registry_location)) as again:
            assert [s.id for s in again.stations()] == [ONE, TWO]


def test_a_postgres_location_is_shown_without_its_password() -> None:
    shown = redacted("postgresql://loa:s3cret@db.example:5433/province")
    assert "s3cret" not in shown
    assert "db.example" in shown and "5433" in shown and "province" in shown


# reports: stored once, conflicts, watermarks -------------------------------------------------


def test_a_report_is_stored_once_and_a_differing_resend_is_a_conflict(registry: Registry) -> None:
    assert store(registry, 0, b"first") == StoreResult(True, False, 0)
    assert store(registry, 0, b"first") == StoreResult(False, False, 0)
    assert store(registry, 0, b"other") == StoreResult(False, True, 0)
    [kept] = registry.reports("heartbeat")
    assert (kept.station, kept.seq, kept.body) == (ONE.path, 0, b"first")


def test_a_new_device_under_an_old_id_starts_its_seqs_again_and_the_old_reports_stay(
    registry: Registry,
) -> None:
    for seq in range(3):
        store(registry, seq, b"old device %d" % seq, kind="asrun")
    registry.record_lost(ONE.path, "heartbeat", 0, 4, at(5))
    assert registry.watermarks(ONE.path) == {"asrun": 2, "heartbeat": 4}
    registry.replace_station(ONE, b"cert-1b", "11" * 32)  # repaired: the same signing key
    assert store(registry, 0, b"old device 0", kind="asrun") == StoreResult(False, False, 2)

    registry.replace_station(ONE, b"cert-new", "33" * 32)  # a new device: its own key
    assert registry.watermarks(ONE.path) == {}
    assert store(registry, 0, b"new device 0", kind="asrun") == StoreResult(True, False, 0)
    assert store(registry, 0, b"new", kind="heartbeat").watermark == 0  # no lost range holds it
    bodies = [r.body for r in registry.reports("asrun", [ONE.path])]
    assert bodies == [b"old device 0", b"old device 1", b"old device 2", b"new device 0"]

    store(registry, 1, b"new device 1", kind="asrun")
    registry.replace_station(ONE, b"cert-third", "44" * 32)  # and another: no seq collides
    assert store(registry, 0, b"third 0", kind="asrun").stored
    bodies = [r.body for r in registry.reports("asrun", [ONE.path])]
    assert bodies == [b"old device 0", b"old device 1", b"old device 2", b"new device 0",
                      b"new device 1", b"third 0"]  # fmt: skip
    assert registry.reports("asrun", [TWO.path]) == []


def test_the_watermark_waits_at_a_gap_and_jumps_when_it_closes(registry: Registry) -> None:
    assert store(registry, 1).watermark is None  # seq 0 missing
    assert registry.watermarks(ONE.path) == {}
    assert store(registry, 3).watermark is None
    assert store(registry, 0).watermark == 1
    assert store(registry, 4).watermark == 1  # 2 is missing
    assert store(registry, 2).watermark == 4  # closes the gap, walks through 3 and 4
    assert store(registry, 6).watermark == 4
    assert store(registry, 3).watermark == 4  # a resend changes nothing
    assert registry.watermarks(ONE.path) == {"heartbeat": 4}
    # kinds and stations have watermarks of their own
    assert store(registry, 0, kind="asrun").watermark == 0
    assert store(registry, 1, station=TWO.path).watermark is None
    assert registry.watermarks(ONE.path) == {"asrun": 0, "heartbeat": 4}
    assert registry.watermarks(TWO.path) == {}
    assert [r.seq for r in registry.reports("heartbeat", [ONE.path])] == [0, 1, 2, 3, 4, 6]


def test_a_reported_loss_fills_its_range_for_the_watermark_and_gaps_name_the_rest(
    registry: Registry,
) -> None:
    store(registry, 0)
    store(registry, 7)
    assert registry.gaps(ONE.path) == {"heartbeat": (0, 7)}
    # A loss above the watermark waits like a report would; the one below it walks through.
    assert registry.record_lost(ONE.path, "heartbeat", 4, 6, at(8)) == 0
    assert registry.record_lost(ONE.path, "heartbeat", 1, 3, at(9)) == 7
    assert registry.record_lost(ONE.path, "heartbeat", 1, 3, at(10)) == 7  # said twice: once
    assert registry.gaps(ONE.path) == {}
    assert store(registry, 8).watermark == 8
    assert registry.lost_ranges(ONE.path) == [("heartbeat", 1, 3), ("heartbeat", 4, 6)]
    # A loss starting at seq 0 sets a first watermark for a kind that had none.
    assert registry.record_lost(TWO.path, "event", 0, 2, at(11)) == 2
    with pytest.raises(RegistryError):
        registry.record_lost(ONE.path, "event", 5, 4, at(12))


def test_a_failed_store_leaves_neither_report_nor_watermark(registry: Registry) -> None:
    # body NOT NULL fails the report's insert after the watermark row was written: both go.
    with pytest.raises(registry.store.integrity_errors):
        registry.store_report(ONE.path, "heartbeat", 0, 1, None, None, at(0))  # type: ignore[arg-type]
    assert registry.store.rows("SELECT COUNT(*) FROM watermark") == [(0,)]
    assert registry.reports("heartbeat") == []
    # and the registry goes on working
    assert store(registry, 0) == StoreResult(True, False, 0)


def test_reports_filter_by_station_and_receipt_time_and_last_report(registry: Registry) -> None:
    assert registry.last_report(ONE.path, "heartbeat") is None
    for seq in (0, 5, 2):
        store(registry, seq)
    store(registry, 7, station=TWO.path)
    store(registry, 9, kind="asrun")
    since = T0 + timedelta(minutes=2)
    assert [(r.station, r.seq) for r in registry.reports("heartbeat", received_since=since)] == [
        (ONE.path, 2), (ONE.path, 5), (TWO.path, 7),
    ]  # fmt: skip
    assert [r.seq for r in registry.reports("heartbeat", [TWO.path])] == [7]
    last = registry.last_report(ONE.path, "heartbeat")
    assert last is not None
    assert (last.seq, last.session, last.body, last.received_at) == (
        5, 1, f"{ONE.path} heartbeat 5".encode(), at(5),
    )  # fmt: skip
    assert registry.last_report(TWO.path, "asrun") is None


def test_text_order_is_bytewise_whatever_the_servers_locale(registry: Registry) -> None:
    # Bytewise, "-" (0x2d) sorts before "1" (0x31); a collation that skips punctuation, as
    # en_US.UTF-8 does, compares "a2" with "a1x" and puts a1x first.
    hyphen, plain = StationId.parse("25/08230/a-2"), StationId.parse("25/08230/a1x")
    registry.add_station(plain, b"c", "33" * 32)
    registry.add_station(hyphen, b"c", "44" * 32)
    assert [s.id.path for s in registry.stations()] == [
        ONE.path, TWO.path, hyphen.path, plain.path,
    ]  # fmt: skip
    store(registry, 0, station=plain.path)
    store(registry, 0, station=hyphen.path)
    assert [r.station for r in registry.reports("heartbeat")] == [hyphen.path, plain.path]


# two collectors on one database --------------------------------------------------------------


def test_racing_writers_store_every_seq_once_and_the_watermark_follows(
    registry: Registry, registry_location: str
) -> None:
    # Writer w stores the seqs w, w + 4, w + 8, ... in order, so at almost every moment two
    # writers store neighbouring seqs at once; then it resends everybody else's.
    writers, count = 4, 800
    start = threading.Barrier(writers)
    results: list[list[StoreResult]] = [[] for _ in range(writers)]
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        own_seqs = list(range(w, count, writers))
        others = [seq for seq in range(count) if seq % writers != w]
        try:
            with open_registry(registry_location) as own:  # its own connection, as a collector
                start.wait(timeout=30)
                for seq in own_seqs + others:
                    results[w].append(
                        own.store_report(ONE.path, "asrun", seq, 1, b"%d" % seq, b"e", at(0))
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    every = [result for of_one in results for result in of_one]
    assert len(every) == writers * count
    assert sum(r.stored for r in every) == count  # each seq stored by exactly one writer
    assert not any(r.conflict for r in every)
    assert [r.seq for r in registry.reports("asrun")] == list(range(count))
    # The lost-update race leaves the watermark below a stored seq, for good: later seqs
    # cannot move it (they are not the next one) and resends never do.
    assert registry.watermarks(ONE.path) == {"asrun": count - 1}
    for of_one in results:  # what each writer was told never went back
        marks = [r.watermark for r in of_one if r.watermark is not None]
        assert marks == sorted(marks)


def test_collectors_opening_a_new_database_at_once_all_get_the_schema(
    registry_location: str,
) -> None:
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            start.wait(timeout=30)
            with open_registry(registry_location) as reg:
                reg.set_meta("opened", "yes")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    with open_registry(registry_location) as reg:
        assert reg.meta("opened") == "yes"


# refusals, published, meta -------------------------------------------------------------------


def test_refusals_are_kept_in_order_and_capped(registry: Registry) -> None:
    registry.refuse("a/topic", "bad-json: not JSON", b"{", at(0))
    registry.refuse("b/topic", "unknown-station: who", b"x" * (REFUSED_PAYLOAD_CAP + 10), at(1))
    first, second = registry.refusals()
    assert first == Refusal("a/topic", "bad-json: not JSON", b"{", at(0))
    assert (second.code, len(second.payload)) == ("unknown-station", REFUSED_PAYLOAD_CAP)


def test_published_documents_come_back_by_kind_in_order(registry: Registry) -> None:
    registry.record_published("t/1", "playlist", "25", "25", "v1", b"\x00body-1", b"env-1")
    registry.record_published("t/2", "command", "25", "25/08230", "stop", b"cmd", b"env-c")
    registry.record_published("t/3", "playlist", "08230", "25/08230", "v2", b"body-2", b"env-2")
    found = list(registry.published("playlist"))
    assert [(p.topic, p.label, p.body) for p in found] == [
        ("t/1", "v1", b"\x00body-1"), ("t/3", "v2", b"body-2"),
    ]  # fmt: skip
    assert all(isinstance(p, Published) and p.published_at for p in found)
    assert [p.target for p in registry.published("command")] == ["25/08230"]


def test_meta_is_set_and_replaced(registry: Registry) -> None:
    assert registry.meta("province") is None
    registry.set_meta("province", "25")
    registry.set_meta("province", "26")
    assert registry.meta("province") == "26"


# stations ------------------------------------------------------------------------------------


def test_stations_enroll_once_revoke_and_come_back(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="already enrolled"):
        registry.add_station(ONE, b"again", "55" * 32)
    other = StationId.parse("25/09999/09999-01")
    registry.add_station(other, b"cert-o", "66" * 32)
    assert [s.id for s in registry.stations_in("25/08230")] == [ONE, TWO]
    store(registry, 0, station=TWO.path)

    # Revocation is enrollment's business; set the column the way it would.
    registry.store.write("UPDATE station SET revoked_at = ? WHERE id = ?", ("2026-11-20", TWO.path))
    assert [s.id for s in registry.stations()] == [ONE, other]
    assert [s.id for s in registry.stations(include_revoked=True)] == [ONE, TWO, other]
    assert registry.station(TWO.path) is None
    revoked = registry.lookup_station(TWO.path)
    assert revoked is not None and revoked.revoked_at == "2026-11-20"

    registry.replace_station(TWO, b"cert-new", "77" * 32)
    back = registry.lookup_station(TWO.path)
    assert back is not None
    assert (back.cert_pem, back.signing_public, back.revoked_at) == (b"cert-new", "77" * 32, None)
    # A new device (its own key): the report is kept, renumbered; its seqs start again.
    assert [r.seq for r in registry.reports("heartbeat", [TWO.path])] == [-1]
    assert registry.watermarks(TWO.path) == {}
    assert registry.lookup_station("25/08230/08230-99") is None


# station state and its history ---------------------------------------------------------------


def test_state_history_is_half_open_ordered_and_per_station(registry: Registry) -> None:
    assert registry.station_state(ONE.path) is None
    registry.set_station_state(ONE.path, True, b"birth-1", at(10))
    registry.set_station_state(ONE.path, False, b"will-1", at(0))  # arrives late, stored first
    registry.set_station_state(TWO.path, True, b"birth-two", at(5))
    registry.set_station_state(ONE.path, True, b"birth-2", at(20))
    registry.set_station_state(ONE.path, False, b"will-2", at(30))

    assert registry.state_history(ONE.path, at(0), at(30)) == [
        StationState(ONE.path, False, b"will-1", at(0)),
        StationState(ONE.path, True, b"birth-1", at(10)),
        StationState(ONE.path, True, b"birth-2", at(20)),
    ]
    # since is included, until is not
    assert [s.body for s in registry.state_history(ONE.path, at(10), at(20))] == [b"birth-1"]
    assert [s.body for s in registry.state_history(ONE.path, at(30), at(31))] == [b"will-2"]
    assert registry.state_history(ONE.path, at(31), at(99)) == []
    assert registry.state_history(TWO.path, at(0), at(99)) == [
        StationState(TWO.path, True, b"birth-two", at(5))
    ]
    # the current state is the last one set
    assert registry.station_state(ONE.path) == StationState(ONE.path, False, b"will-2", at(30))


def test_states_at_the_same_moment_keep_their_arrival_order(registry: Registry) -> None:
    registry.set_station_state(ONE.path, False, b"will", at(1))
    registry.set_station_state(ONE.path, True, b"birth", at(1))
    assert [s.online for s in registry.state_history(ONE.path, at(0), at(2))] == [False, True]


# the province CLI's choice -------------------------------------------------------------------


def test_the_province_cli_takes_the_store_from_the_environment(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from province.cli_collect import STORE_ENV, _open_registry
    from province.errors import ProvinceError

    home = tmp_path / "home"  # no registry.db in it: the PostgreSQL one is used
    monkeypatch.setenv(STORE_ENV, postgres_url)
    with _open_registry(home) as registry:
        assert isinstance(registry.store, PostgresStore)
        registry.set_meta("province", "25")
    with open_registry(postgres_url) as again:
        assert again.meta("province") == "25"
    monkeypatch.delenv(STORE_ENV)
    with pytest.raises(ProvinceError, match="no registry at"):
        _open_registry(home)
