"""The outbox on a full disk (issue 13, part "disk"): a report the database refuses is held in
memory, not lost, and stored in order (seqs 0..N, no gap, none twice) once there is room;
receipts, sessions and marks that cannot be written are held too, and nothing raises.

The refusal is SQLite's own: ``PRAGMA query_only`` makes every write of the outbox's
connection fail (sqlite3.OperationalError), as ENOSPC makes them fail with SQLITE_FULL; the
outbox treats every refused write alike. tests/e2e/test_fault_disk.py meets the kernel's
ENOSPC on a real tiny file system."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.outbox import Outbox

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
BIG = b"x" * 3000  # more than a page: each report needs new pages


def fill(box: Outbox) -> None:
    """Every write of this connection refused from now on."""
    db: sqlite3.Connection = box._db  # the test's lever on the real database
    db.execute("PRAGMA query_only = 1")


def free(box: Outbox) -> None:
    box._db.execute("PRAGMA query_only = 0")


def payload(text: str) -> Callable[[int], bytes]:
    return lambda seq: f"{text}:{seq}:".encode() + BIG


def test_refused_reports_are_held_then_stored_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    assert box.append("event", "t", payload("a"), NOW) is not None
    fill(box)
    held = [box.append("event", "t", payload(f"h{n}"), NOW) for n in range(3)]
    held.append(box.append("heartbeat", "t", payload("hb"), NOW))
    assert held == [None] * 4 and box.held == 4
    assert [r.seq for r in box.pending()] == [0]  # nothing half-stored
    free(box)
    report = box.append("event", "t", payload("b"), NOW)
    assert report is not None and report.seq == 4 and box.held == 0
    events = [r for r in box.pending() if r.kind == "event"]
    assert [r.seq for r in events] == [0, 1, 2, 3, 4]
    assert [r.payload.split(b":")[0] for r in events] == [b"a", b"h0", b"h1", b"h2", b"b"]
    assert [r.seq for r in box.pending() if r.kind == "heartbeat"] == [0]
    assert box.take_unkept() == {}
    box.close()


def test_a_held_asrun_counts_as_reported_and_its_mark_as_on_air(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    fill(box)
    box.mark_on_air("k2", NOW)  # no exception: held
    assert box.append("asrun", "t", payload("r"), NOW, occurrence=("k1", "complete")) is None
    assert box.was_reported("k1") and not box.was_reported("k2")
    assert box.on_air() == {"k2": NOW}
    free(box)
    assert box.store_held() and box.was_reported("k1") and box.on_air() == {"k2": NOW}
    box.close()
    again = Outbox(tmp_path / "outbox.db")  # all of it on disk now
    assert again.was_reported("k1") and again.on_air() == {"k2": NOW}
    again.close()


def test_receipt_session_and_alive_on_a_full_disk_are_held(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    for n in range(4):
        box.append("event", "t", payload(str(n)), NOW)
    assert box.next_session() == 1
    fill(box)
    assert box.acknowledge({"event": 1}) == 0  # not raised: held
    assert [r.seq for r in box.pending()] == [2, 3] and len(box.pending_ids()) == 2
    assert box.next_session() == 2
    box.set_alive(NOW + timedelta(hours=1))
    assert box.last_alive() == NOW + timedelta(hours=1)
    free(box)
    assert box.store_held() == []
    box.close()
    again = Outbox(tmp_path / "outbox.db")
    assert [r.seq for r in again.pending()] == [2, 3]
    assert again.next_session() == 3
    assert again.last_alive() == NOW + timedelta(hours=1)
    again.close()


def test_held_reports_are_bounded_and_the_loss_is_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.held_limit = 3
    fill(box)
    box.append("asrun", "t", payload("r"), NOW, occurrence=("k", "complete"))
    for n in range(3):
        box.append("heartbeat", "t", payload(str(n)), NOW)
    box.append("event", "t", payload("e"), NOW)
    assert box.held == 3
    assert box.take_unkept() == {"heartbeat": 2} and box.take_unkept() == {}
    free(box)
    box.store_held()
    kinds = {(r.kind, r.seq) for r in box.pending()}
    assert kinds == {("asrun", 0), ("heartbeat", 0), ("event", 0)}
    box.close()
