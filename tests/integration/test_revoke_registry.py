"""The registry's side of revocation on both stores (SQLite and a real PostgreSQL): the station
row stays with revoked_at and the reason, every revoked certificate is listed by serial and
stays listed after a replacement is enrolled, the CRL number grows, and a database made before
revocation had a reason column gets it on open.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.targets import StationId
from province.registry import Registry, RegistryError, open_registry

ONE = StationId.parse("25/08230/08230-01")
TWO = StationId.parse("25/08230/08230-02")
BIG_SERIAL = 2**159 - 3  # serials are up to 20 bytes: beyond any SQL integer type


@pytest.fixture
def registry(registry_location: str) -> Iterator[Registry]:
    with open_registry(registry_location) as reg:
        reg.add_station(ONE, b"cert-one", "11" * 32)
        reg.add_station(TWO, b"cert-two", "22" * 32)
        yield reg


def test_revoke_keeps_the_row_and_lists_the_certificate(registry: Registry) -> None:
    revoked = registry.revoke_station(
        ONE.path, BIG_SERIAL, "2026-11-20T03:00:00Z", "stolen", "key-compromise"
    )
    assert [s.id for s in registry.stations()] == [TWO]
    row = registry.lookup_station(ONE.path)
    assert row is not None
    assert (row.revoked_at, row.revoke_reason) == ("2026-11-20T03:00:00Z", "stolen")
    [listed] = registry.revocations()
    assert listed == revoked
    assert (listed.serial, listed.station, listed.cert_pem) == (BIG_SERIAL, ONE.path, b"cert-one")
    with pytest.raises(RegistryError, match="already revoked"):
        registry.revoke_station(ONE.path, BIG_SERIAL, "2026-11-21T00:00:00Z", "x", "unspecified")
    with pytest.raises(RegistryError, match="not enrolled"):
        registry.revoke_station("25/08230/08230-09", 7, "2026-11-21T00:00:00Z", "x", "unspecified")


def test_a_replacement_closes_the_window_and_the_serial_stays(registry: Registry) -> None:
    registry.revoke_station(ONE.path, 41, "2026-11-20T03:00:00Z", "lost", "key-compromise")
    registry.replace_station(ONE, b"cert-new", "33" * 32)
    back = registry.lookup_station(ONE.path)
    assert back is not None and (back.revoked_at, back.revoke_reason) == (None, None)
    [listed] = registry.revocations(ONE.path)
    assert listed.serial == 41 and listed.replaced_at is not None
    registry.revoke_station(ONE.path, 42, "2026-11-22T03:00:00Z", "lost again", "key-compromise")
    assert [r.serial for r in registry.revocations()] == [41, 42]
    assert registry.revocations(TWO.path) == []


def test_crl_numbers_grow(registry: Registry) -> None:
    assert [registry.next_crl_number() for _ in range(3)] == [1, 2, 3]


def _old_station_table() -> str:
    return (
        "CREATE TABLE station (id TEXT PRIMARY KEY, province TEXT NOT NULL, commune TEXT NOT "
        "NULL, name TEXT NOT NULL, cert_pem {blob} NOT NULL, signing_public TEXT NOT NULL, "
        "enrolled_at TEXT NOT NULL, revoked_at TEXT)"
    )


def test_a_database_from_before_revoke_reason_gets_the_column(registry_location: str) -> None:
    if registry_location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(registry_location, autocommit=True) as conn:
            conn.execute(_old_station_table().format(blob="BYTEA"))
            conn.execute(
                "INSERT INTO station VALUES (%s, '25', '08230', '08230-01', 'c', %s, 'e', NULL)",
                (ONE.path, "11" * 32),
            )
    else:
        with sqlite3.connect(Path(registry_location)) as db:
            db.execute(_old_station_table().format(blob="BLOB"))
            db.execute(
                "INSERT INTO station VALUES (?, '25', '08230', '08230-01', X'63', ?, 'e', NULL)",
                (ONE.path, "11" * 32),
            )
        db.close()
    with open_registry(registry_location) as reg:
        [old] = reg.stations()
        assert old.id == ONE and old.revoke_reason is None
        reg.revoke_station(ONE.path, 5, "2026-11-20T03:00:00Z", "lost", "key-compromise")
        reg.add_station(TWO, b"cert-two", "22" * 32)
    with open_registry(registry_location) as reg:  # opening again changes nothing
        row = reg.lookup_station(ONE.path)
        assert row is not None and row.revoke_reason == "lost"
        assert [s.id for s in reg.stations()] == [TWO]
