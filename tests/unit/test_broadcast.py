"""The desk side of emergencies and test broadcasts, without a broker: command bodies the
stations' own checks accept, keys refused at the desk, and how station reports become a
station's result (province.broadcast, province.broadcast_watch)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core import dsse
from agent.core.models import Keyring
from agent.core.reports import ASRUN_TYPE
from agent.core.targets import StationId
from hal.audio import FRAME_BYTES, SAMPLE_RATE, pcm_rms_dbfs
from province import broadcast
from province.broadcast_watch import (
    FAIL,
    NO_ANSWER,
    PASS,
    Expect,
    Tracker,
    render,
)
from province.errors import ProvinceError
from province.registry import StationRecord
from province.signer import Signer
from province.signing import check_body
from tests.harness.audio import analyse_pcm
from tests.harness.trust import VECTORS, decode
from tests.harness.trust import test_key as seeded_key

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
A, B = "25/08230/08230-01", "25/08230/08230-02"
TOPIC = "loa/v1/25/08230/cmd"
CLIP = broadcast.Clip("https://media.example.vn/a.mp3", "ab" * 32, 1234, 5.0)


class KeySigner:
    """A test key as the desk's Signer."""

    def __init__(self, name: str) -> None:
        self._key = seeded_key(name)
        self.name = name

    @property
    def keyid(self) -> str:
        return dsse.keyid_of(self.public_raw())

    def public_raw(self) -> bytes:
        return dsse.public_raw(self._key)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def describe(self) -> str:
        return f"test:{self.name}"


def keyring() -> Keyring:
    return Keyring.from_body(decode((VECTORS / "keyring-v1.json").read_bytes()))


def body(action: str = "emergency", **fields: Any) -> bytes:
    defaults: dict[str, Any] = (
        {"media": CLIP.wire(), "priority": 100} if action == "emergency" else {}
    )
    return broadcast.command_body(
        action, broadcast.new_id(action, NOW), "25", "25/08230", NOW, timedelta(hours=2),
        defaults | fields,
    )  # fmt: skip


# -- bodies, ids, durations, targets -----------------------------------------------------------


def test_ids_are_fresh_readable_and_valid_command_ids() -> None:
    ids = {broadcast.new_id("test", NOW) for _ in range(50)}
    assert len(ids) == 50
    for cid in ids:
        assert re.fullmatch(r"test-20261122T030000Z-[0-9a-f]{8}", cid)
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", cid)


@pytest.mark.parametrize(
    ("action", "fields"),
    [
        ("emergency", {"repeat": 2, "zones": ["north"], "volume": None}),
        ("cancel", {"references": "em-1"}),
        ("live_start", {"stream": {"url": "https://live.example.vn/a.mp3"}, "priority": 80}),
        ("live_stop", {"references": None}),
    ],
)
def test_bodies_pass_the_stations_schema(action: str, fields: dict[str, Any]) -> None:
    made = body(action, **fields)
    assert check_body(made) == "command"
    doc = json.loads(made)
    assert doc["issued_at"] == "2026-11-22T03:00:00Z" and doc["expires"] == "2026-11-22T05:00:00Z"
    assert not [k for k, v in doc.items() if v is None]  # left to the station's defaults


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200), ("1.5h", 5400)]
)
def test_durations(text: str, seconds: float) -> None:
    assert broadcast.parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "0", "-5m", "10 minutes", "2w", "h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ProvinceError):
        broadcast.parse_duration(text)


@pytest.mark.parametrize("target", ["26", "26/08230", "25/8230", "25/08230/Bad", "25/08230/a/b"])
def test_targets_outside_the_province_or_misspelt_are_refused(target: str) -> None:
    with pytest.raises(ProvinceError):
        broadcast.check_target(target, "25")


def test_telemetry_filters_cover_every_station_of_the_target() -> None:
    assert broadcast.telemetry_filters("25") == [
        "loa/v1/25/+/+/telemetry/+",
        "loa/v1/25/+/+/state",
    ]
    assert broadcast.telemetry_filters("25/08230")[0] == "loa/v1/25/08230/+/telemetry/+"
    assert broadcast.telemetry_filters(A) == [f"loa/v1/{A}/telemetry/+", f"loa/v1/{A}/state"]


# -- keys --------------------------------------------------------------------------------------


def envelope_by(*names: str, action: str = "emergency") -> tuple[bytes, list[Signer]]:
    signers: list[Signer] = [KeySigner(n) for n in names]
    made = body(action) if action != "live_start" else body(
        action, stream={"url": "https://live.example.vn/a.mp3"}
    )  # fmt: skip
    return dsse.sign("application/vnd.loa.command+json", made, signers), signers


def test_the_role_key_passes_the_stations_checks() -> None:
    envelope, signers = envelope_by("emergency")
    broadcast.check_keys(keyring(), envelope, signers)
    envelope, signers = envelope_by("command", action="live_start")
    broadcast.check_keys(keyring(), envelope, signers)


@pytest.mark.parametrize(
    ("names", "action", "code"),
    [
        (("playlist",), "emergency", "threshold-not-met"),
        (("command",), "emergency", "threshold-not-met"),
        (("stranger",), "emergency", "unknown-key"),
        (("emergency",), "live_start", "threshold-not-met"),
    ],
)
def test_a_key_the_stations_would_refuse_is_refused_at_the_desk(
    names: tuple[str, ...], action: str, code: str
) -> None:
    envelope, signers = envelope_by(*names, action=action)
    with pytest.raises(ProvinceError, match=f"stations would refuse this {action}: {code}"):
        broadcast.check_keys(keyring(), envelope, signers)


# -- the test clip -----------------------------------------------------------------------------


def test_the_test_clip_is_chime_tones_chime_at_the_chimes_level() -> None:
    pcm = broadcast.test_clip_pcm()
    seconds = len(pcm) / FRAME_BYTES / SAMPLE_RATE
    assert 4.5 < seconds < 6.0
    level = pcm_rms_dbfs(pcm)
    assert level is not None and -25 < level < -12
    # After the 0.8 s chime and a 0.4 s pause, the first of the three 1 kHz beeps.
    second = SAMPLE_RATE * FRAME_BYTES
    beep = analyse_pcm(pcm[int(1.25 * second) : int(1.55 * second)])
    assert beep.freq_hz is not None and abs(beep.freq_hz - 1000) < 5


# -- the tracker -------------------------------------------------------------------------------


STATION_KEY = Ed25519PrivateKey.from_private_bytes(bytes([42]) * 32)


def record(path: str) -> StationRecord:
    public = dsse.public_raw(STATION_KEY).hex()
    return StationRecord(StationId.parse(path), b"", public, "2026-11-01", None)


class Feed:
    def __init__(self, mode: str = "emergency", stations: tuple[str, ...] = (A, B), **kw: Any):
        self.expect = Expect(mode, "em-1", TOPIC, NOW, **kw)
        self.tracker = Tracker(self.expect, [record(s) for s in stations])
        self.seq = 0

    def event(self, station: str, event: str, code: str, **fields: Any) -> None:
        self.seq += 1
        doc = {
            "kind": "event",
            "station": station,
            "seq": self.seq,
            "ts": "2026-11-22T03:00:01Z",
            "event": event,
            "code": code,
            "detail": fields.pop("detail", code),
        } | fields
        self.tracker.feed(f"loa/v1/{station}/telemetry/event", json.dumps(doc).encode())

    def asrun(self, station: str, key: Ed25519PrivateKey = STATION_KEY, **fields: Any) -> None:
        self.seq += 1
        doc = {
            "kind": "asrun",
            "station": station,
            "seq": self.seq,
            "slot": "emergency:em-1",
            "outcome": "complete",
            "reason": None,
            "played_s": 5.2,
            "relay_ok": True,
            "amp_power_ok": True,
            "output_level_db": -18.0,
            "clock_trusted": True,
        } | fields
        data = dsse.sign(ASRUN_TYPE, json.dumps(doc).encode(), [key])
        self.tracker.feed(f"loa/v1/{station}/telemetry/asrun", data)  # fmt: skip

    def result(self, station: str) -> tuple[str, str]:
        view = self.tracker.views[station]
        return view.result, view.detail


def test_an_emergency_is_sounded_once_its_first_repetition_starts() -> None:
    feed = Feed()
    feed.event(A, "envelope", "accepted", payload_kind="command", label="em-1", topic=TOPIC)
    feed.event(A, "emergency", "emergency-fetching", id="em-1")
    assert feed.result(A)[0] == "fetching" and not feed.tracker.done()
    feed.event(A, "emergency", "emergency-started", id="em-1", repetition=1, of=3, volume=100,
               zones=["all"])  # fmt: skip
    assert feed.result(A) == ("sounded", "repetition 1 of 3, volume 100, zones all")
    feed.event(B, "emergency", "emergency-silent", id="em-1", detail="CAP status Test")
    assert feed.tracker.done() and not feed.tracker.all_ok()
    assert feed.result(B) == ("silent", "CAP status Test")
    assert "1 of 2 stations sounded (1 silent, 1 sounded)" in render(feed.tracker)


def test_rejections_are_tied_to_the_command_by_topic_and_time() -> None:
    feed = Feed()
    reject = {"payload_kind": "command", "detail": "no signature is by a key of the keyring"}
    # Another command's topic, and a rejection from long before this one was sent: not ours.
    feed.event(A, "envelope", "unknown-key", topic="loa/v1/25/cmd", **reject)
    feed.event(A, "envelope", "unknown-key", topic=TOPIC, **reject | {"ts": "2026-11-22T02:00:00Z"})
    assert feed.result(A)[0] == NO_ANSWER
    feed.event(A, "envelope", "unknown-key", topic=TOPIC, **reject)
    assert feed.result(A) == ("refused", "unknown-key: no signature is by a key of the keyring")
    # A rejection of someone else's command on the same topic is overruled by our acceptance.
    feed.event(B, "envelope", "bad-signature", topic=TOPIC, payload_kind="command")
    feed.event(B, "envelope", "accepted", payload_kind="command", label="em-1", topic=TOPIC)
    assert feed.result(B)[0] == "accepted"
    # A resent report (same seq) counts once; an unsupported action is a refusal.
    feed.event(B, "command", "unsupported", id="em-1", detail="not implemented yet")
    assert feed.result(B)[0] == "refused"


def test_reports_sent_again_count_once() -> None:
    feed = Feed()
    feed.event(A, "emergency", "emergency-started", id="em-1", repetition=1, of=2, volume=90,
               zones=["all"])  # fmt: skip
    doc = {"kind": "event", "station": A, "seq": feed.seq, "event": "emergency",
           "code": "emergency-refused", "id": "em-1"}  # fmt: skip
    assert feed.tracker.feed(f"loa/v1/{A}/telemetry/event", json.dumps(doc).encode()) is None


def test_a_cancel_reports_cancelled_or_nothing_on() -> None:
    feed = Feed("cancel", references="em-0")
    feed.expect = feed.tracker.expect
    feed.event(A, "emergency", "emergency-ended", id="em-0", outcome="partial",
               reason="cancelled by em-1", played_s=4.0)  # fmt: skip
    feed.event(B, "emergency", "cancel-unmatched", id="em-1", detail="no emergency em-0 is on")
    assert feed.result(A) == ("cancelled", "em-0 stopped (partial, had played 4.0 s)")
    assert feed.result(B) == ("not on", "no emergency em-0 is on")
    assert feed.tracker.all_ok()


def test_the_deadline_says_why_each_unfinished_station_is_unfinished() -> None:
    feed = Feed(stations=(A, B, "25/08231/08231-01"))
    feed.tracker.feed(f"loa/v1/{A}/state", b'{"online": false}')
    feed.event(B, "envelope", "accepted", payload_kind="command", label="em-1", topic=TOPIC)
    feed.tracker.close()
    assert feed.result(A) == (NO_ANSWER, "offline (its last state on the broker says so)")
    assert feed.result(B) == ("accepted", "verified and accepted; nothing more within the wait")
    assert "never connected" in feed.result("25/08231/08231-01")[1]


def test_a_test_passes_on_its_signed_as_run() -> None:
    feed = Feed("test", sound_s=5.2)
    feed.tracker.feed(
        f"loa/v1/{A}/telemetry/heartbeat",
        b'{"seq": 1, "hw": {"level": "measured", "inputs": {"amp_power": true}}}',
    )
    feed.event(A, "emergency", "emergency-started", id="em-1", repetition=1, of=1, volume=100,
               zones=["all"])  # fmt: skip
    assert feed.result(A)[0] == "sounded" and not feed.tracker.views[A].final
    feed.asrun(A)
    assert feed.result(A) == (
        PASS,
        "complete, played 5.2 s; -18.0 dBFS (measured); relays ok; amp ok",
    )


def test_a_failed_test_names_every_reason() -> None:
    feed = Feed("test", sound_s=5.2)
    feed.tracker.feed(
        f"loa/v1/{A}/telemetry/heartbeat",
        b'{"seq": 1, "hw": {"level": "digital", "inputs": {"speaker_line": false}}}',
    )
    feed.event(A, "hw", "output-silent", slot="emergency:em-1", detail="silence on air")
    feed.asrun(A, outcome="partial", reason="audio: underrun", played_s=2.0, relay_ok=False,
               amp_power_ok=False, output_level_db=-60.0)  # fmt: skip
    verdict, detail = feed.result(A)
    assert verdict == FAIL
    assert detail.split("; ") == [
        "outcome partial: audio: underrun",
        "played 2.0 s of 5.2 s",
        "the relays did not read back as switched",
        "no amplifier power sensed",
        "output -60.0 dBFS (digital) below -45 dBFS",
        "output-silent: silence on air",
        "input speaker_line absent at its last heartbeat",
    ]
    # A station that did not sound fails with its own reason; one that never answered too.
    feed.event(B, "emergency", "emergency-refused", id="em-1", detail="media: bad")
    assert feed.result(B) == (FAIL, "refused: emergency-refused: media: bad")


def test_an_as_run_not_signed_by_the_registered_key_fails_the_test() -> None:
    feed = Feed("test", sound_s=5.2)
    feed.asrun(A, key=Ed25519PrivateKey.generate())
    verdict, detail = feed.result(A)
    assert verdict == FAIL and "does not verify" in detail
    feed.tracker.close()
    assert feed.result(B)[0] == FAIL and feed.result(B)[1].startswith("no answer: ")


def test_live_start_and_stop() -> None:
    start = Feed("live")
    start.event(A, "live", "live-started", id="em-1", url="https://live.example.vn/a.mp3")
    start.event(B, "live", "live-refused", id="em-1", reason="host not allowed")
    assert start.result(A) == ("sounded", "live-started: https://live.example.vn/a.mp3")
    assert start.result(B) == ("refused", "host not allowed")
    stop = Feed("live-stop", references="live-0")
    stop.event(A, "live", "live-stopped", id="live-0", reason="stopped by em-1")
    stop.event(B, "live", "live-refused", id="em-1", reason="no live relay live-0 is on")
    assert stop.result(A) == ("stopped", "live-0 off: stopped by em-1")
    assert stop.result(B) == ("not on", "no live relay live-0 is on")
    assert stop.tracker.all_ok()
