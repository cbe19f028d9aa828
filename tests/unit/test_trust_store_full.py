"""The trust store on a full disk (issue 13, part "disk"): the heartbeat's time-floor write
is best effort (the floor stays where it was; nothing raises into the runtime), while an
envelope's acceptance whose commit fails raises StoreError and leaves the cached state, and
so every version the station believes it holds, as it was."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.core.codes import Code
from agent.core.trust_state import RaiseTimeFloor, RememberCommand
from agent.core.verify import Accepted, Rejection
from agent.trust_store import StoreError, TrustStore
from tests.harness.trust import Station, command_body, envelope, playlist_body

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def refuse_writes(store: TrustStore) -> None:
    store._db.execute("PRAGMA query_only = 1")  # every write refused, as on ENOSPC


def test_raise_floor_on_a_full_disk_returns_false_and_keeps_the_floor(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust.db")
    assert store.raise_floor(NOW) is True
    refuse_writes(store)
    assert store.raise_floor(NOW + timedelta(hours=1)) is False
    assert store.snapshot().time_floor == NOW
    store._db.execute("PRAGMA query_only = 0")
    assert store.raise_floor(NOW + timedelta(hours=2)) is True
    assert store.snapshot().time_floor == NOW + timedelta(hours=2)
    store.close()


def test_a_failed_commit_leaves_the_snapshot_as_it_was(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust.db")
    store.raise_floor(NOW)
    before = store.snapshot()
    refuse_writes(store)
    with pytest.raises(StoreError), store.transaction():
        store.persist((RaiseTimeFloor(NOW + timedelta(days=1)),), NOW)
    assert store.snapshot() == before
    store.close()


def test_a_commit_sqlite_rolled_back_itself_raises_store_error(tmp_path: Path) -> None:
    """SQLITE_FULL at COMMIT: SQLite has rolled the transaction back already (what a full disk
    did under the e2e test); the store's own ROLLBACK must not raise past StoreError."""
    store = TrustStore(tmp_path / "trust.db")
    with pytest.raises(StoreError, match="cannot commit"), store.transaction():
        store.persist((RaiseTimeFloor(NOW),), NOW)
        store._db.execute("ROLLBACK")  # as SQLite does itself on SQLITE_FULL
    assert store.snapshot().time_floor is None
    store.close()


def test_effects_kept_in_memory_count_at_once_and_reach_the_disk_once_there_is_room(
    tmp_path: Path,
) -> None:
    """An emergency accepted on a full disk: its command id is in every snapshot at once (a
    replay is refused in this run) and is written when the disk takes it again."""
    store = TrustStore(tmp_path / "trust.db")
    refuse_writes(store)
    remember = (RememberCommand("cmd-1", NOW + timedelta(hours=1)),)
    with pytest.raises(StoreError), store.transaction():
        store.persist(remember, NOW)
    store.keep_unwritten(remember, NOW)
    assert "cmd-1" in store.snapshot().commands
    assert store.write_kept() is False and store.unwritten == 1  # still full: held, no raise
    store._db.execute("PRAGMA query_only = 0")
    with store.transaction() as state:  # what the next envelope is verified against
        assert "cmd-1" in state.commands
    assert store.write_kept() is True and store.unwritten == 0
    with TrustStore(tmp_path / "trust.db") as fresh:  # what a restart would read
        assert "cmd-1" in fresh.snapshot().commands
    store.close()


def test_a_command_acts_on_a_full_disk_and_its_replay_is_refused(station: Station) -> None:
    """A full disk must not silence an emergency: the command is accepted, its id kept in
    memory (its replay refused in this run) and written once there is room. A playlist on the
    same full disk is not believed (StoreError: the station holds it and retries)."""
    command = envelope("command", command_body(), "command")
    refuse_writes(station.store)
    verdict = station.ingest(command)
    assert isinstance(verdict, Accepted) and not verdict.noop
    replayed = station.ingest(command)
    assert isinstance(replayed, Rejection) and replayed.code == Code.REPLAY
    with pytest.raises(StoreError):
        station.ingest(envelope("playlist", playlist_body(), "playlist"))
    assert station.store.playlist_bodies() == {}
    station.store._db.execute("PRAGMA query_only = 0")
    assert station.store.write_kept()
    with TrustStore(station.config.paths.trust_db) as fresh:  # what a restart would read
        assert "t-0001" in fresh.snapshot().commands
