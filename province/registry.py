"""The province's registry: one SQLite database in the province home directory.

It owns what the province knows and has said: its stations (id, TLS certificate, report-signing
key), what it published (so coverage knows what was expected), and what stations reported
(deduplicated on station, kind and seq, with the receipt watermark per station and kind), what
it refused, and each station's last birth or Will with the history of them all.
Files of the province home:

    HOME/registry.db            this database
    HOME/ca/ca.crt, ca.key      the province's device CA (stations and broker)
    HOME/operator/operator.crt  the province's own broker identity (CN province-PP), .key beside
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
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
CREATE TABLE IF NOT EXISTS station_state (
    station TEXT PRIMARY KEY, online INTEGER NOT NULL, body BLOB NOT NULL,
    received_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, station TEXT NOT NULL, online INTEGER NOT NULL,
    body BLOB NOT NULL, received_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS state_log_station ON state_log (station, received_at);
"""

# A refused payload is kept for diagnosis, not as evidence: capped so a misbehaving station
# cannot fill the province's disk through the refusal log.
REFUSED_PAYLOAD_CAP = 64 * 1024


def received_at_text(moment: datetime) -> str:
    """How ``received_at`` is stored: UTC, milliseconds, one fixed form, so that text order is
    time order and SQL can compare it."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


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


@dataclass(frozen=True, slots=True)
class StoredReport:
    """A report as stored: for an as-run, ``body`` is the verified payload, not the envelope."""

    station: str
    kind: str
    seq: int
    session: int | None
    body: bytes
    received_at: str


@dataclass(frozen=True, slots=True)
class StoreResult:
    stored: bool  # False: (station, kind, seq) was already stored (a resend)
    conflict: bool  # a resend whose bytes differ from what is stored (the first one stays)
    watermark: int | None  # highest contiguous seq of (station, kind) from 0; None: seq 0 missing


@dataclass(frozen=True, slots=True)
class Refusal:
    topic: str
    reason: str  # "code: detail"
    payload: bytes
    received_at: str

    @property
    def code(self) -> str:
        return self.reason.partition(":")[0]


@dataclass(frozen=True, slots=True)
class StationState:
    """The last birth or Will a station's ``state`` topic carried."""

    station: str
    online: bool
    body: bytes
    received_at: str


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

    def replace_station(self, station: StationId, cert_pem: bytes, signing_public: str) -> None:
        """Re-enrollment after a repair: new certificate and key, reports and watermarks kept
        (they are keyed by the station id), any revocation cleared."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self.db:
            self.db.execute(
                "UPDATE station SET cert_pem = ?, signing_public = ?, enrolled_at = ?, "
                "revoked_at = NULL WHERE id = ?",
                (cert_pem, signing_public, now, station.path),
            )

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

    # reports, watermarks, refusals, station state (the collector's) -------------------------

    def lookup_station(self, station_id: str) -> StationRecord | None:
        """One station by id, revoked ones included (the collector tells unknown from revoked)."""
        row = self.db.execute(
            "SELECT id, cert_pem, signing_public, enrolled_at, revoked_at FROM station "
            "WHERE id = ?",
            (station_id,),
        ).fetchone()
        if row is None:
            return None
        i, c, s, e, r = row
        return StationRecord(StationId.parse(i), bytes(c), s, e, r)

    def store_report(
        self, station: str, kind: str, seq: int, session: int | None, body: bytes,
        envelope: bytes | None, received_at: str,
    ) -> StoreResult:  # fmt: skip
        """Store a report once per (station, kind, seq) and advance that kind's watermark.

        One transaction, so the watermark never names a report that is not stored: the station
        deletes its copy on the strength of it.
        """
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            cursor = db.execute(
                "INSERT OR IGNORE INTO report VALUES (?, ?, ?, ?, ?, ?, ?)",
                (station, kind, seq, session, body, envelope, received_at),
            )
            stored = cursor.rowcount == 1
            conflict = False
            if stored:
                upto = self._advance_watermark(station, kind, seq)
            else:
                row = db.execute(
                    "SELECT body FROM report WHERE station = ? AND kind = ? AND seq = ?",
                    (station, kind, seq),
                ).fetchone()
                conflict = bytes(row[0]) != body
                upto = self._watermark(station, kind)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return StoreResult(stored, conflict, upto)

    def _watermark(self, station: str, kind: str) -> int | None:
        row = self.db.execute(
            "SELECT upto FROM watermark WHERE station = ? AND kind = ?", (station, kind)
        ).fetchone()
        return None if row is None else int(row[0])

    def _advance_watermark(self, station: str, kind: str, seq: int) -> int | None:
        current = self._watermark(station, kind)
        upto = -1 if current is None else current
        if seq != upto + 1:
            return current  # a gap stays open until its report arrives
        # The new report may close a gap: walk on through the reports already stored above it.
        rows = self.db.execute(
            "SELECT seq FROM report WHERE station = ? AND kind = ? AND seq > ? ORDER BY seq",
            (station, kind, upto),
        )
        for (stored_seq,) in rows:
            if stored_seq != upto + 1:
                break
            upto = stored_seq
        self.db.execute(
            "INSERT INTO watermark VALUES (?, ?, ?) "
            "ON CONFLICT(station, kind) DO UPDATE SET upto = excluded.upto",
            (station, kind, upto),
        )
        return upto

    def watermarks(self, station: str) -> dict[str, int]:
        """Highest contiguous seq stored per kind; kinds without seq 0 yet are absent."""
        rows = self.db.execute(
            "SELECT kind, upto FROM watermark WHERE station = ? ORDER BY kind", (station,)
        )
        return {kind: int(upto) for kind, upto in rows}

    def reports(
        self, kind: str, stations: Iterable[str] | None = None,
        received_since: datetime | None = None,
    ) -> list[StoredReport]:  # fmt: skip
        """Stored reports of ``kind`` (of ``stations`` only, and received at or after
        ``received_since`` only, if given), by station then seq."""
        since = "" if received_since is None else received_at_text(received_since)
        rows = self.db.execute(
            "SELECT station, kind, seq, session, body, received_at FROM report "
            "WHERE kind = ? AND received_at >= ? ORDER BY station, seq",
            (kind, since),
        ).fetchall()
        wanted = None if stations is None else set(stations)
        return [
            StoredReport(st, k, seq, session, bytes(body), at)
            for st, k, seq, session, body, at in rows
            if wanted is None or st in wanted
        ]

    def last_report(self, station: str, kind: str) -> StoredReport | None:
        """The stored report of (station, kind) with the highest seq, gaps below it or not."""
        row = self.db.execute(
            "SELECT station, kind, seq, session, body, received_at FROM report "
            "WHERE station = ? AND kind = ? ORDER BY seq DESC LIMIT 1",
            (station, kind),
        ).fetchone()
        if row is None:
            return None
        st, k, seq, session, body, at = row
        return StoredReport(st, k, seq, session, bytes(body), at)

    def refuse(self, topic: str, reason: str, payload: bytes, received_at: str) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO refused (topic, reason, payload, received_at) VALUES (?, ?, ?, ?)",
                (topic, reason, payload[:REFUSED_PAYLOAD_CAP], received_at),
            )

    def refusals(self) -> list[Refusal]:
        rows = self.db.execute(
            "SELECT topic, reason, payload, received_at FROM refused ORDER BY id"
        )
        return [Refusal(t, r, bytes(p), at) for t, r, p, at in rows]

    def set_station_state(self, station: str, online: bool, body: bytes, received_at: str) -> None:
        """The station's current state, and one more line of its history (both or neither)."""
        with self.db:
            self.db.execute(
                "INSERT INTO station_state VALUES (?, ?, ?, ?) ON CONFLICT(station) DO UPDATE "
                "SET online = excluded.online, body = excluded.body, "
                "received_at = excluded.received_at",
                (station, int(online), body, received_at),
            )
            self.db.execute(
                "INSERT INTO state_log (station, online, body, received_at) VALUES (?, ?, ?, ?)",
                (station, int(online), body, received_at),
            )

    def state_history(self, station: str, since: str, until: str) -> list[StationState]:
        """Every state the station reported with ``since <= received_at < until`` (both in
        ``received_at_text`` form), oldest first; equal times keep their arrival order."""
        rows = self.db.execute(
            "SELECT station, online, body, received_at FROM state_log WHERE station = ? "
            "AND received_at >= ? AND received_at < ? ORDER BY received_at, id",
            (station, since, until),
        )
        return [StationState(st, bool(on), bytes(body), at) for st, on, body, at in rows]

    def station_state(self, station: str) -> StationState | None:
        row = self.db.execute(
            "SELECT station, online, body, received_at FROM station_state WHERE station = ?",
            (station,),
        ).fetchone()
        if row is None:
            return None
        return StationState(row[0], bool(row[1]), bytes(row[2]), row[3])
