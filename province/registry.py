"""The province's registry: what the province knows and has said, behind one storage interface.

It owns what the province knows and has said: its stations (id, TLS certificate, report-signing
key, revocation) and every certificate it revoked, what it published (so coverage knows what
was expected), and what stations reported (deduplicated on station, kind and seq, with the
receipt watermark per station and kind), what it refused, and each station's last birth or Will
with the history of them all. It also owns
the schema and every SQL statement; a ``Store`` only carries them to a database: ``SqliteStore``
here (one file, the embedded default), ``province.registry_pg.PostgresStore`` for a province
that outgrows one file. ``open_registry`` picks by location.
Files of the province home:

    HOME/registry.db            this database (unless LOA_PROVINCE_STORE names a PostgreSQL one)
    HOME/ca/ca.crt, ca.key      the province's device CA (stations and broker)
    HOME/operator/operator.crt  the province's own broker identity (CN province-PP), .key beside
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from agent.core.targets import StationId, is_within

# The schema in SQLite's words; PostgresStore translates the types (registry_pg.py). A watermark
# row with upto -1 marks a (station, kind) that has reports but no seq 0 yet: the row exists so
# that a writer can lock it (see store_report).
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS station (
    id TEXT PRIMARY KEY, province TEXT NOT NULL, commune TEXT NOT NULL, name TEXT NOT NULL,
    cert_pem BLOB NOT NULL, signing_public TEXT NOT NULL, enrolled_at TEXT NOT NULL,
    revoked_at TEXT, revoke_reason TEXT);
CREATE TABLE IF NOT EXISTS revocation (
    serial TEXT PRIMARY KEY, station TEXT NOT NULL, cert_pem BLOB NOT NULL,
    revoked_at TEXT NOT NULL, recorded_at TEXT NOT NULL, reason TEXT NOT NULL,
    crl_reason TEXT NOT NULL, replaced_at TEXT);
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
CREATE TABLE IF NOT EXISTS lost (
    station TEXT NOT NULL, kind TEXT NOT NULL, first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL, reported_at TEXT NOT NULL,
    PRIMARY KEY (station, kind, first_seq));
"""

# Columns added to tables of databases created before them (CREATE TABLE IF NOT EXISTS leaves
# an existing table as it is): (table, column, type in SQLite's words). Each store adds what is
# missing when it opens, nullable, so old rows stay valid.
COLUMNS_ADDED = (("station", "revoke_reason", "TEXT"),)

POSTGRES_SCHEMES = ("postgresql://", "postgres://")

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
    revoke_reason: str | None = None  # the operator's words at `loa-province revoke`


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revoked certificate. It stays revoked for good: re-enrolling the station issues a
    new certificate (a new serial) and only closes the window in which its reports do not
    count (``replaced_at``)."""

    serial: int
    station: str
    cert_pem: bytes
    revoked_at: str  # from when the station's word stops counting (UTC, RFC 3339)
    recorded_at: str  # when the province revoked it (the CRL's revocation date)
    reason: str
    crl_reason: str  # an RFC 5280 reason code by province.pki.CRL_REASONS' names
    replaced_at: str | None  # when a replacement was enrolled under the same station id


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


Row = tuple[Any, ...]

_STATION_COLUMNS = "id, cert_pem, signing_public, enrolled_at, revoked_at, revoke_reason"


def _station_record(row: Row) -> StationRecord:
    i, cert, signing, enrolled, revoked, reason = row
    return StationRecord(StationId.parse(i), bytes(cert), signing, enrolled, revoked, reason)


class Store(Protocol):
    """One connection to a registry database. Statements are the registry's, written with ``?``
    placeholders; a store runs them as they are or in its driver's placeholder style.

    Outside ``transaction()`` every statement commits on its own. Inside it, statements of this
    store (from any thread: the store serialises them) are one transaction, committed when the
    block ends, rolled back when it raises.
    """

    location: str  # for messages: a path, or a URL without its password
    for_update: str  # appended to a SELECT inside a transaction: lock its rows until the end
    integrity_errors: tuple[type[Exception], ...]  # what a violated key or constraint raises

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[Row]: ...

    def write(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    def transaction(self) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...


def _enter_wal(db: sqlite3.Connection, attempts: int = 100) -> None:
    """Switch a new database to WAL. Several collectors opening one new file at once race for
    it, and SQLite answers "database is locked" at once instead of waiting out its busy
    timeout (13 in 200 runs of four at once): a few short retries, then the error."""
    for attempt in range(attempts):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


class SqliteStore:
    """The embedded default: one SQLite file, WAL, synchronous writes."""

    # BEGIN IMMEDIATE already holds the database's one write lock for the whole transaction.
    for_update = ""
    integrity_errors: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.location = str(path)
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        _enter_wal(self.db)
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        # One connection shared by threads: a transaction must not take in another thread's
        # statements, so each statement and each transaction holds this lock.
        self._lock = threading.RLock()
        for table, column, kind in COLUMNS_ADDED:
            # Looked at first without a write lock: a database that has the column (every new
            # one) is never written to on open, so collectors starting at once do not queue.
            if not self._has_column(table, column):
                with self.transaction():  # BEGIN IMMEDIATE: one process adds it, others see it
                    if not self._has_column(table, column):
                        self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _has_column(self, table: str, column: str) -> bool:
        return column in {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        with self._lock:
            return self.db.execute(sql, params).fetchall()

    def write(self, sql: str, params: Sequence[object] = ()) -> int:
        with self._lock:
            return self.db.execute(sql, params).rowcount

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self.db.in_transaction:  # SQLite may have rolled back already (disk full)
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


def open_registry(location: str | Path) -> Registry:
    """A ``postgresql://`` (or ``postgres://``) URL opens that PostgreSQL database; anything
    else is the path of a SQLite file. Either way the schema is created if it is missing."""
    if isinstance(location, str) and location.startswith(POSTGRES_SCHEMES):
        # Imported here: psycopg is an optional extra, and SQLite provinces run without it.
        from province.registry_pg import PostgresStore

        return Registry.on(PostgresStore(location))
    return Registry(Path(location))


class Registry:
    def __init__(self, path: Path) -> None:
        self._attach(SqliteStore(path))

    @classmethod
    def on(cls, store: Store) -> Registry:
        """A registry over any store (``Registry(path)`` is the SQLite one)."""
        registry = cls.__new__(cls)
        registry._attach(store)
        return registry

    def _attach(self, store: Store) -> None:
        self.store = store
        # Where it is, for messages: the SQLite file, or the PostgreSQL URL without password.
        self.path: Path | str = store.path if isinstance(store, SqliteStore) else store.location

    @property
    def db(self) -> sqlite3.Connection:
        """The SQLite connection under a SQLite registry (tests reach under the interface)."""
        if not isinstance(self.store, SqliteStore):
            raise RegistryError(f"{self.store.location} is not a SQLite registry")
        return self.store.db

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _one(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        found = self.store.rows(sql, params)
        return found[0] if found else None

    # meta --------------------------------------------------------------------------------------

    def set_meta(self, key: str, value: str) -> None:
        with self.store.transaction():
            self.store.write(
                "INSERT INTO meta VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    # stations ----------------------------------------------------------------------------------

    def add_station(self, station: StationId, cert_pem: bytes, signing_public: str) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            with self.store.transaction():
                self.store.write(
                    "INSERT INTO station (id, province, commune, name, cert_pem, "
                    "signing_public, enrolled_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (station.path, station.province, station.commune, station.name,
                     cert_pem, signing_public, now),
                )  # fmt: skip
        except self.store.integrity_errors as exc:
            raise RegistryError(f"{station.path} is already enrolled") from exc

    def replace_station(self, station: StationId, cert_pem: bytes, signing_public: str) -> None:
        """Re-enrollment after a repair, or a replacement for a revoked station: new certificate
        and key, reports kept (a new device's renumbered: ``_renumber_below_zero``), the station
        active again. Its revoked certificates stay revoked (they are in ``revocation``);
        their windows close now."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self.store.transaction():
            before = self._one("SELECT signing_public FROM station WHERE id = ?", (station.path,))
            if before is not None and before[0] != signing_public:
                self._renumber_below_zero(station.path)
            self.store.write(
                "UPDATE station SET cert_pem = ?, signing_public = ?, enrolled_at = ?, "
                "revoked_at = NULL, revoke_reason = NULL WHERE id = ?",
                (cert_pem, signing_public, now, station.path),
            )
            self.store.write(
                "UPDATE revocation SET replaced_at = ? WHERE station = ? AND replaced_at IS NULL",
                (now, station.path),
            )

    def _renumber_below_zero(self, station: str) -> None:
        """A new device under an old station id (its signing key changed): its outbox starts
        again at seq 0, where the old device's reports already are, and would be refused as
        seq conflicts. The old device's reports and lost ranges move below every seq stored
        (they keep their order and still count), and the watermarks start again from none.
        A repaired station that kept its key keeps its seqs and is not renumbered."""
        row = self._one(
            "SELECT MIN(low), MAX(high) FROM ("
            "SELECT MIN(seq) AS low, MAX(seq) AS high FROM report WHERE station = ? "
            "UNION ALL SELECT MIN(first_seq), MAX(last_seq) FROM lost WHERE station = ?) AS s",
            (station, station),
        )
        if row is None or row[1] is None:
            self.store.write("UPDATE watermark SET upto = -1 WHERE station = ?", (station,))
            return
        # Every moved seq lands below the lowest one now stored: no row collides on its way.
        shift = int(row[1]) - min(int(row[0]), 0) + 1
        self.store.write("UPDATE report SET seq = seq - ? WHERE station = ?", (shift, station))
        self.store.write(
            "UPDATE lost SET first_seq = first_seq - ?, last_seq = last_seq - ? WHERE station = ?",
            (shift, shift, station),
        )
        self.store.write("UPDATE watermark SET upto = -1 WHERE station = ?", (station,))

    def stations(self, *, include_revoked: bool = False) -> list[StationRecord]:
        rows = self.store.rows(f"SELECT {_STATION_COLUMNS} FROM station ORDER BY id")
        found = [_station_record(row) for row in rows]
        return [s for s in found if include_revoked or s.revoked_at is None]

    def revoke_station(
        self, station_id: str, serial: int, revoked_at: str, reason: str, crl_reason: str
    ) -> Revocation:
        """Take an active station out of service for good: the station row stays (revoked_at,
        revoke_reason), its certificate goes into ``revocation`` for the CRL. ``revoked_at``
        may lie in the past (the station was lost before anyone revoked it)."""
        recorded = datetime.now(UTC).isoformat(timespec="seconds")
        with self.store.transaction():
            row = self._one(
                f"SELECT {_STATION_COLUMNS} FROM station WHERE id = ?" + self.store.for_update,
                (station_id,),
            )
            if row is None:
                raise RegistryError(f"{station_id} is not enrolled")
            record = _station_record(row)
            listed = self._one("SELECT 1 FROM revocation WHERE serial = ?", (f"{serial:x}",))
            if listed is not None:
                raise RegistryError(f"{station_id} was already revoked {record.revoked_at}")
            if record.revoked_at is not None:
                # Marked revoked before certificates were listed: list it, keep its time.
                revoked_at, reason = record.revoked_at, record.revoke_reason or reason
            self.store.write(
                "UPDATE station SET revoked_at = ?, revoke_reason = ? WHERE id = ?",
                (revoked_at, reason, station_id),
            )
            # Serials are up to 20 bytes, beyond any SQL integer: stored as hex text.
            self.store.write(
                "INSERT INTO revocation (serial, station, cert_pem, revoked_at, recorded_at, "
                "reason, crl_reason) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (serial) DO NOTHING",
                (f"{serial:x}", station_id, record.cert_pem, revoked_at, recorded, reason,
                 crl_reason),
            )  # fmt: skip
        return Revocation(
            serial, station_id, record.cert_pem, revoked_at, recorded, reason, crl_reason, None
        )

    def revocations(self, station: str | None = None) -> list[Revocation]:
        """Every revoked certificate (of ``station`` only, if given), oldest first."""
        rows = self.store.rows(
            "SELECT serial, station, cert_pem, revoked_at, recorded_at, reason, crl_reason, "
            "replaced_at FROM revocation ORDER BY recorded_at, serial"
        )
        return [
            Revocation(int(serial, 16), st, bytes(cert), at, rec, reason, crl, replaced)
            for serial, st, cert, at, rec, reason, crl, replaced in rows
            if station is None or st == station
        ]

    def next_crl_number(self) -> int:
        """The next CRL number (1, 2, ...): RFC 5280 wants it to grow with every CRL issued."""
        with self.store.transaction():
            self.store.write(
                "INSERT INTO meta VALUES ('crl_number', '0') ON CONFLICT (key) DO NOTHING"
            )
            row = self._one(
                "SELECT value FROM meta WHERE key = 'crl_number'" + self.store.for_update
            )
            assert row is not None  # inserted above
            number = int(row[0]) + 1
            self.store.write("UPDATE meta SET value = ? WHERE key = 'crl_number'", (str(number),))
        return number

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
        with self.store.transaction():
            self.store.write(
                "INSERT INTO published (topic, kind, issuer, target, label, body, envelope, "
                "published_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (topic, kind, issuer, target, label, body, envelope, now),
            )

    def published(self, kind: str) -> Iterator[Published]:
        rows = self.store.rows(
            "SELECT topic, kind, issuer, target, label, body, published_at FROM published "
            "WHERE kind = ? ORDER BY id",
            (kind,),
        )
        for topic, k, issuer, target, label, body, at in rows:
            yield Published(topic, k, issuer, target, label, bytes(body), at)

    # reports, watermarks, refusals, station state (the collector's) -------------------------

    def lookup_station(self, station_id: str) -> StationRecord | None:
        """One station by id, revoked ones included (the collector tells unknown from revoked)."""
        row = self._one(f"SELECT {_STATION_COLUMNS} FROM station WHERE id = ?", (station_id,))
        return None if row is None else _station_record(row)

    def store_report(
        self, station: str, kind: str, seq: int, session: int | None, body: bytes,
        envelope: bytes | None, received_at: str,
    ) -> StoreResult:  # fmt: skip
        """Store a report once per (station, kind, seq) and advance that kind's watermark.

        One transaction, so the watermark never names a report that is not stored: the station
        deletes its copy on the strength of it.
        """
        store = self.store
        with store.transaction():
            current = self._lock_watermark(station, kind)
            stored = (
                store.write(
                    "INSERT INTO report VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (station, kind, seq) DO NOTHING",
                    (station, kind, seq, session, body, envelope, received_at),
                )
                == 1
            )
            conflict = False
            upto = current
            if stored:
                upto = self._advance_watermark(station, kind, seq, current)
            else:
                row = self._one(
                    "SELECT body FROM report WHERE station = ? AND kind = ? AND seq = ?",
                    (station, kind, seq),
                )
                assert row is not None  # the insert above found it
                conflict = bytes(row[0]) != body
        return StoreResult(stored, conflict, None if upto < 0 else upto)

    def _lock_watermark(self, station: str, kind: str) -> int:
        """Lock this (station, kind)'s watermark row, creating it if need be, and return it; in
        the caller's transaction. Writers of one stream then take turns, and each one's walk
        sees every report the ones before it stored: without the lock, two collectors storing
        seqs 1 and 2 at once could each miss the other's and leave the watermark at 0 for good."""
        self.store.write(
            "INSERT INTO watermark VALUES (?, ?, -1) ON CONFLICT (station, kind) DO NOTHING",
            (station, kind),
        )
        locked = self._one(
            "SELECT upto FROM watermark WHERE station = ? AND kind = ?" + self.store.for_update,
            (station, kind),
        )
        assert locked is not None  # inserted above, and watermark rows are never deleted
        return int(locked[0])

    def _advance_watermark(self, station: str, kind: str, seq: int, upto: int) -> int:
        """The new watermark after storing ``seq`` (-1: none yet), in the caller's transaction."""
        if seq != upto + 1:
            return upto  # a gap stays open until its report arrives (or is reported lost)
        return self._walk_watermark(station, kind, seq)

    def _walk_watermark(self, station: str, kind: str, upto: int) -> int:
        """From ``upto`` on through every seq that is stored or known lost; saved and returned."""
        rows = self.store.rows(
            "SELECT seq, seq FROM report WHERE station = ? AND kind = ? AND seq > ? "
            "UNION ALL SELECT first_seq, last_seq FROM lost "
            "WHERE station = ? AND kind = ? AND last_seq > ? ORDER BY 1",
            (station, kind, upto, station, kind, upto),
        )
        for first, last in rows:
            if first > upto + 1:
                break
            upto = max(upto, int(last))
        self.store.write(
            "UPDATE watermark SET upto = ? WHERE station = ? AND kind = ?", (upto, station, kind)
        )
        return upto

    def record_lost(
        self, station: str, kind: str, first_seq: int, last_seq: int, reported_at: str
    ) -> int | None:
        """A station's word that it dropped ``first_seq..last_seq`` of ``kind`` unsent (its
        outbox was over its cap): those seqs will never come, so the watermark may pass them
        (the station keeps everything above it until receipted). Returns the new watermark."""
        if not 0 <= first_seq <= last_seq:
            raise RegistryError(f"bad lost range {first_seq}..{last_seq}")
        store = self.store
        with store.transaction():
            upto = self._lock_watermark(station, kind)
            store.write(
                "INSERT INTO lost VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (station, kind, first_seq) DO NOTHING",
                (station, kind, first_seq, last_seq, reported_at),
            )
            if first_seq <= upto + 1:
                upto = self._walk_watermark(station, kind, upto)
        return None if upto < 0 else upto

    def lost_ranges(self, station: str) -> list[tuple[str, int, int]]:
        """(kind, first_seq, last_seq) the station said it dropped, in order."""
        rows = self.store.rows(
            "SELECT kind, first_seq, last_seq FROM lost WHERE station = ? ORDER BY kind, first_seq",
            (station,),
        )
        return [(kind, int(first), int(last)) for kind, first, last in rows]

    def gaps(self, station: str) -> dict[str, tuple[int, int]]:
        """Per kind with a hole: (the watermark, the highest seq stored above it). A station
        resends what is not receipted by itself only after a while; a collector may ask sooner."""
        rows = self.store.rows(
            "SELECT w.kind, w.upto, MAX(r.seq) FROM watermark w JOIN report r "
            "ON r.station = w.station AND r.kind = w.kind AND r.seq > w.upto + 1 "
            "WHERE w.station = ? GROUP BY w.kind, w.upto ORDER BY w.kind",
            (station,),
        )
        return {kind: (int(upto), int(high)) for kind, upto, high in rows}

    def watermarks(self, station: str) -> dict[str, int]:
        """Highest contiguous seq stored per kind; kinds without seq 0 yet are absent."""
        rows = self.store.rows(
            "SELECT kind, upto FROM watermark WHERE station = ? AND upto >= 0 ORDER BY kind",
            (station,),
        )
        return {kind: int(upto) for kind, upto in rows}

    def reports(
        self, kind: str, stations: Iterable[str] | None = None,
        received_since: datetime | None = None,
    ) -> list[StoredReport]:  # fmt: skip
        """Stored reports of ``kind`` (of ``stations`` only, and received at or after
        ``received_since`` only, if given), by station then seq."""
        since = "" if received_since is None else received_at_text(received_since)
        rows = self.store.rows(
            "SELECT station, kind, seq, session, body, received_at FROM report "
            "WHERE kind = ? AND received_at >= ? ORDER BY station, seq",
            (kind, since),
        )
        wanted = None if stations is None else set(stations)
        return [
            StoredReport(st, k, seq, session, bytes(body), at)
            for st, k, seq, session, body, at in rows
            if wanted is None or st in wanted
        ]

    def last_report(self, station: str, kind: str) -> StoredReport | None:
        """The stored report of (station, kind) with the highest seq, gaps below it or not."""
        row = self._one(
            "SELECT station, kind, seq, session, body, received_at FROM report "
            "WHERE station = ? AND kind = ? ORDER BY seq DESC LIMIT 1",
            (station, kind),
        )
        if row is None:
            return None
        st, k, seq, session, body, at = row
        return StoredReport(st, k, seq, session, bytes(body), at)

    def refuse(self, topic: str, reason: str, payload: bytes, received_at: str) -> None:
        with self.store.transaction():
            self.store.write(
                "INSERT INTO refused (topic, reason, payload, received_at) VALUES (?, ?, ?, ?)",
                (topic, reason, payload[:REFUSED_PAYLOAD_CAP], received_at),
            )

    def refusals(self) -> list[Refusal]:
        rows = self.store.rows(
            "SELECT topic, reason, payload, received_at FROM refused ORDER BY id"
        )
        return [Refusal(t, r, bytes(p), at) for t, r, p, at in rows]

    def set_station_state(self, station: str, online: bool, body: bytes, received_at: str) -> None:
        """The station's current state, and one more line of its history (both or neither)."""
        with self.store.transaction():
            self.store.write(
                "INSERT INTO station_state VALUES (?, ?, ?, ?) ON CONFLICT (station) DO UPDATE "
                "SET online = excluded.online, body = excluded.body, "
                "received_at = excluded.received_at",
                (station, int(online), body, received_at),
            )
            self.store.write(
                "INSERT INTO state_log (station, online, body, received_at) VALUES (?, ?, ?, ?)",
                (station, int(online), body, received_at),
            )

    def station_state(self, station: str) -> StationState | None:
        row = self._one(
            "SELECT station, online, body, received_at FROM station_state WHERE station = ?",
            (station,),
        )
        if row is None:
            return None
        return StationState(row[0], bool(row[1]), bytes(row[2]), row[3])

    def state_history(self, station: str, since: str, until: str) -> list[StationState]:
        """Every state the station reported with ``since <= received_at < until`` (both in
        ``received_at_text`` form), oldest first; equal times keep their arrival order."""
        rows = self.store.rows(
            "SELECT station, online, body, received_at FROM state_log WHERE station = ? "
            "AND received_at >= ? AND received_at < ? ORDER BY received_at, id",
            (station, since, until),
        )
        return [StationState(st, bool(on), bytes(body), at) for st, on, body, at in rows]
