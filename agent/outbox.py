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
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agent import faults

KINDS = ("heartbeat", "asrun", "event")
# The order in which reports give way when the outbox is over its cap: the proof of play last.
DROP_ORDER = ("heartbeat", "event", "asrun")
# Dropping stops below the cap by this fraction, so a full outbox does not drop on every append.
CAP_HYSTERESIS = 0.9

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
class DroppedRange:
    """Reports of one kind, ``first_seq`` to ``last_seq`` inclusive, dropped unsent."""

    kind: str
    first_seq: int
    last_seq: int
    count: int
    bytes: int


class Outbox:
    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox {path}: {exc}") from exc

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
    ) -> Report:
        """Allocate the next ``seq`` of ``kind``, build the payload with it, store both.

        ``occurrence`` (key, outcome): an as-run, booked as reported in the same transaction,
        so no crash can leave a report whose occurrence a restart would report again.
        ``on_air`` (key, started_at): ``mark_on_air`` in the same transaction (an emergency's
        "started" event: one commit where there were two)."""
        if kind not in KINDS:
            raise ValueError(f"unknown report kind {kind!r}")
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT next_seq FROM counter WHERE kind = ?", (kind,)).fetchone()
            seq = row[0] if row else 0
            payload = build(seq)
            cursor = db.execute(
                "INSERT INTO report (kind, seq, topic, payload, created_at) VALUES (?,?,?,?,?)",
                (kind, seq, topic, payload, now.isoformat()),
            )
            db.execute(
                "INSERT INTO counter VALUES (?, ?) ON CONFLICT(kind) DO UPDATE SET next_seq = ?",
                (kind, seq + 1, seq + 1),
            )
            if occurrence is not None:
                self._book(*occurrence, now)
            if on_air is not None:
                self._mark_on_air(*on_air)
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
        return Report(int(cursor.lastrowid or 0), kind, seq, topic, payload)

    def pending(self, after_id: int = 0, limit: int = 500) -> list[Report]:
        """Unacknowledged reports in the order they were written."""
        rows = self._db.execute(
            "SELECT id, kind, seq, topic, payload FROM report WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [Report(i, k, s, t, bytes(p)) for i, k, s, t, p in rows]

    def pending_ids(self) -> set[int]:
        return {row[0] for row in self._db.execute("SELECT id FROM report")}

    def acknowledge(self, watermarks: Mapping[str, int]) -> int:
        """Delete every report of each kind with ``seq`` up to its watermark; return the count."""
        deleted = 0
        try:
            with self._db:
                for kind, upto in watermarks.items():
                    if kind in KINDS and isinstance(upto, int) and not isinstance(upto, bool):
                        cur = self._db.execute(
                            "DELETE FROM report WHERE kind = ? AND seq <= ?", (kind, upto)
                        )
                        deleted += cur.rowcount
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot apply receipt: {exc}") from exc
        faults.crash_point(faults.OUTBOX_ACKED)  # the deletes committed, nothing flushed yet
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
        with self._db:
            self._mark_on_air(key, started_at)

    def _mark_on_air(self, key: str, started_at: datetime) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO on_air VALUES (?, ?)", (key, started_at.isoformat())
        )

    def forget_on_air(self, keys: list[str]) -> None:
        with self._db:
            self._db.executemany("DELETE FROM on_air WHERE key = ?", [(k,) for k in keys])

    def on_air(self) -> dict[str, datetime]:
        """Occurrences that began to sound and have no as-run yet: key -> when they began."""
        rows = self._db.execute("SELECT key, started_at FROM on_air")
        return {key: datetime.fromisoformat(at) for key, at in rows}

    def was_reported(self, key: str) -> bool:
        row = self._db.execute("SELECT 1 FROM occurrence WHERE key = ?", (key,)).fetchone()
        return row is not None

    def forget_reported_before(self, before: datetime) -> None:
        with self._db:
            self._db.execute("DELETE FROM occurrence WHERE reported_at < ?", (before.isoformat(),))

    def set_alive(self, now: datetime) -> None:
        """The last moment the station was known to be running (catch-up starts there)."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO alive VALUES (1, ?)", (now.isoformat(),))

    def last_alive(self) -> datetime | None:
        row = self._db.execute("SELECT at FROM alive WHERE id = 1").fetchone()
        return None if row is None else datetime.fromisoformat(row[0])

    def next_session(self) -> int:
        """Count connections: each connect gets a new session number, persisted."""
        with self._db:
            self._db.execute(
                "INSERT INTO meta VALUES ('session', 1) "
                "ON CONFLICT(key) DO UPDATE SET value = value + 1"
            )
            row = self._db.execute("SELECT value FROM meta WHERE key = 'session'").fetchone()
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
