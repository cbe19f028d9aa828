"""The province's registry: one SQLite database in the province home directory.

It owns what the province knows and has said: its stations (id, TLS certificate, report-signing
key), what it published (so coverage knows what was expected), and what stations reported
(deduplicated on station, kind and seq, with the receipt watermark per station and kind).
Files of the province home:

    HOME/registry.db            this database
    HOME/ca/ca.crt, ca.key      the province's device CA (stations and broker)
    HOME/operator/operator.crt  the province's own broker identity (CN province-PP), .key beside
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.core.targets import StationId, is_within

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS station (
    id TEXT PRIMARY KEY, province TEXT NOT NULL, commune TEXT NOT NULL, name TEXT NOT NULL,
    cert_pem BLOB NOT NULL, signing_public TEXT NOT NULL, enrolled_at TEXT NOT NULL,
    revoked_at TEXT);
CREATE TABLE IF NOT EXISTS published (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, kind TEXT NOT NULL,
    issuer TEXT NOT NULL, target TEXT NOT NULL, label TEXT NOT NULL, body BLOB NOT NULL,
    envelope BLOB NOT NULL, published_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS report (
    station TEXT NOT NULL, kind TEXT NOT NULL, seq INTEGER NOT NULL, session INTEGER,
    body BLOB NOT NULL, envelope BLOB, received_at TEXT NOT NULL,
    PRIMARY KEY (station, kind, seq));
CREATE TABLE IF NOT EXISTS watermark (
    station TEXT NOT NULL, kind TEXT NOT NULL, upto INTEGER NOT NULL,
    PRIMARY KEY (station, kind));
CREATE TABLE IF NOT EXISTS refused (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, reason TEXT NOT NULL,
    payload BLOB NOT NULL, received_at TEXT NOT NULL);
"""


class RegistryError(RuntimeError):
    """The registry refuses (unknown station, duplicate enrollment) or cannot be written."""


@dataclass(frozen=True, slots=True)
class StationRecord:
    id: StationId
    cert_pem: bytes
    signing_public: str  # 64 hex: the Ed25519 key its as-run records are signed with
    enrolled_at: str
    revoked_at: str | None


@dataclass(frozen=True, slots=True)
class Published:
    topic: str
    kind: str
    issuer: str
    target: str
    label: str
    body: bytes
    published_at: str


class Registry:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # meta --------------------------------------------------------------------------------------

    def set_meta(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
                (key, value, value),
            )

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # stations ----------------------------------------------------------------------------------

    def add_station(self, station: StationId, cert_pem: bytes, signing_public: str) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            with self.db:
                self.db.execute(
                    "INSERT INTO station VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                    (station.path, station.province, station.commune, station.name,
                     cert_pem, signing_public, now),
                )  # fmt: skip
        except sqlite3.IntegrityError as exc:
            raise RegistryError(f"{station.path} is already enrolled") from exc

    def stations(self, *, include_revoked: bool = False) -> list[StationRecord]:
        rows = self.db.execute(
            "SELECT id, cert_pem, signing_public, enrolled_at, revoked_at FROM station ORDER BY id"
        )
        found = [StationRecord(StationId.parse(i), bytes(c), s, e, r) for i, c, s, e, r in rows]
        return [s for s in found if include_revoked or s.revoked_at is None]

    def station(self, station_id: str) -> StationRecord | None:
        return next((s for s in self.stations() if s.id.path == station_id), None)

    def stations_in(self, target: str) -> list[StationRecord]:
        """The active stations a target addresses."""
        return [s for s in self.stations() if is_within(s.id.path, target)]

    # published ---------------------------------------------------------------------------------

    def record_published(
        self, topic: str, kind: str, issuer: str, target: str, label: str, body: bytes,
        envelope: bytes,
    ) -> None:  # fmt: skip
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self.db:
            self.db.execute(
                "INSERT INTO published (topic, kind, issuer, target, label, body, envelope, "
                "published_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (topic, kind, issuer, target, label, body, envelope, now),
            )

    def published(self, kind: str) -> Iterator[Published]:
        rows = self.db.execute(
            "SELECT topic, kind, issuer, target, label, body, published_at FROM published "
            "WHERE kind = ? ORDER BY id",
            (kind,),
        )
        for topic, k, issuer, target, label, body, at in rows:
            yield Published(topic, k, issuer, target, label, bytes(body), at)
