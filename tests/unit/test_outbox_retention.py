"""The outbox's bounded retention (heartbeats give way first, as-runs last, losses as seq ranges)
and the aggregation of rejection floods (first few per code and minute, then counts)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.core.flood import FloodGate, Suppressed
from agent.outbox import DroppedRange, Outbox

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
ROW = 1000  # payload bytes per report in these tests


def fill(outbox: Outbox, kind: str, count: int) -> None:
    for _ in range(count):
        outbox.append(kind, f"t/{kind}", lambda seq: bytes(ROW), NOW)


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox.db")


def seqs(outbox: Outbox, kind: str) -> list[int]:
    return [r.seq for r in outbox.pending() if r.kind == kind]


def test_under_the_cap_nothing_is_dropped(outbox: Outbox) -> None:
    fill(outbox, "heartbeat", 10)
    assert outbox.stored_bytes() == 10 * ROW
    assert outbox.enforce_cap(10 * ROW) == []
    assert len(outbox.pending()) == 10


def test_heartbeats_go_first_oldest_first_down_to_the_hysteresis(outbox: Outbox) -> None:
    fill(outbox, "asrun", 5)
    fill(outbox, "event", 5)
    fill(outbox, "heartbeat", 20)
    dropped = outbox.enforce_cap(25 * ROW)  # 30 stored: down to 22.5 -> 8 heartbeats go
    assert dropped == [DroppedRange("heartbeat", 0, 7, 8, 8 * ROW)]
    assert seqs(outbox, "heartbeat") == list(range(8, 20))
    assert seqs(outbox, "asrun") == list(range(5)) and seqs(outbox, "event") == list(range(5))


def test_events_before_asruns_and_the_newest_of_each_kind_stays(outbox: Outbox) -> None:
    fill(outbox, "asrun", 10)
    fill(outbox, "event", 10)
    fill(outbox, "heartbeat", 10)
    dropped = outbox.enforce_cap(10 * ROW)  # down to 9 reports
    assert [(d.kind, d.first_seq, d.last_seq) for d in dropped] == [
        ("heartbeat", 0, 8),
        ("event", 0, 8),
        ("asrun", 0, 2),
    ]
    assert seqs(outbox, "heartbeat") == [9] and seqs(outbox, "event") == [9]
    assert seqs(outbox, "asrun") == list(range(3, 10))


def test_a_later_drop_continues_where_the_last_ended_and_seq_never_repeats(
    outbox: Outbox, tmp_path: Path
) -> None:
    fill(outbox, "heartbeat", 10)
    first = outbox.enforce_cap(5 * ROW)
    fill(outbox, "heartbeat", 10)
    second = outbox.enforce_cap(5 * ROW)
    assert first[0].last_seq + 1 == second[0].first_seq
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.db")
    fill(reopened, "heartbeat", 1)
    assert seqs(reopened, "heartbeat")[-1] == 20


def test_a_receipt_after_a_drop_still_deletes_up_to_its_watermark(outbox: Outbox) -> None:
    fill(outbox, "event", 10)
    outbox.enforce_cap(5 * ROW)
    outbox.acknowledge({"event": 7})
    assert seqs(outbox, "event") == [8, 9]


def test_flood_gate_passes_the_first_few_per_code_then_counts() -> None:
    gate = FloodGate(per_window=3, window_s=60)
    admitted = [gate.admit("bad-signature", 0.1 * i) for i in range(10)]
    assert admitted == [True] * 3 + [False] * 7
    assert gate.admit("replay", 1.0)  # codes are counted apart
    assert gate.due(59.0) == []  # the window is not over
    assert gate.pending() == 7
    assert gate.due(60.5) == [Suppressed("bad-signature", 7, 60)]
    assert gate.due(200.0) == [] and gate.pending() == 0


def test_a_new_window_opens_after_a_minute_and_no_count_is_lost() -> None:
    gate = FloodGate(per_window=1, window_s=60)
    assert gate.admit("schema", 0) and not gate.admit("schema", 1)
    # The next minute's first event arrives before anyone asked for the summary.
    assert gate.admit("schema", 61) and not gate.admit("schema", 62)
    assert gate.due(62) == [Suppressed("schema", 1, 60)]
    assert gate.due(121) == [Suppressed("schema", 1, 60)]
