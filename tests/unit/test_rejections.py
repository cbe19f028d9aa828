"""Every rejection code of PROTOCOL.md section 8, each built from a valid envelope.

Each test checks three things: the code, that nothing in the station's state changed, and that
the last good playlist is still the one in force. The station is real (provisioned into a
temporary directory, SQLite state, the same Ingestor the agent uses); only the clock is fake.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.core.codes import Code
from agent.core.verify import Accepted, Rejection
from tests.harness.clock import FakeClock
from tests.harness.trust import (
    Station,
    body_bytes,
    command_body,
    emergency_body,
    envelope,
    keyring_body,
    make_station,
    playlist_body,
)

GOOD = envelope("playlist", playlist_body(version=5), "playlist")


@pytest.fixture
def on_air(station: Station) -> Station:
    """A station with province playlist v5 in force and one command remembered."""
    assert isinstance(station.ingest(GOOD), Accepted)
    assert isinstance(station.ingest(envelope("command", command_body(), "command")), Accepted)
    return station


def assert_rejected(station: Station, data: bytes, code: Code, topic: str | None = None) -> None:
    before = station.fingerprint()
    verdict = station.ingest(data, topic)
    assert isinstance(verdict, Rejection), verdict
    assert verdict.code == code, verdict.detail
    assert verdict.line() == f"rejected {code}"
    assert station.fingerprint() == before
    bodies = station.playlists()
    assert json.loads(bodies[("25", "25")])["version"] == 5


def mutate(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    doc = json.loads(data)
    change(doc)
    return json.dumps(doc).encode()


# 1 too-large ----------------------------------------------------------------------------------


def test_too_large_envelope(on_air: Station) -> None:
    padded = GOOD.rstrip() + b" " * (3 * 1024 * 1024)
    assert_rejected(on_air, padded, Code.TOO_LARGE)


def test_too_large_body_within_envelope_cap(on_air: Station) -> None:
    # Whitespace is valid JSON: 2.1 MiB of body, 2.8 MiB of base64, under the envelope cap.
    body = body_bytes(playlist_body(version=6)) + b" " * (2 * 1024 * 1024 + 100_000)
    data = envelope("playlist", body, "playlist")
    assert len(data) < 3 * 1024 * 1024
    assert_rejected(on_air, data, Code.TOO_LARGE)


# 2 bad-envelope -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(payload=d["payload"] + "!"),
        lambda d: d.update(payload=d["payload"].replace("=", "") + "+-_"),
        lambda d: d.update(signatures=[]),
        lambda d: d.pop("payloadType"),
        lambda d: d.update(signatures=[{"keyid": "x", "sig": "***"}]),
    ],
    ids=["payload-not-base64", "mixed-alphabets", "no-signatures", "no-type", "sig-not-base64"],
)
def test_bad_envelope(on_air: Station, change: Callable[[dict[str, Any]], None]) -> None:
    assert_rejected(on_air, mutate(GOOD, change), Code.BAD_ENVELOPE)


def test_bad_envelope_duplicate_key(on_air: Station) -> None:
    doc = json.loads(GOOD)
    data = (
        '{"payloadType": "application/vnd.loa.playlist+json", "payload": "e30=", '
        f'"payload": {json.dumps(doc["payload"])}, "signatures": {json.dumps(doc["signatures"])}}}'
    ).encode()
    assert_rejected(on_air, data, Code.BAD_ENVELOPE)


# 3 wrong-payload-type -------------------------------------------------------------------------


def test_wrong_payload_type(on_air: Station) -> None:
    data = mutate(GOOD, lambda d: d.update(payloadType="application/vnd.loa.asrun+json"))
    assert_rejected(on_air, data, Code.WRONG_PAYLOAD_TYPE)


# 4 signatures ---------------------------------------------------------------------------------


def test_bad_signature_flipped_bit(on_air: Station) -> None:
    def flip(doc: dict[str, Any]) -> None:
        sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
        sig[10] ^= 0x01
        doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()

    assert_rejected(on_air, mutate(GOOD, flip), Code.BAD_SIGNATURE)


def test_bad_signature_body_changed_after_signing(on_air: Station) -> None:
    forged = base64.b64encode(body_bytes(playlist_body(version=6))).decode()
    assert_rejected(on_air, mutate(GOOD, lambda d: d.update(payload=forged)), Code.BAD_SIGNATURE)


def test_bad_signature_is_reported_even_beside_a_stranger(on_air: Station) -> None:
    data = envelope("playlist", playlist_body(version=6), "stranger")
    tampered = mutate(GOOD, lambda d: d["signatures"].extend(json.loads(data)["signatures"]))
    forged = base64.b64encode(body_bytes(playlist_body(version=6))).decode()
    tampered = mutate(tampered, lambda d: d.update(payload=forged))
    assert_rejected(on_air, tampered, Code.BAD_SIGNATURE)


def test_unknown_key(on_air: Station) -> None:
    assert_rejected(
        on_air, envelope("playlist", playlist_body(version=6), "stranger"), Code.UNKNOWN_KEY
    )


def test_unknown_key_when_keyid_is_missing(on_air: Station) -> None:
    data = mutate(GOOD, lambda d: d["signatures"][0].pop("keyid"))
    assert_rejected(on_air, data, Code.UNKNOWN_KEY)


def test_threshold_not_met_key_outside_role(on_air: Station) -> None:
    data = envelope("playlist", playlist_body(version=6), "emergency")
    assert_rejected(on_air, data, Code.THRESHOLD_NOT_MET)


def test_threshold_not_met_one_key_signing_twice(on_air: Station) -> None:
    # Keyring v2 needs two root signatures (of v1 and of v2); root1 twice counts once.
    data = envelope("keyring", keyring_body(version=2), "root1", "root1")
    assert_rejected(on_air, data, Code.THRESHOLD_NOT_MET)


def test_extra_bad_signature_is_ignored_when_threshold_met(on_air: Station) -> None:
    good6 = envelope("playlist", playlist_body(version=6), "playlist")
    junk = {"keyid": json.loads(good6)["signatures"][0]["keyid"], "sig": "A" * 86 + "=="}
    data = mutate(good6, lambda d: d["signatures"].insert(0, junk))
    verdict = on_air.ingest(data)
    assert isinstance(verdict, Accepted), verdict


# 5 schema -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        playlist_body(version=6, slots=[dict(playlist_body()["slots"][0], volume=250)]),
        playlist_body(version=6, extra="field"),
        playlist_body(version=6, timezone="Mars/Olympus_Mons"),
        playlist_body(version=6, valid_from="2026-02-30T00:00:00+07:00"),
        playlist_body(version=6, expires="2026-10-01T00:00:00+07:00"),
        playlist_body(version=6, slots=[dict(playlist_body()["slots"][0], items=["missing"])]),
        playlist_body(version=True),
    ],
    ids=["volume", "unknown-field", "timezone", "feb-30", "expires-before-valid", "item", "bool"],
)
def test_schema(on_air: Station, doc: dict[str, Any]) -> None:
    assert_rejected(on_air, envelope("playlist", doc, "playlist"), Code.SCHEMA)


def test_schema_duplicate_key_in_body(on_air: Station) -> None:
    body = body_bytes(playlist_body(version=6))
    body = body.replace(b'"version":6', b'"version":6,"version":7')
    assert_rejected(on_air, envelope("playlist", body, "playlist"), Code.SCHEMA)


def test_schema_kind_does_not_match_payload_type(on_air: Station) -> None:
    data = envelope("playlist", command_body(id="t-0099"), "playlist")
    assert_rejected(on_air, data, Code.SCHEMA)


def test_schema_command_without_action_needs_a_signature_first(on_air: Station) -> None:
    doc = command_body(id="t-0099")
    del doc["action"]
    assert_rejected(on_air, envelope("command", doc, "stranger"), Code.UNKNOWN_KEY)
    assert_rejected(on_air, envelope("command", doc, "command"), Code.SCHEMA)


# 6 out-of-scope -------------------------------------------------------------------------------


def test_out_of_scope_commune_key_as_province(on_air: Station) -> None:
    data = envelope("playlist", playlist_body(version=6, target="25/08230"), "commune-08230")
    assert_rejected(on_air, data, Code.OUT_OF_SCOPE)


def test_out_of_scope_commune_key_for_another_commune(on_air: Station) -> None:
    doc = playlist_body(issuer="08230", target="25/08231")
    assert_rejected(on_air, envelope("playlist", doc, "commune-08230"), Code.OUT_OF_SCOPE)


# 7 wrong-audience -----------------------------------------------------------------------------


def test_wrong_audience_other_commune(on_air: Station) -> None:
    data = envelope("playlist", playlist_body(version=6, target="25/08231"), "playlist")
    assert_rejected(on_air, data, Code.WRONG_AUDIENCE)


def test_wrong_audience_other_station(on_air: Station) -> None:
    data = envelope("command", command_body(id="t-0099", target="25/08230/08230-02"), "command")
    assert_rejected(on_air, data, Code.WRONG_AUDIENCE)


def test_wrong_audience_topic_does_not_match_body(on_air: Station) -> None:
    data = envelope("playlist", playlist_body(version=6), "playlist")
    assert_rejected(on_air, data, Code.WRONG_AUDIENCE, topic="loa/v1/25/08230/playlist/25")
    verdict = on_air.ingest(data, "loa/v1/25/playlist/25")
    assert isinstance(verdict, Accepted)


# 8 clock-untrusted ----------------------------------------------------------------------------


@pytest.fixture
def unsynced(tmp_path: Path, fake_clock: FakeClock) -> Iterator[Station]:
    made = make_station(
        tmp_path / "unsynced", fake_clock, clock_trust="kernel", kernel_synchronised=False
    )
    yield made
    made.store.close()


def test_clock_untrusted_refuses_playlists(unsynced: Station) -> None:
    before = unsynced.fingerprint()
    verdict = unsynced.ingest(GOOD)
    assert isinstance(verdict, Rejection) and verdict.code == Code.CLOCK_UNTRUSTED
    assert unsynced.fingerprint() == before


def test_clock_below_floor_is_untrusted_even_when_system_trusted(on_air: Station) -> None:
    on_air.clock.set_wall(datetime(2026, 11, 1, tzinfo=UTC))  # before the provisioning floor
    data = envelope("playlist", playlist_body(version=6), "playlist")
    assert_rejected(on_air, data, Code.CLOCK_UNTRUSTED)


def test_untrusted_clock_still_takes_an_emergency_issued_after_the_floor(unsynced: Station) -> None:
    floor = unsynced.state().time_floor
    assert floor is not None
    old = emergency_body(id="e-old", issued_at="2026-11-01T08:00:00+07:00")
    new = emergency_body(id="e-new", issued_at=(floor + timedelta(minutes=1)).isoformat())
    before = unsynced.fingerprint()
    verdict = unsynced.ingest(envelope("command", old, "emergency"))
    assert isinstance(verdict, Rejection) and verdict.code == Code.CLOCK_UNTRUSTED
    assert unsynced.fingerprint() == before
    assert isinstance(unsynced.ingest(envelope("command", new, "emergency")), Accepted)


# 9 time window --------------------------------------------------------------------------------


def test_expired_playlist(on_air: Station) -> None:
    doc = playlist_body(
        version=6, valid_from="2026-10-01T00:00:00+07:00", expires="2026-10-15T00:00:00+07:00"
    )
    assert_rejected(on_air, envelope("playlist", doc, "playlist"), Code.EXPIRED)


def test_expired_command(on_air: Station) -> None:
    doc = command_body(id="t-0099", expires="2026-11-22T16:59:59+07:00")  # now is 17:00 +07
    assert_rejected(on_air, envelope("command", doc, "command"), Code.EXPIRED)


def test_not_yet_valid_command(on_air: Station) -> None:
    doc = command_body(id="t-0099", issued_at="2026-11-22T17:06:00+07:00")  # skew is 5 min
    assert_rejected(on_air, envelope("command", doc, "command"), Code.NOT_YET_VALID)


def test_small_skew_is_tolerated(on_air: Station) -> None:
    doc = command_body(id="t-0099", issued_at="2026-11-22T17:04:00+07:00")
    assert isinstance(on_air.ingest(envelope("command", doc, "command")), Accepted)


def test_keyring_expired_beyond_grace_refuses_all_but_a_successor(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    short = envelope("keyring", keyring_body(expires="2026-12-01T00:00:00+07:00"), "root1", "root2")
    made = make_station(tmp_path / "short", fake_clock, keyring_envelope=short)
    try:
        assert isinstance(made.ingest(GOOD), Accepted)
        fake_clock.advance(timedelta(days=20).total_seconds())  # expired, inside the grace
        good6 = envelope("playlist", playlist_body(version=6), "playlist")
        assert isinstance(made.ingest(good6), Accepted)
        fake_clock.advance(timedelta(days=30).total_seconds())  # grace over
        before = made.fingerprint()
        verdict = made.ingest(envelope("playlist", playlist_body(version=7), "playlist"))
        assert isinstance(verdict, Rejection) and verdict.code == Code.KEYRING_EXPIRED
        assert made.fingerprint() == before
        successor = envelope("keyring", keyring_body(version=2), "root1", "root2")
        assert isinstance(made.ingest(successor), Accepted)
    finally:
        made.store.close()


# 10 versions and ids --------------------------------------------------------------------------


def test_rollback(on_air: Station) -> None:
    assert_rejected(
        on_air, envelope("playlist", playlist_body(version=4), "playlist"), Code.ROLLBACK
    )


def test_version_conflict(on_air: Station) -> None:
    other = playlist_body(version=5, slots=[dict(playlist_body()["slots"][0], start="07:00")])
    assert_rejected(on_air, envelope("playlist", other, "playlist"), Code.VERSION_CONFLICT)


def test_same_version_same_bytes_is_a_noop(on_air: Station) -> None:
    before = on_air.fingerprint()
    verdict = on_air.ingest(GOOD)
    assert isinstance(verdict, Accepted) and verdict.noop
    assert on_air.fingerprint() == before


def test_version_gap_keyring(on_air: Station) -> None:
    data = envelope("keyring", keyring_body(version=3), "root1", "root2")
    assert_rejected(on_air, data, Code.VERSION_GAP)


def test_keyring_rollback(on_air: Station) -> None:
    assert isinstance(
        on_air.ingest(envelope("keyring", keyring_body(version=2), "root1", "root2")), Accepted
    )
    old = envelope("keyring", keyring_body(version=1), "root1", "root2")
    assert_rejected(on_air, old, Code.ROLLBACK)


def test_replay(on_air: Station) -> None:
    assert_rejected(on_air, envelope("command", command_body(), "command"), Code.REPLAY)


def test_replay_even_with_other_signature_bytes(on_air: Station) -> None:
    # Same id, re-signed by a second command key: an id is accepted once, whoever signs.
    data = envelope("command", command_body(issuer="08230"), "commune-08230")
    assert_rejected(on_air, data, Code.REPLAY)


def test_every_rejection_code_has_a_test() -> None:
    marker = "def test_every_rejection_code_has_a_test"
    tests = Path(__file__).read_text().split(marker)[0]
    verdict_codes = [*list(Code)[: list(Code).index(Code.REPLAY) + 1], Code.KEYRING_EXPIRED]
    assert [c for c in verdict_codes if f"Code.{c.name}" not in tests] == []
