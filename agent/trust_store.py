"""The station's trust state on disk: keyring, accepted playlists, command ids, time floor,
accepted releases and the release version floor (meta ``release_floor``, docs/releases.md).

One SQLite database (WAL, synchronous=FULL: a power cut loses nothing that was reported as
accepted). ``transaction()`` takes the write lock *before* reading the snapshot, so the running
agent and a technician's ``loa-agent ingest`` never verify against the same old state and both
write: the second waits, then sees the first one's result. Effects are written in the same
transaction that read the snapshot, so a check and its consequences are one atomic step.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from agent import disk_reserve, faults
from agent.core import strict
from agent.core.models import Keyring
from agent.core.trust_state import (
    Effect,
    RaiseReleaseFloor,
    RaiseTimeFloor,
    RecordRelease,
    RememberCommand,
    StoreKeyring,
    StorePlaylist,
    Stream,
    StreamRecord,
    TrustState,
    Version,
    apply,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keyring (
    version INTEGER PRIMARY KEY, body_sha256 TEXT NOT NULL, body BLOB NOT NULL,
    envelope BLOB NOT NULL, installed_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS playlist (
    issuer TEXT NOT NULL, target TEXT NOT NULL, version INTEGER NOT NULL,
    body_sha256 TEXT NOT NULL, body BLOB NOT NULL, envelope BLOB NOT NULL,
    floor_reset INTEGER NOT NULL DEFAULT 0, accepted_at TEXT NOT NULL,
    PRIMARY KEY (issuer, target));
CREATE TABLE IF NOT EXISTS command (id TEXT PRIMARY KEY, expires TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS release (
    version TEXT PRIMARY KEY, body_sha256 TEXT NOT NULL, accepted_at TEXT NOT NULL);
"""

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The state database cannot be opened or written (disk full, permissions, corruption)."""


class TrustStore:
    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self._writes = 0
        self._cached: tuple[tuple[int, int], TrustState] | None = None
        # What ``persist`` wrote in the open transaction, and when: on commit the cached
        # snapshot moves forward by the same effects (``trust_state.apply``) instead of being
        # read back, which would cost every remembered command id per accepted command.
        self._written: list[tuple[tuple[Effect, ...], datetime]] = []
        # Effects a full disk refused that the station acted on anyway (an emergency's command
        # id, ``keep_unwritten``): every snapshot carries them until ``write_kept`` stores them,
        # so a replay is refused in this run even before the id reaches the disk.
        self._unwritten: list[tuple[tuple[Effect, ...], datetime]] = []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = disk_reserve.open_database(path, _SCHEMA, busy_timeout_s)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state database {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> TrustStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[TrustState]:
        """Hold the write lock; yield the current snapshot; commit what ``persist`` wrote."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"state database is locked or unwritable: {exc}") from exc
        self._written = []
        try:
            state = self._with_unwritten(self._load())
            yield state
        except BaseException:
            self._rollback()
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"cannot commit state: {exc}") from exc
        # Crash points: committed, and nobody (the station's replan, the held envelopes) knows.
        if any(isinstance(e, StorePlaylist) for effects, _ in self._written for e in effects):
            faults.crash_point(faults.PLAYLIST_ACCEPTED)
        if any(isinstance(e, StoreKeyring) for effects, _ in self._written for e in effects):
            faults.crash_point(faults.KEYRING_STORED)
        if self._written and self._cached is not None:
            for effects, now in self._written:
                state = _forget_expired(apply(state, effects), now)
            # Our own commit leaves PRAGMA data_version as it was; ``_writes`` moved.
            self._cached = ((self._cached[0][0], self._writes), state)
        self._written = []

    def _rollback(self) -> None:
        self._written = []  # the cache moves only on commit
        # SQLite rolls back by itself when a COMMIT fails with SQLITE_FULL (a full disk): a
        # ROLLBACK then raised "no transaction is active" past StoreError, out of the runtime.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def snapshot(self) -> TrustState:
        """The current state for reading (heartbeats, events): no write lock taken."""
        try:
            if self._cached is not None and self._cached[0] == self._version():
                # Every event asks: one PRAGMA, no transaction.
                return self._with_unwritten(self._cached[1])
            self._db.execute("BEGIN")
            try:
                return self._with_unwritten(self._load())
            finally:
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read state: {exc}") from exc

    def _with_unwritten(self, state: TrustState) -> TrustState:
        for effects, _ in self._unwritten:
            state = apply(state, effects)
        return state

    def keep_unwritten(self, effects: tuple[Effect, ...], now: datetime) -> None:
        """Hold effects the disk refused (their transaction rolled back) in memory: snapshots
        include them from now on, and ``write_kept`` stores them once there is room. Only for
        what the station must act on regardless (an emergency sounds on a full disk); a
        restart before they are written forgets them, the price of sounding at all."""
        self._unwritten.append((effects, now))

    @property
    def unwritten(self) -> int:
        return len(self._unwritten)

    def write_kept(self) -> bool:
        """Store what ``keep_unwritten`` held; True once nothing is left held. A disk still
        full keeps them held (no StoreError: the next watch tick tries again)."""
        if not self._unwritten:
            return True
        kept, self._unwritten = self._unwritten, []
        try:
            with self.transaction():
                for effects, now in kept:
                    self.persist(effects, now)
        except StoreError:
            self._unwritten = kept + self._unwritten
            return False
        return True

    def persist(self, effects: tuple[Effect, ...], now: datetime) -> None:
        """Write effects; call inside ``transaction()``. Expired command ids are forgotten."""
        stamp = now.isoformat()
        self._writes += 1  # our own commits do not move PRAGMA data_version
        self._written.append((effects, now))
        try:
            for effect in effects:
                self._write(effect, stamp)
            self._db.execute("DELETE FROM command WHERE expires <= ?", (_utc(now),))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write state: {exc}") from exc

    def _write(self, effect: Effect, stamp: str) -> None:
        db = self._db
        match effect:
            case StoreKeyring():
                db.execute(
                    "INSERT INTO keyring VALUES (?, ?, ?, ?, ?)",
                    (
                        effect.keyring.version,
                        effect.body_sha256,
                        effect.body,
                        effect.envelope,
                        stamp,
                    ),
                )
                for issuer in effect.reset_issuers:
                    db.execute("UPDATE playlist SET floor_reset = 1 WHERE issuer = ?", (issuer,))
            case StorePlaylist():
                db.execute(
                    "INSERT OR REPLACE INTO playlist VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                    (
                        *effect.stream,
                        effect.version,
                        effect.body_sha256,
                        effect.body,
                        effect.envelope,
                        stamp,
                    ),
                )
            case RememberCommand():
                db.execute(
                    "INSERT OR REPLACE INTO command VALUES (?, ?)",
                    (effect.id, _utc(effect.expires)),
                )
            case RaiseTimeFloor():
                db.execute(
                    "INSERT INTO meta VALUES ('time_floor', ?) ON CONFLICT(key) DO UPDATE "
                    "SET value = excluded.value WHERE excluded.value > meta.value",
                    (_utc(effect.floor),),
                )
            case RecordRelease():
                db.execute(
                    "INSERT OR REPLACE INTO release VALUES (?, ?, ?)",
                    (_version_text(effect.version), effect.body_sha256, stamp),
                )
            case RaiseReleaseFloor():
                # Compared as triples here: as text "0.10.0" would sort below "0.9.0".
                held = _read_release_floor(db)
                if held is None or effect.version > held:
                    db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('release_floor', ?)",
                        (_version_text(effect.version),),
                    )

    def _load(self) -> TrustState:
        """The snapshot, re-read only when this or another connection changed the database
        (every event and heartbeat asks; parsing the keyring each time would be waste)."""
        key = self._version()
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        state = self._read()
        self._cached = (key, state)
        return state

    def _version(self) -> tuple[int, int]:
        return (_data_version(self._db), self._writes)

    def _read(self) -> TrustState:
        db = self._db
        keyring = None
        keyring_sha = ""
        row = db.execute(
            "SELECT body, body_sha256 FROM keyring ORDER BY version DESC LIMIT 1"
        ).fetchone()
        if row is not None:
            # The body was verified when it was stored; it is parsed, not re-verified.
            keyring = Keyring.from_body(strict.loads(row[0]))
            keyring_sha = row[1]
        streams: dict[Stream, StreamRecord] = {
            (issuer, target): StreamRecord(version, sha, bool(reset))
            for issuer, target, version, sha, reset in db.execute(
                "SELECT issuer, target, version, body_sha256, floor_reset FROM playlist"
            )
        }
        commands = {
            cid: datetime.fromisoformat(expires)
            for cid, expires in db.execute("SELECT id, expires FROM command")
        }
        floor_row = db.execute("SELECT value FROM meta WHERE key = 'time_floor'").fetchone()
        releases: dict[Version, str] = {}
        for version, sha in db.execute("SELECT version, body_sha256 FROM release"):
            parsed = _parse_version(version)
            if parsed is not None:
                releases[parsed] = sha
        return TrustState(
            keyring=keyring,
            keyring_sha256=keyring_sha,
            streams=MappingProxyType(streams),
            commands=MappingProxyType(commands),
            time_floor=datetime.fromisoformat(floor_row[0]) if floor_row else None,
            release_floor=_read_release_floor(db),
            releases=MappingProxyType(releases),
        )

    def raise_floor(self, now: datetime) -> bool:
        """Persist ``now`` as the time floor (only ever raised): called while the clock is
        trusted, so that after a power cut the station knows time cannot be earlier.

        Best effort: a database that cannot be written (disk full) leaves the floor where it
        was (still a true lower bound) and returns False; the next heartbeat tries again. It
        must not take the heartbeat, and the station with it, down."""
        try:
            with self.transaction():
                self.persist((RaiseTimeFloor(now),), now)
        except StoreError as exc:
            log.error("time floor not raised: %s", exc)
            return False
        return True

    def raise_release_floor(self, version: Version, now: datetime) -> None:
        """Persist ``version`` as the release floor (only ever raised): the station confirmed
        it running, so no release below it is accepted again."""
        with self.transaction():
            self.persist((RaiseReleaseFloor(version),), now)

    def data_version(self) -> int:
        """Changes when *another* connection (``loa-agent ingest``) committed to the database."""
        return _data_version(self._db)

    def playlist_bodies(self) -> dict[Stream, bytes]:
        """The verified bodies of the playlists in force, for the planner."""
        rows = self._db.execute("SELECT issuer, target, body FROM playlist")
        return {(issuer, target): bytes(body) for issuer, target, body in rows}


def _forget_expired(state: TrustState, now: datetime) -> TrustState:
    """What ``persist``'s DELETE does to the command ids, on the snapshot."""
    if all(expires > now for expires in state.commands.values()):
        return state
    kept = {cid: expires for cid, expires in state.commands.items() if expires > now}
    return replace(state, commands=MappingProxyType(kept))


def _utc(moment: datetime) -> str:
    """ISO text in UTC with fixed width, so SQL string comparison is time comparison."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _version_text(version: Version) -> str:
    return ".".join(str(part) for part in version)


def _parse_version(text: str) -> Version | None:
    parts = text.split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        return None
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def _read_release_floor(db: sqlite3.Connection) -> Version | None:
    row = db.execute("SELECT value FROM meta WHERE key = 'release_floor'").fetchone()
    return None if row is None else _parse_version(row[0])


def _data_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA data_version").fetchone()[0])
