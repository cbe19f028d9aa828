"""The trust store on a full disk (issue 13, part "disk"): the heartbeat's time-floor write
is best effort (the floor stays where it was; nothing raises into the runtime), while an
envelope's acceptance whose commit fails raises StoreError and leaves the cached state, and
so every version the station believes it holds, as it was."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.core.trust_state import RaiseTimeFloor
from agent.trust_store import StoreError, TrustStore

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
