"""The collector's intake without a broker: who is believed, what is stored once, and how far
each kind's receipt watermark may go (PROTOCOL.md section 7). Each test runs on both registry
stores: SQLite, and a real PostgreSQL server (tests/harness/postgres.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core import dsse
from agent.core.reports import AsRun, offline_body, signed_asrun, to_bytes
from agent.core.targets import StationId
from province.collector import CONFLICT, DUPLICATE, IGNORED, REFUSED, STATE, STORED, ReportIntake
from province.registry import Registry, open_registry

ONE = StationId.parse("25/08230/08230-01")
TWO = StationId.parse("25/08230/08230-02")
NOW = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


def key(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


def asrun(seq: int, station: StationId = ONE, signer: Ed25519PrivateKey | None = None) -> bytes:
    record = AsRun(
        slot="morning", stream="25@25", playlist_version=1, media="news", sha256="ab" * 32,
        scheduled_at=datetime(2026, 11, 22, 23, 0, tzinfo=UTC),
        started_at=datetime(2026, 11, 22, 23, 0, 5, tzinfo=UTC),
        ended_at=datetime(2026, 11, 22, 23, 10, 5, tzinfo=UTC), played_s=600.0,
        outcome="complete", reason=None, zones=("all",), volume=80, relay_ok=True,
        amp_power_ok=True, output_level_db=-12.0, clock_trusted=True,
    )  # fmt: skip
    return signed_asrun(station, seq, 1, record, signer or key(1))


def heartbeat(seq: int, station: str = ONE.path, **changes: Any) -> bytes:
    body = {"kind": "heartbeat", "schema": 1, "station": station, "seq": seq, "session": 1,
            "ts": "2026-11-23T08:00:00+07:00", "state": "idle"}  # fmt: skip
    body.update(changes)
    return to_bytes(body)


def topic(station: StationId, kind: str) -> str:
    return f"{station.prefix}/telemetry/{kind}"


@pytest.fixture
def registry(registry_location: str) -> Iterator[Registry]:
    with open_registry(registry_location) as reg:
        reg.add_station(ONE, b"cert-1", dsse.public_raw(key(1)).hex())
        reg.add_station(TWO, b"cert-2", dsse.public_raw(key(2)).hex())
        yield reg


@pytest.fixture
def intake(registry: Registry) -> ReportIntake:
    return ReportIntake(registry, "25", lambda: NOW)


def test_a_report_is_stored_once_and_a_resend_is_a_duplicate(
    intake: ReportIntake, registry: Registry
) -> None:
    first = intake.handle(topic(ONE, "asrun"), asrun(0))
    again = intake.handle(topic(ONE, "asrun"), asrun(0))
    assert (first.outcome, first.watermark, first.wants_receipt) == (STORED, 0, True)
    # The station lost our receipt and resent: not an error, and it must be receipted again.
    assert (again.outcome, again.watermark, again.wants_receipt) == (DUPLICATE, 0, True)
    assert [(r.station, r.seq) for r in registry.reports("asrun")] == [(ONE.path, 0)]
    assert registry.refusals() == []


def test_the_stored_asrun_is_the_verified_payload(intake: ReportIntake, registry: Registry) -> None:
    envelope = asrun(0)
    intake.handle(topic(ONE, "asrun"), envelope)
    (stored,) = registry.reports("asrun")
    assert stored.body == dsse.parse_envelope(envelope, 1 << 20).body
    assert json.loads(stored.body)["outcome"] == "complete"
    assert stored.session == 1
    assert stored.received_at == "2026-11-23T01:00:00.000+00:00"


def test_watermark_is_the_highest_contiguous_seq_and_a_gap_holds_it(
    intake: ReportIntake, registry: Registry
) -> None:
    marks = [intake.handle(topic(ONE, "asrun"), asrun(seq)).watermark for seq in (0, 1, 3, 4)]
    assert marks == [0, 1, 1, 1]
    filled = intake.handle(topic(ONE, "asrun"), asrun(2))
    assert filled.watermark == 4  # seq 2 closes the gap and the walk takes 3 and 4 with it
    assert registry.watermarks(ONE.path) == {"asrun": 4}


def test_no_watermark_until_seq_0_and_kinds_are_independent(
    intake: ReportIntake, registry: Registry
) -> None:
    assert intake.handle(topic(ONE, "heartbeat"), heartbeat(1)).watermark is None
    assert registry.watermarks(ONE.path) == {}
    intake.handle(topic(ONE, "event"), to_bytes({"kind": "event", "station": ONE.path, "seq": 0}))
    assert registry.watermarks(ONE.path) == {"event": 0}
    intake.handle(topic(ONE, "heartbeat"), heartbeat(0))
    assert registry.watermarks(ONE.path) == {"event": 0, "heartbeat": 1}
    assert registry.watermarks(TWO.path) == {}


def test_asrun_signed_by_another_key_is_refused_and_not_stored(
    intake: ReportIntake, registry: Registry
) -> None:
    # Station two's key is a real station key, just not this station's.
    handled = intake.handle(topic(ONE, "asrun"), asrun(0, signer=key(2)))
    assert handled.outcome == REFUSED
    assert handled.reason is not None and handled.reason.startswith("bad-signature:")
    assert not handled.wants_receipt
    assert registry.reports("asrun") == []
    assert registry.watermarks(ONE.path) == {}
    (refusal,) = registry.refusals()
    assert (refusal.topic, refusal.code) == (topic(ONE, "asrun"), "bad-signature")


def test_unsigned_asrun_is_refused(intake: ReportIntake, registry: Registry) -> None:
    body = dsse.parse_envelope(asrun(0), 1 << 20).body
    handled = intake.handle(topic(ONE, "asrun"), body)
    assert handled.outcome == REFUSED
    assert [r.code for r in registry.refusals()] == ["bad-envelope"]


def test_body_naming_another_station_is_refused(intake: ReportIntake, registry: Registry) -> None:
    # Even correctly signed by the sender: a station may only speak for itself.
    signed = intake.handle(topic(TWO, "asrun"), asrun(0, station=ONE, signer=key(2)))
    plain = intake.handle(topic(ONE, "heartbeat"), heartbeat(0, station=TWO.path))
    assert (signed.outcome, plain.outcome) == (REFUSED, REFUSED)
    assert [r.code for r in registry.refusals()] == ["wrong-station", "wrong-station"]
    assert registry.reports("asrun") == [] and registry.reports("heartbeat") == []


def test_unknown_and_revoked_stations_are_refused(intake: ReportIntake, registry: Registry) -> None:
    stranger = StationId.parse("25/08230/08230-09")
    unknown = intake.handle(topic(stranger, "heartbeat"), heartbeat(0, station=stranger.path))
    # Revocation is enrollment's business; set the column the way it does.
    registry.store.write(
        "UPDATE station SET revoked_at = ? WHERE id = ?", ("2026-11-20T00:00:00Z", TWO.path)
    )
    revoked = intake.handle(topic(TWO, "heartbeat"), heartbeat(0, station=TWO.path))
    assert (unknown.outcome, unknown.station) == (REFUSED, stranger.path)
    assert revoked.outcome == REFUSED
    assert [r.code for r in registry.refusals()] == ["unknown-station", "revoked-station"]
    assert registry.reports("heartbeat") == []


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b'{"kind": "heartbeat", "kind": "heartbeat", "station": "25/08230/08230-01"}', "bad-json"),
        (b'{"kind": "heartbeat", "seq": NaN}', "bad-json"),
        (b"[1, 2]", "bad-json"),
        (b"", "bad-json"),
        (b"\xff\xfe", "bad-json"),
        (heartbeat(0, kind="event"), "wrong-kind"),
        (heartbeat(-1), "bad-seq"),
        (heartbeat(True), "bad-seq"),
        (heartbeat(1.0), "bad-seq"),  # type: ignore[arg-type]
    ],
)
def test_bodies_that_are_not_strict_reports_are_refused(
    intake: ReportIntake, registry: Registry, payload: bytes, code: str
) -> None:
    handled = intake.handle(topic(ONE, "heartbeat"), payload)
    assert handled.outcome == REFUSED
    assert [r.code for r in registry.refusals()] == [code]
    assert registry.reports("heartbeat") == []


@pytest.mark.parametrize(
    ("bad_topic", "code"),
    [
        ("loa/v1/25/08230/08230-01/telemetry/asrun/extra", "bad-topic"),
        ("loa/v1/25/08230/08230-01/telemetry/weather", "bad-topic"),
        ("loa/v1/25/08230/Bad_Name/telemetry/heartbeat", "bad-topic"),
        ("loa/v2/25/08230/08230-01/telemetry/heartbeat", "bad-topic"),
        ("loa/v1/26/08230/08230-01/telemetry/heartbeat", "wrong-province"),
    ],
)
def test_topics_that_name_no_station_of_this_province_are_refused(
    intake: ReportIntake, registry: Registry, bad_topic: str, code: str
) -> None:
    assert intake.handle(bad_topic, heartbeat(0)).outcome == REFUSED
    assert [(r.topic, r.code) for r in registry.refusals()] == [(bad_topic, code)]


def test_a_resend_with_other_bytes_keeps_the_first_and_is_flagged(
    intake: ReportIntake, registry: Registry
) -> None:
    intake.handle(topic(ONE, "heartbeat"), heartbeat(0))
    clash = intake.handle(topic(ONE, "heartbeat"), heartbeat(0, state="fault"))
    assert (clash.outcome, clash.watermark, clash.wants_receipt) == (CONFLICT, 0, True)
    (stored,) = registry.reports("heartbeat")
    assert json.loads(stored.body)["state"] == "idle"
    assert [r.code for r in registry.refusals()] == ["seq-conflict"]


def test_state_birth_and_will_are_recorded_and_a_cleared_retain_ignored(
    intake: ReportIntake, registry: Registry
) -> None:
    state_topic = f"{ONE.prefix}/state"
    birth = to_bytes({"online": True, "station": ONE.path, "session": 3})
    assert intake.handle(state_topic, birth).outcome == STATE
    state = registry.station_state(ONE.path)
    assert state is not None and state.online and state.body == birth
    assert intake.handle(state_topic, to_bytes(offline_body(ONE))).outcome == STATE
    state = registry.station_state(ONE.path)
    assert state is not None and not state.online
    assert intake.handle(state_topic, b"").outcome == IGNORED
    forged = to_bytes({"online": True, "station": TWO.path})
    assert intake.handle(state_topic, forged).outcome == REFUSED
    assert [r.code for r in registry.refusals()] == ["wrong-station"]
    assert registry.station_state(TWO.path) is None


def test_a_refused_payload_is_stored_capped(intake: ReportIntake, registry: Registry) -> None:
    intake.handle(topic(ONE, "event"), b"x" * (200 * 1024))
    (refusal,) = registry.refusals()
    assert refusal.code == "bad-json" and len(refusal.payload) == 64 * 1024
