"""Report bodies the station sends up (PROTOCOL.md section 7): birth, heartbeat, as-run, event.

Pure builders: values in, JSON bytes out. Sequence numbers come from the outbox, which owns
them; as-run records are DSSE envelopes signed with the station's own key so the province can
prove who said what was played.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core import dsse, strict
from agent.core.targets import StationId
from agent.core.timefmt import format_rfc3339

ASRUN_TYPE = "application/vnd.loa.asrun+json"
REPORT_KINDS = ("heartbeat", "asrun", "event")  # the kinds with a seq (agent/outbox.py)
OUTCOMES = ("complete", "partial", "preempted", "skipped", "missed", "failed")
REASON_MAX = 200  # asrun.schema.json's maxLength for reason


def to_bytes(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def ts(moment: datetime) -> str:
    return format_rfc3339(moment)


@dataclass(frozen=True, slots=True)
class AsRun:
    """What happened to one occurrence; the outbox adds seq and session when it is stored."""

    slot: str
    stream: str
    playlist_version: int
    media: str | None
    sha256: str | None
    scheduled_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    played_s: float
    outcome: str
    reason: str | None
    zones: tuple[str, ...]
    volume: int
    relay_ok: bool | None
    amp_power_ok: bool | None
    output_level_db: float | None
    clock_trusted: bool


def asrun_body(station: StationId, seq: int, session: int, record: AsRun) -> dict[str, Any]:
    if record.outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {record.outcome!r}")
    return {
        "kind": "asrun",
        "schema": 1,
        "station": station.path,
        "seq": seq,
        "session": session,
        "slot": record.slot,
        "stream": record.stream,
        "playlist_version": record.playlist_version,
        "media": record.media,
        "sha256": record.sha256,
        "scheduled_at": ts(record.scheduled_at),
        "started_at": ts(record.started_at) if record.started_at else None,
        "ended_at": ts(record.ended_at) if record.ended_at else None,
        "played_s": (
            round(record.played_s, 3)
            if math.isfinite(record.played_s) and record.played_s > 0
            else 0.0
        ),
        "outcome": record.outcome,
        # A failure's reason can quote a decoder's error at any length; the schema (and the
        # province's tables) take 200 characters.
        "reason": None if record.reason is None else record.reason[:REASON_MAX],
        "zones": list(record.zones),
        "volume": record.volume,
        "relay_ok": record.relay_ok,
        "amp_power_ok": record.amp_power_ok,
        # NaN or an infinity would make the body invalid JSON to the collector, which refuses
        # it and so never receipts this seq: the level is then unknown, not unreadable.
        "output_level_db": (
            round(record.output_level_db, 1)
            if record.output_level_db is not None and math.isfinite(record.output_level_db)
            else None
        ),
        "clock_trusted": record.clock_trusted,
    }


def signed_asrun(
    station: StationId, seq: int, session: int, record: AsRun, key: Ed25519PrivateKey
) -> bytes:
    body = to_bytes(asrun_body(station, seq, session, record))
    return dsse.sign(ASRUN_TYPE, body, [key], compact=True)


def event_body(
    station: StationId,
    seq: int,
    session: int,
    now: datetime,
    event: str,
    code: str | None,
    detail: str,
    fields: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An event: ``event`` names what happened (envelope, media, boot, command, ...), ``code``
    is a section 8 code when there is one."""
    body: dict[str, Any] = {
        "kind": "event",
        "schema": 1,
        "station": station.path,
        "seq": seq,
        "session": session,
        "ts": ts(now),
        "event": event,
        "code": code,
        "detail": detail[:500],
    }
    if fields:
        body.update({k: v for k, v in fields.items() if k not in body})
    return body


@dataclass(frozen=True, slots=True)
class Health:
    """The station's state for heartbeats and births, gathered by the runtime."""

    uptime_s: float
    state: str
    streams: Mapping[str, int]
    keyring: int
    volume: int
    agent_version: str
    cache: Mapping[str, Any]
    clock: Mapping[str, Any]
    link: Mapping[str, Any]
    outbox: Mapping[str, Any]
    hw: Mapping[str, Any]
    alerts: tuple[str, ...] = ()  # e.g. keyring-expired, clock-untrusted: said until resolved


def heartbeat_body(
    station: StationId, seq: int, session: int, now: datetime, health: Health
) -> dict[str, Any]:
    return {
        "kind": "heartbeat",
        "schema": 1,
        "station": station.path,
        "seq": seq,
        "session": session,
        "ts": ts(now),
        "uptime_s": round(health.uptime_s, 1),
        "state": health.state,
        "streams": dict(health.streams),
        "keyring": health.keyring,
        "cache": dict(health.cache),
        "clock": dict(health.clock),
        "link": dict(health.link),
        "outbox": dict(health.outbox),
        "hw": dict(health.hw),
        "alerts": list(health.alerts),
        "volume": health.volume,
        "agent_version": health.agent_version,
    }


def birth_body(station: StationId, session: int, now: datetime, health: Health) -> dict[str, Any]:
    """Retained on ``state`` at every connect (Sparkplug B's birth); the Will says offline."""
    return {
        "online": True,
        "station": station.path,
        "session": session,
        "ts": ts(now),
        "agent_version": health.agent_version,
        "streams": dict(health.streams),
        "keyring": health.keyring,
        "cache": dict(health.cache),
    }


def offline_body(station: StationId) -> dict[str, Any]:
    return {"online": False, "station": station.path}


def parse_receipt(payload: bytes) -> dict[str, int]:
    """The collector's receipt on ``.../ack`` (section 7): ``{kind: highest contiguous seq}``.

    Kinds this station does not know are skipped (a newer collector may receipt more); a known
    kind whose watermark is not a non-negative integer (``true`` is not 1) refuses the whole
    receipt with ValueError, since the outbox deletes on its strength.
    """
    doc = strict.loads(payload)  # StrictDecodeError is a ValueError
    if not isinstance(doc, dict):
        raise ValueError("a receipt is a JSON object of watermarks")
    marks: dict[str, int] = {}
    for kind, upto in doc.items():
        if kind not in REPORT_KINDS:
            continue
        if isinstance(upto, bool) or not isinstance(upto, int) or upto < 0:
            raise ValueError(f"receipt watermark of {kind} is not an integer from 0: {upto!r}")
        marks[kind] = upto
    return marks
