"""The durable outbox (PROTOCOL.md section 7): every report is written here before it is sent.

SQLite, WAL, synchronous=FULL. ``seq`` is per report kind, allocated in the same transaction
that stores the report, so it increases by one and never repeats across restarts or power cuts.
A row leaves only when the collector's receipt watermark covers it: a broker PUBACK deletes
nothing (mosquitto also acknowledges messages it then discards).

Retention is bounded (``enforce_cap``), and the policy is written here because the province's
KPI depends on it: when the unacknowledged reports outgrow the cap (weeks without a link), the
oldest heartbeats go first, then the oldest events, and as-run records only when nothing else is
left; never the newest report of a kind. What was dropped is returned as ranges of ``seq`` so
the station reports the loss itself (event ``reports-dropped``), and the collector can tell a
known loss from a gap still to be filled.

A full disk (or any write the database refuses) loses nothing either: the report is *held* in
memory with its builder, unnumbered, and stored (``seq`` allocated then, in order per kind)
by the next ``append`` or ``store_held`` that finds room; until then ``was_reported`` and
``on_air`` count held as-runs and marks as written, so nothing is reported twice. Receipts,
sessions, on-air marks and the alive mark that cannot be written are held the same way. Held
reports are bounded (``held_limit``); past it the oldest go in ``DROP_ORDER`` and are counted
(``take_unkept``) so the station reports that loss itself (event ``reports-unkept``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agent import disk_reserve, faults

KINDS = ("heartbeat", "asrun", "event")
# The order in which reports give way when the outbox is over its cap: the proof of play last.
DROP_ORDER = ("heartbeat", "event", "asrun")
# Dropping stops below the cap by this fraction, so a full outbox does not drop on every append.
CAP_HYSTERESIS = 0.9
# Reports held in memory at most while the database cannot be written (a full disk): about a
# week of heartbeats at the default one per 5 minutes, some 3 MB (a held heartbeat's builder
# and health take about 1.5 kB); past it the oldest give way in DROP_ORDER, counted.
HELD_LIMIT = 2_000

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counter (kind TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS report (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, seq INTEGER NOT NULL,
    topic TEXT NOT NULL, payload BLOB NOT NULL, created_at TEXT NOT NULL,
    UNIQUE (kind, seq));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS occurrence (key TEXT PRIMARY KEY, outcome TEXT NOT NULL,
    reported_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alive (id INTEGER PRIMARY KEY CHECK (id = 1), at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS on_air (key TEXT PRIMARY KEY, started_at TEXT NOT NULL);
"""


class OutboxError(RuntimeError):
    """The outbox cannot be written (disk full, corruption): reports are at risk."""


@dataclass(frozen=True, slots=True)
class Report:
    id: int
    kind: str
    seq: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class _Held:
    """A report the database refused: everything ``append`` needs to store it later."""

    kind: str
    topic: str
    build: Callable[[int], bytes]
    now: datetime
    occurrence: tuple[str, str] | None
    on_air: tuple[str, datetime] | None


@dataclass(frozen=True, slots=True)
class DroppedRange:
    """Reports of one kind, ``first_seq`` to ``last_seq`` inclusive, dropped unsent."""

    kind: str
    first_seq: int
    last_seq: int
    count: int
    bytes: int


class Outbox:
    def __init__(self, path: Path) -> None:
        self._directory = path.parent
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = disk_reserve.open_database(path, _SCHEMA)
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox {path}: {exc}") from exc
        self.held_limit = HELD_LIMIT
        self._held: list[_Held] = []
        self._held_on_air: dict[str, datetime] = {}
        self._held_marks: dict[str, int] = {}  # receipt watermarks not yet applied
        self._held_alive: datetime | None = None
        self._held_session: int | None = None
        self._unkept: Counter[str] = Counter()
        self._last: Report | None = None  # what store_held stored last, and from which entry
        self._last_entry: _Held | None = None

    def close(self) -> None:
        self._db.close()

    def append(
        self,
        kind: str,
        topic: str,
        build: Callable[[int], bytes],
        now: datetime,
        *,
        occurrence: tuple[str, str] | None = None,
        on_air: tuple[str, datetime] | None = None,
    ) -> Report | None:
        """Allocate the next ``seq`` of ``kind``, build the payload with it, store both.

        ``occurrence`` (key, outcome): an as-run, booked as reported in the same transaction,
        so no crash can leave a report whose occurrence a restart would report again.
        ``on_air`` (key, started_at): ``mark_on_air`` in the same transaction (an emergency's
        "started" event: one commit where there were two).

        Returns None when the database refused the write (disk full): the report is held in
        memory, behind any held before it, and stored by a later call that finds room."""
        if kind not in KINDS:
            raise ValueError(f"unknown report kind {kind!r}")
        entry = _Held(kind, topic, build, now, occurrence, on_air)
        if not self._held:
            try:
                return self._store(entry)
            except OutboxError as exc:
                log.error("%s: held in memory until the disk has room", exc)
                self._held.append(entry)
                return None
        self._held.append(entry)
        self._bound_held()
        self.store_held()
        return self._last if self._last_entry is entry else None

    def _store(self, entry: _Held) -> Report:
        db = self._db
        kind = entry.kind
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT next_seq FROM counter WHERE kind = ?", (kind,)).fetchone()
            seq = row[0] if row else 0
            payload = entry.build(seq)
            cursor = db.execute(
                "INSERT INTO report (kind, seq, topic, payload, created_at) VALUES (?,?,?,?,?)",
                (kind, seq, entry.topic, payload, entry.now.isoformat()),
            )
            db.execute(
                "INSERT INTO counter VALUES (?, ?) ON CONFLICT(kind) DO UPDATE SET next_seq = ?",
                (kind, seq + 1, seq + 1),
            )
            if entry.occurrence is not None:
                self._book(*entry.occurrence, entry.now)
            if entry.on_air is not None:
                self._mark_on_air(*entry.on_air)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise OutboxError(f"cannot store {kind} report: {exc}") from exc
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        faults.crash_point(faults.OUTBOX_WRITTEN)  # committed, not yet published
        return Report(int(cursor.lastrowid or 0), kind, seq, entry.topic, payload)

    def store_held(self) -> list[Report]:
        """Store what the database refused before, oldest first, until it refuses again;
        returns the reports stored (the caller sends them with the rest of ``pending``)."""
        self._store_held_marks()
        stored: list[Report] = []
        while self._held:
            entry = self._held[0]
            try:
                self._last = self._store(entry)
                self._last_entry = entry
                stored.append(self._last)
            except OutboxError:
                break
            except Exception as exc:  # a builder that fails now would block every report
                log.error("held %s report cannot be built, dropped: %s", entry.kind, exc)
                self._unkept[entry.kind] += 1
            self._held.pop(0)
        if stored:
            log.info("%d held reports stored, %d still held", len(stored), len(self._held))
        return stored

    @property
    def held(self) -> int:
        """Reports held in memory, waiting for room."""
        return len(self._held)

    def take_unkept(self) -> dict[str, int]:
        """Reports given up since the last call ({kind: count}), to be reported; resets."""
        unkept = dict(self._unkept)
        self._unkept.clear()
        return unkept

    def _bound_held(self) -> None:
        while len(self._held) > max(1, self.held_limit):
            kinds = [h.kind for h in self._held[:-1]]  # never the newest
            kind = next((k for k in DROP_ORDER if k in kinds), self._held[0].kind)
            index = kinds.index(kind) if kind in kinds else 0
            self._unkept[self._held.pop(index).kind] += 1

    def _store_held_marks(self) -> None:
        """The small writes held by a full disk: receipts, marks, the alive mark, session."""
        try:
            with self._db:
                if self._held_marks:
                    self._delete_upto(self._held_marks)
                for key, at in self._held_on_air.items():
                    self._mark_on_air(key, at)
                if self._held_alive is not None:
                    self._write_alive(self._held_alive)
                if self._held_session is not None:
                    self._db.execute(
                        "INSERT INTO meta VALUES ('session', ?) ON CONFLICT(key) "
                        "DO UPDATE SET value = MAX(value, excluded.value)",
                        (self._held_session,),
                    )
        except sqlite3.Error:
            return
        self._held_marks, self._held_on_air = {}, {}
        self._held_alive = self._held_session = None

    def pending(self, after_id: int = 0, limit: int = 500) -> list[Report]:
        """Unacknowledged reports in the order they were written (a receipt the disk could
        not apply yet still counts: what it covers is not sent again)."""
        rows = self._db.execute(
            "SELECT id, kind, seq, topic, payload FROM report WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [Report(i, k, s, t, bytes(p)) for i, k, s, t, p in rows if not self._covered(k, s)]

    def _covered(self, kind: str, seq: int) -> bool:
        return seq <= self._held_marks.get(kind, -1)

    def pending_ids(self) -> set[int]:
        rows = self._db.execute("SELECT id, kind, seq FROM report")
        return {i for i, k, s in rows if not self._covered(k, s)}

    def acknowledge(self, watermarks: Mapping[str, int]) -> int:
        """Delete every report of each kind with ``seq`` up to its watermark; return the count.

        A database that cannot be written (disk full) keeps the watermarks in memory: the
        reports they cover are no longer pending, and go from the disk once it has room."""
        marks = {
            kind: upto
            for kind, upto in watermarks.items()
            if kind in KINDS and isinstance(upto, int) and not isinstance(upto, bool)
        }
        try:
            with self._db:
                deleted = self._delete_upto(marks)
        except sqlite3.Error as exc:
            log.error("cannot apply receipt (%s): held in memory", exc)
            for kind, upto in marks.items():
                self._held_marks[kind] = max(upto, self._held_marks.get(kind, upto))
            return 0
        faults.crash_point(faults.OUTBOX_ACKED)  # the deletes committed, nothing flushed yet
        return deleted

    def _delete_upto(self, marks: Mapping[str, int]) -> int:
        deleted = 0
        for kind, upto in marks.items():
            cur = self._db.execute("DELETE FROM report WHERE kind = ? AND seq <= ?", (kind, upto))
            deleted += cur.rowcount
        return deleted

    def mark_reported(self, key: str, outcome: str, now: datetime) -> None:
        """Remember that an occurrence got its as-run, so a restart never reports it twice."""
        with self._db:
            self._book(key, outcome, now)

    def _book(self, key: str, outcome: str, now: datetime) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO occurrence VALUES (?, ?, ?)", (key, outcome, now.isoformat())
        )
        self._db.execute("DELETE FROM on_air WHERE key = ?", (key,))

    def mark_on_air(self, key: str, started_at: datetime) -> None:
        """An occurrence began to sound: if the station dies before its as-run, the restart
        knows it was on air (and reports it cut short) rather than never started."""
        try:
            with self._db:
                self._mark_on_air(key, started_at)
        except sqlite3.Error as exc:
            log.error("cannot record %s on air (%s): held in memory", key, exc)
            self._held_on_air.setdefault(key, started_at)

    def _mark_on_air(self, key: str, started_at: datetime) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO on_air VALUES (?, ?)", (key, started_at.isoformat())
        )

    def forget_on_air(self, keys: list[str]) -> None:
        for key in keys:
            self._held_on_air.pop(key, None)
        try:
            with self._db:
                self._db.executemany("DELETE FROM on_air WHERE key = ?", [(k,) for k in keys])
        except sqlite3.Error as exc:  # kept: a restart that finds a stale mark reports it
            log.error("cannot forget on-air marks: %s", exc)

    def on_air(self) -> dict[str, datetime]:
        """Occurrences that began to sound and have no as-run yet: key -> when they began."""
        rows = self._db.execute("SELECT key, started_at FROM on_air")
        marks = {key: datetime.fromisoformat(at) for key, at in rows}
        for key, at in self._held_on_air.items():
            marks.setdefault(key, at)
        for held in self._held:
            if held.on_air is not None:
                marks.setdefault(*held.on_air)
            if held.occurrence is not None:
                marks.pop(held.occurrence[0], None)
        return marks

    def was_reported(self, key: str) -> bool:
        if any(h.occurrence is not None and h.occurrence[0] == key for h in self._held):
            return True  # its as-run is held in memory, not lost
        row = self._db.execute("SELECT 1 FROM occurrence WHERE key = ?", (key,)).fetchone()
        return row is not None

    def forget_reported_before(self, before: datetime) -> None:
        try:
            with self._db:
                self._db.execute(
                    "DELETE FROM occurrence WHERE reported_at < ?", (before.isoformat(),)
                )
        except sqlite3.Error as exc:  # old bookings stay until the next try: harmless
            log.error("cannot forget old occurrences: %s", exc)

    def set_alive(self, now: datetime) -> None:
        """The last moment the station was known to be running (catch-up starts there).

        Also, while nothing is held, the disk reserve is put back if it was given up and the
        disk has room again (agent/disk_reserve.py): the next restart on a full disk opens."""
        try:
            with self._db:
                self._write_alive(now)
        except sqlite3.Error as exc:
            log.error("cannot record the alive mark (%s): held in memory", exc)
            self._held_alive = now
            return
        if not self._held:
            disk_reserve.ensure(self._directory)

    def _write_alive(self, now: datetime) -> None:
        self._db.execute("INSERT OR REPLACE INTO alive VALUES (1, ?)", (now.isoformat(),))

    def last_alive(self) -> datetime | None:
        if self._held_alive is not None:
            return self._held_alive
        row = self._db.execute("SELECT at FROM alive WHERE id = 1").fetchone()
        return None if row is None else datetime.fromisoformat(row[0])

    def next_session(self) -> int:
        """Count connections: each connect gets a new session number, persisted (held in
        memory, and written later, when the disk is full)."""
        try:
            with self._db:
                self._db.execute(
                    "INSERT INTO meta VALUES ('session', 1) "
                    "ON CONFLICT(key) DO UPDATE SET value = MAX(value, ?) + 1",
                    (self._held_session or 0,),
                )
                row = self._db.execute("SELECT value FROM meta WHERE key = 'session'").fetchone()
        except sqlite3.Error as exc:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'session'").fetchone()
            self._held_session = max(int(row[0]) if row else 0, self._held_session or 0) + 1
            log.error("cannot persist session %d (%s): held in memory", self._held_session, exc)
            return self._held_session
        self._held_session = None
        return int(row[0])

    def stored_bytes(self) -> int:
        row = self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM report").fetchone()
        return int(row[0])

    def enforce_cap(self, max_bytes: int) -> list[DroppedRange]:
        """Drop the oldest reports, in ``DROP_ORDER``, until the payloads fit in
        ``CAP_HYSTERESIS * max_bytes``; nothing happens while they fit in ``max_bytes``.

        The newest report of each kind is kept: it is the station's latest word, and the
        report of the loss goes out beside it."""
        total = self.stored_bytes()
        if max_bytes <= 0 or total <= max_bytes:
            return []
        goal = int(max_bytes * CAP_HYSTERESIS)
        dropped: list[DroppedRange] = []
        try:
            with self._db:
                for kind in DROP_ORDER:
                    if total <= goal:
                        break
                    rows = self._db.execute(
                        "SELECT seq, LENGTH(payload) FROM report WHERE kind = ? "
                        "AND seq < (SELECT MAX(seq) FROM report WHERE kind = ?) ORDER BY seq",
                        (kind, kind),
                    ).fetchall()
                    taken: list[tuple[int, int]] = []
                    for seq, size in rows:
                        if total <= goal:
                            break
                        taken.append((seq, size))
                        total -= size
                    if taken:
                        last = taken[-1][0]
                        self._db.execute(
                            "DELETE FROM report WHERE kind = ? AND seq <= ?", (kind, last)
                        )
                        freed = sum(size for _, size in taken)
                        dropped.append(DroppedRange(kind, taken[0][0], last, len(taken), freed))
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot enforce the outbox cap: {exc}") from exc
        return dropped

    def backlog(self) -> dict[str, int]:
        rows = self._db.execute("SELECT kind, COUNT(*) FROM report GROUP BY kind")
        return {kind: count for kind, count in rows}
