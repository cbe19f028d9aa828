"""The durable outbox and the report builders: seq per kind that survives restarts, receipts
that delete only what they cover, and bodies that match the protocol's schemas."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core import dsse
from agent.core.reports import (
    ASRUN_TYPE,
    AsRun,
    Health,
    event_body,
    heartbeat_body,
    signed_asrun,
    to_bytes,
)
from agent.core.targets import StationId
from agent.outbox import Outbox
from agent.schemas import load_schema_set

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
STATION = StationId.parse("25/08230/08230-01")


def test_seq_is_per_kind_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    seqs = [box.append(k, "t", lambda s: str(s).encode(), NOW).seq for k in ("event",) * 3]
    assert seqs == [0, 1, 2]
    assert box.append("asrun", "t", lambda s: b"x", NOW).seq == 0
    box.close()
    again = Outbox(path)
    assert again.append("event", "t", lambda s: str(s).encode(), NOW).seq == 3
    assert [r.payload for r in again.pending() if r.kind == "event"] == [b"0", b"1", b"2", b"3"]
    again.close()


def test_receipt_deletes_only_up_to_its_watermark(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    for _ in range(5):
        box.append("event", "t", lambda s: b"e", NOW)
        box.append("heartbeat", "t", lambda s: b"h", NOW)
    assert box.acknowledge({"event": 2, "bogus": 99, "heartbeat": True}) == 3  # type: ignore[dict-item]
    assert box.backlog() == {"event": 2, "heartbeat": 5}
    assert [r.seq for r in box.pending() if r.kind == "event"] == [3, 4]
    box.close()


def test_a_failing_builder_allocates_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")

    def broken(seq: int) -> bytes:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        box.append("event", "t", broken, NOW)
    assert box.append("event", "t", lambda s: b"ok", NOW).seq == 0
    box.close()


def test_sessions_count_up_and_persist(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    assert [box.next_session(), box.next_session()] == [1, 2]
    box.close()
    again = Outbox(tmp_path / "outbox.db")
    assert again.next_session() == 3
    again.close()


def test_bodies_match_the_schemas() -> None:
    schemas = load_schema_set()
    record = AsRun(
        slot="morning", stream="25@25", playlist_version=3, media="news", sha256="ab" * 32,
        scheduled_at=NOW, started_at=NOW, ended_at=NOW, played_s=600.0, outcome="complete",
        reason=None, zones=("all",), volume=80, relay_ok=True, amp_power_ok=True,
        output_level_db=-18.04, clock_trusted=True,
    )  # fmt: skip
    key = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
    env = json.loads(signed_asrun(STATION, 4, 2, record, key))
    body = base64.b64decode(env["payload"])
    assert env["payloadType"] == ASRUN_TYPE
    key.public_key().verify(
        base64.b64decode(env["signatures"][0]["sig"]), dsse.pae(ASRUN_TYPE, body)
    )
    asrun = json.loads(body)
    schemas.validate("asrun", asrun)
    assert asrun["seq"] == 4 and asrun["session"] == 2 and asrun["output_level_db"] == -18.0

    health = Health(
        uptime_s=12.3, state="idle", streams={"25@25": 3}, keyring=1, volume=80,
        agent_version="0.1.0", cache={}, clock={}, link={}, outbox={}, hw={},
    )  # fmt: skip
    schemas.validate("heartbeat", heartbeat_body(STATION, 0, 1, NOW, health))
    event = event_body(STATION, 0, 1, NOW, "envelope", "schema", "x" * 900, {"seq": -1})
    assert len(event["detail"]) == 500 and event["seq"] == 0  # fields never override the frame
    assert json.loads(to_bytes(event)) == event
