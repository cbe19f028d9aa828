"""agent/disk_reserve.py: the reserve is written only with room to spare, given up once, and
a database that will not open for want of room opens after it is given up."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from agent import disk_reserve
from agent.outbox import Outbox, OutboxError
from agent.trust_store import StoreError, TrustStore


def test_written_with_room_then_given_up_once(tmp_path: Path) -> None:
    assert disk_reserve.ensure(tmp_path)
    reserve = disk_reserve.path_in(tmp_path)
    assert reserve.stat().st_size == disk_reserve.SIZE
    assert reserve.stat().st_blocks * 512 >= disk_reserve.SIZE  # real blocks, not a hole
    assert disk_reserve.release(tmp_path) and not disk_reserve.release(tmp_path)
    assert not reserve.exists()


def test_not_written_without_room_to_spare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.statvfs(tmp_path)

    class Tight:
        f_frsize = real.f_frsize
        f_bavail = (disk_reserve.ROOM_FACTOR * disk_reserve.SIZE - 1) // real.f_frsize

    monkeypatch.setattr(os, "statvfs", lambda _: Tight())
    assert not disk_reserve.ensure(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def refuse_first_connect(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first sqlite3.connect fails as on a full disk (the -shm cannot be written)."""
    real, calls = sqlite3.connect, []

    def connect(path: Path, timeout: float, isolation_level: None) -> sqlite3.Connection:
        calls.append("connect")
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real(path, timeout=timeout, isolation_level=isolation_level)

    monkeypatch.setattr(sqlite3, "connect", connect)
    return calls


@pytest.mark.parametrize("opener", [Outbox, TrustStore])
def test_a_database_opens_after_the_reserve_is_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opener: type[Outbox] | type[TrustStore]
) -> None:
    assert disk_reserve.ensure(tmp_path)
    calls = refuse_first_connect(monkeypatch)
    opener(tmp_path / "state.db").close()
    assert calls == ["connect", "connect"]
    assert not disk_reserve.path_in(tmp_path).exists()


@pytest.mark.parametrize(("opener", "error"), [(Outbox, OutboxError), (TrustStore, StoreError)])
def test_without_a_reserve_the_open_error_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    opener: type[Outbox] | type[TrustStore], error: type[Exception],
) -> None:  # fmt: skip
    refuse_first_connect(monkeypatch)
    with pytest.raises(error, match="disk I/O error"):
        opener(tmp_path / "state.db")


def test_the_outbox_puts_the_reserve_back_when_the_disk_has_room(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    box = Outbox(tmp_path / "outbox.db")
    assert not disk_reserve.path_in(tmp_path).exists()
    box.set_alive(datetime(2026, 11, 22, tzinfo=UTC))
    assert disk_reserve.path_in(tmp_path).stat().st_size == disk_reserve.SIZE
    box.close()
