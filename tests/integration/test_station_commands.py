"""`set_volume` and `relay_test` on a real ``loa-agent run`` through a real mosquitto
(PROTOCOL.md section 6), with the relays and health inputs on gpiozero's mock pins.

The volume is checked where a listener would notice it (the level of what the card got) and
where the province sees it (events, heartbeats, as-runs), across a restart; the relay test by
what each relay pin went through and what the station reported about it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.core.timefmt import format_rfc3339
from tests.harness.audio import analyse_pcm, make_tone
from tests.harness.broker import MosquittoBroker, Recorder
from tests.harness.media_server import MediaServer
from tests.harness.paced_card import paced_card, plays, use_paced_card
from tests.harness.station_proc import (
    AMP_PIN,
    NORTH_PIN,
    SOUTH_PIN,
    StationProcess,
    provision_station,
)
from tests.harness.trust import envelope, playlist_body

pytestmark = pytest.mark.integration
STATION = "25/08230/08230-01"
PREFIX = f"loa/v1/{STATION}"
COMMUNE_CMD = "loa/v1/25/08230/cmd"
HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
MAINS_PIN, AMP_POWER_PIN, LINE_PIN = 5, 6, 13
WAIT_S = 30.0


@pytest.fixture
def operator(mqtt_connect: Any) -> Iterator[Recorder]:
    recorder: Recorder = mqtt_connect("province-25")
    recorder.subscribe(f"{PREFIX}/#")
    yield recorder
    recorder.publish(f"{PREFIX}/state", b"", retain=True)


def reports(operator: Recorder, kind: str) -> list[dict[str, Any]]:
    seen: dict[tuple[int, int], dict[str, Any]] = {}
    for m in list(operator.messages):
        if m.topic == f"{PREFIX}/telemetry/{kind}":
            doc = json.loads(m.payload)
            if kind == "asrun":  # a DSSE envelope signed by the station
                doc = json.loads(base64.b64decode(doc["payload"]))
            seen[(doc["session"], doc["seq"])] = doc
    return [seen[k] for k in sorted(seen, key=lambda k: k[1])]


def events(operator: Recorder, code: str) -> list[dict[str, Any]]:
    return [e for e in reports(operator, "event") if e["code"] == code]


def wait_until(done: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


class Desk:
    """The province's side: commands and a playlist, signed with the test keys."""

    def __init__(self, operator: Recorder) -> None:
        self.operator = operator
        self.server = MediaServer()

    def command(self, cid: str, action: str, signer: str = "command", **fields: Any) -> None:
        now = datetime.now(UTC)
        doc: dict[str, Any] = {
            "kind": "command", "schema": 1, "id": cid, "issuer": "25", "target": "25/08230",
            "issued_at": format_rfc3339(now - timedelta(seconds=1)),
            "expires": format_rfc3339(now + timedelta(minutes=10)), "action": action,
        }  # fmt: skip
        doc.update(fields)
        self.operator.publish(COMMUNE_CMD, envelope("command", doc, signer))

    def media(self, name: str, data: bytes, seconds: float) -> dict[str, Any]:
        return {"url": self.server.add(f"/{name}.mp3", data),
                "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "duration_s": seconds}  # fmt: skip

    def schedule(self, version: int, tone: bytes, seconds: float, in_s: float) -> None:
        start = (datetime.now(UTC) + timedelta(seconds=in_s)).astimezone(HANOI)
        doc = playlist_body(
            version=version,
            valid_from="2026-11-01T00:00:00+07:00",
            media={"tone": self.media(f"tone-{version}", tone, seconds)},
            slots=[{"id": f"tone-{version}", "start": start.strftime("%H:%M:%S"),
                    "dates": [start.date().isoformat()], "items": ["tone"], "volume": 100}],
        )  # fmt: skip
        self.operator.publish(
            "loa/v1/25/playlist/25", envelope("playlist", doc, "playlist"), retain=True
        )


def station(tmp: Path, broker: MosquittoBroker, extra: str = "") -> StationProcess:
    proc = provision_station(tmp / "station", broker, STATION)
    config = tmp / "station" / "station.toml"
    # Levels are compared exactly: no loudness normalisation, no chimes.
    text = config.read_text().replace("[audio]\n", "[audio]\nnormalise = false\n")
    config.write_text(text + "\n[emergency]\nchime = false\n" + extra, encoding="utf-8")
    home = tmp / "station" / "home"
    # Unpaced (levels only), one file per opening of the card: speaker.raw, speaker.raw.0001...
    (home / ".asoundrc").write_text(
        f'pcm.!default {{\n type file\n slave.pcm "null"\n file "{home / "speaker.raw"}"\n'
        ' format "raw"\n truncate false\n}\n'
    )
    return proc


def start(proc: StationProcess, operator: Recorder) -> None:
    """Start the agent and wait for its birth (a new one: after a restart the old is there)."""
    before = {id(m) for m in list(operator.messages)}
    proc.start()
    operator.wait_for(
        lambda m: (
            id(m) not in before
            and m.topic == f"{PREFIX}/state"
            and json.loads(m.payload or b"{}").get("online") is True
        ),
        "birth",
        timeout=20,
    )


@pytest.fixture
def desk(operator: Recorder) -> Iterator[Desk]:
    made = Desk(operator)
    yield made
    made.server.close()


def test_set_volume_scales_what_plays_next_and_survives_a_restart(
    tmp_path: Path, mqtt_broker: MosquittoBroker, operator: Recorder, desk: Desk
) -> None:
    tone_path, alarm_path = tmp_path / "tone.mp3", tmp_path / "alarm.mp3"
    make_tone(tone_path, 440, 1.0, amplitude=0.5)  # -9 dBFS RMS at volume 100
    make_tone(alarm_path, 1000, 1.0, amplitude=0.5)
    proc = station(tmp_path, mqtt_broker)
    start(proc, operator)
    try:
        desk.command("vol-1", "set_volume", volume=50)
        wait_until(lambda: bool(events(operator, "volume-set")), "volume-set")
        event = events(operator, "volume-set")[0]
        assert event["event"] == "volume" and event["id"] == "vol-1"
        assert (event["volume"], event["previous"], event["persisted"]) == (50, 100, True)
        wait_until(lambda: any(h["volume"] == 50 for h in reports(operator, "heartbeat")),
                   "a heartbeat with the new volume")  # fmt: skip

        # A slot at volume 100 now plays at 50 % of the station's volume: 6 dB down.
        desk.schedule(1, tone_path.read_bytes(), 1.0, in_s=3)
        wait_until(lambda: bool(reports(operator, "asrun")), "the tone's as-run")
        record = reports(operator, "asrun")[0]
        assert record["outcome"] == "complete" and record["volume"] == 50
        level = analyse_pcm(plays(proc.capture)[0].read_bytes()).dbfs
        assert level is not None and abs(level - (-9.03 - 6.02)) < 1.0, level

        # An emergency is not turned down with the station: it plays at its own volume.
        alarm = desk.media("alarm", alarm_path.read_bytes(), 1.0)
        desk.command("e-vol-1", "emergency", signer="emergency", priority=100, repeat=1,
                     volume=100, media=alarm)  # fmt: skip
        wait_until(lambda: bool(events(operator, "emergency-ended")), "the emergency")
        heard = analyse_pcm(plays(proc.capture)[-1].read_bytes())
        assert heard.dbfs is not None and abs(heard.dbfs - (-9.03)) < 1.0, heard
    finally:
        assert proc.stop() == 0, proc.log_text()[-3000:]

    state = json.loads((tmp_path / "station" / "state" / "volume.json").read_text())
    assert state["volume"] == 50 and state["command"] == "vol-1"
    seen = len(operator.messages)
    start(proc, operator)
    try:
        wait_until(
            lambda: any(
                json.loads(m.payload).get("volume") == 50
                for m in list(operator.messages)[seen:]
                if m.topic == f"{PREFIX}/telemetry/heartbeat"
            ),
            "the volume kept across the restart",
        )
    finally:
        assert proc.stop() == 0, proc.log_text()[-3000:]


INPUTS = (
    f"\n[inputs]\nmains = {MAINS_PIN}\namp_power = {AMP_POWER_PIN}\nspeaker_line = {LINE_PIN}\n"
)


def test_relay_test_cycles_each_zone_with_the_amplifier_and_reports_the_inputs(
    tmp_path: Path, mqtt_broker: MosquittoBroker, operator: Recorder
) -> None:
    proc = station(tmp_path, mqtt_broker, INPUTS)
    start(proc, operator)
    desk = Desk(operator)
    try:
        desk.command("rt-1", "relay_test")
        wait_until(lambda: bool(events(operator, "relay-test")), "the relay test's result")
        result = events(operator, "relay-test")[0]
        assert result["event"] == "relay-test" and result["id"] == "rt-1"
        assert result["ok"] is True and result["amp"] is True
        assert result["interrupted"] is None and result["error"] is None
        assert [z["zone"] for z in result["zones"]] == ["north", "south"]
        present = {"mains": True, "amp_power": True, "speaker_line": True}
        for zone in result["zones"]:
            assert zone["ok"] and zone["on"] and zone["off"] and zone["others_off"]
            assert zone["inputs"] == present  # simulated inputs read healthy
        assert result["inputs"] == present
    finally:
        desk.server.close()
        assert proc.stop() == 0, proc.log_text()[-3000:]
    pins = proc.pins()
    for pin in (AMP_PIN, NORTH_PIN, SOUTH_PIN):
        assert pins[pin] == [False, True, False], (pin, pins[pin])
    # The amplifier first, then one zone at a time, the amplifier off last.
    relays = (AMP_PIN, NORTH_PIN, SOUTH_PIN)
    assert [move for move in proc.switching_order() if move[0] in relays] == [
        (AMP_PIN, True),
        (NORTH_PIN, True),
        (NORTH_PIN, False),
        (SOUTH_PIN, True),
        (SOUTH_PIN, False),
        (AMP_PIN, False),
    ]


def test_relay_test_is_refused_while_the_programme_is_on_air(
    tmp_path: Path, mqtt_broker: MosquittoBroker, operator: Recorder, desk: Desk
) -> None:
    tone_path = tmp_path / "tone.mp3"
    make_tone(tone_path, 440, 8.0, amplitude=0.5)
    with paced_card(tmp_path / "pulse") as card:
        proc = station(tmp_path, mqtt_broker, INPUTS)
        use_paced_card(tmp_path / "station" / "home", card)
        start(proc, operator)
        try:
            desk.schedule(1, tone_path.read_bytes(), 8.0, in_s=3)
            wait_until(
                lambda: any(h["state"] == "scheduled" for h in reports(operator, "heartbeat")),
                "the programme on air",
            )
            desk.command("rt-busy", "relay_test")
            wait_until(lambda: bool(events(operator, "relay-test-refused")), "the refusal")
            refused = events(operator, "relay-test-refused")[0]
            assert refused["id"] == "rt-busy" and "tone-1 is on air" in refused["reason"]
            desk.command("rt-zone", "relay_test", zones=["west"])
            wait_until(lambda: len(events(operator, "relay-test-refused")) == 2, "refused")
            assert not events(operator, "relay-test")
            wait_until(lambda: bool(reports(operator, "asrun")), "the programme played out")
            assert reports(operator, "asrun")[0]["outcome"] == "complete"  # never disturbed
        finally:
            assert proc.stop() == 0, proc.log_text()[-3000:]
