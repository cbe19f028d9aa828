"""Emergencies on a real ``loa-agent run`` through a real mosquitto (PROTOCOL.md section 6).

The programme plays a 440 Hz tone; an emergency (a 1 kHz clip from a local HTTP server, fetched
whole and verified before it sounds) cuts in, repeats, ends or is cancelled, and the programme
resumes. What sounded is read from the ALSA file sink in short windows by frequency, so the
test checks what a listener heard, not only what the agent says. Emergencies that must not
sound (a CAP Test, an expired, replayed or out-of-scope one) are sent over the same path.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.core.timefmt import format_rfc3339
from tests.harness.audio import make_tone
from tests.harness.broker import MosquittoBroker, Recorder
from tests.harness.media_server import MediaServer
from tests.harness.paced_card import paced_card, use_paced_card
from tests.harness.station_proc import StationProcess, provision_station
from tests.harness.station_watch import events as station_events
from tests.harness.station_watch import heard, runs, wait_until
from tests.harness.trust import envelope, playlist_body

pytestmark = pytest.mark.integration
STATION = "25/08230/08230-01"
PREFIX = f"loa/v1/{STATION}"
COMMUNE_CMD = "loa/v1/25/08230/cmd"
HANOI = ZoneInfo("Asia/Ho_Chi_Minh")


def events(operator: Recorder, code: str | None = None) -> list[dict[str, Any]]:
    return station_events(operator, PREFIX, code)


@pytest.fixture
def operator(mqtt_connect: Any) -> Iterator[Recorder]:
    recorder: Recorder = mqtt_connect("province-25")
    recorder.subscribe(f"{PREFIX}/#")
    yield recorder
    recorder.publish(f"{PREFIX}/state", b"", retain=True)


# -- the scene ---------------------------------------------------------------------------------


class Scene:
    def __init__(self, tmp: Path, broker: MosquittoBroker, operator: Recorder, card: Path) -> None:
        self.operator = operator
        self.server = MediaServer()
        programme, alarm = tmp / "programme.mp3", tmp / "alarm.mp3"
        make_tone(programme, 440, 12.0, amplitude=0.5)
        make_tone(alarm, 1000, 1.0, amplitude=0.5)
        self.programme = programme.read_bytes()
        self.alarm = alarm.read_bytes()
        self.proc: StationProcess = provision_station(tmp / "station", broker, STATION)
        use_paced_card(tmp / "station" / "home", card)
        config = tmp / "station" / "station.toml"
        config.write_text(
            config.read_text() + "\n[emergency]\nchime = false\ngap_s = 0.4\n", encoding="utf-8"
        )

    def start(self) -> None:
        self.proc.start()
        self.operator.wait_for(
            lambda m: m.topic == f"{PREFIX}/state" and json.loads(m.payload).get("online"),
            "birth",
            timeout=20,
        )

    def schedule_programme(self, in_s: float) -> None:
        start = (datetime.now(UTC) + timedelta(seconds=in_s)).astimezone(HANOI)
        doc = playlist_body(
            version=1,
            valid_from="2026-11-01T00:00:00+07:00",
            media={"programme": self._media("/programme.mp3", self.programme, 12.0)},
            slots=[{"id": "programme", "start": start.strftime("%H:%M:%S"),
                    "dates": [start.date().isoformat()], "items": ["programme"],
                    "volume": 100}],
        )  # fmt: skip
        self.operator.publish(
            "loa/v1/25/playlist/25", envelope("playlist", doc, "playlist"), retain=True
        )

    def _media(self, path: str, data: bytes, seconds: float) -> dict[str, Any]:
        return {"url": self.server.add(path, data), "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data), "duration_s": seconds}  # fmt: skip

    def emergency(self, cid: str, signer: str = "emergency", **changes: Any) -> bytes:
        now = datetime.now(UTC)
        doc: dict[str, Any] = {
            "kind": "command", "schema": 1, "id": cid, "issuer": "25", "target": "25/08230",
            "issued_at": format_rfc3339(now - timedelta(seconds=1)),
            "expires": format_rfc3339(now + timedelta(minutes=10)),
            "action": "emergency", "priority": 100, "zones": ["all"], "volume": 100,
            "repeat": 3, "media": self._media("/alarm.mp3", self.alarm, 1.0),
        }  # fmt: skip
        doc.update(changes)
        return envelope("command", doc, signer)

    def cancel(self, cid: str, references: str) -> bytes:
        now = datetime.now(UTC)
        doc = {
            "kind": "command", "schema": 1, "id": cid, "issuer": "25", "target": "25/08230",
            "issued_at": format_rfc3339(now - timedelta(seconds=1)),
            "expires": format_rfc3339(now + timedelta(minutes=10)),
            "action": "cancel", "references": references,
        }  # fmt: skip
        return envelope("command", doc, "emergency")

    def close(self) -> int:
        code = self.proc.stop()
        self.server.close()
        return code


@pytest.fixture
def scene(tmp_path: Path, mqtt_broker: MosquittoBroker, operator: Recorder) -> Iterator[Scene]:
    with paced_card(tmp_path / "pulse") as card:
        made = Scene(tmp_path, mqtt_broker, operator, card)
        made.start()
        yield made
        assert made.close() == 0, made.proc.log_text()[-3000:]


def test_an_emergency_cuts_in_repeats_three_times_and_the_programme_resumes(
    scene: Scene, operator: Recorder
) -> None:
    scene.schedule_programme(in_s=4)
    wait_until(lambda: runs(heard(scene.proc.capture), 440) == 1, "the programme on air")
    time.sleep(1.0)
    operator.publish(COMMUNE_CMD, scene.emergency("e-storm-1"))
    wait_until(lambda: bool(events(operator, "emergency-ended")), "the emergency's end")
    started = events(operator, "emergency-started")
    repeated = events(operator, "emergency-repeated")
    assert [e["repetition"] for e in started + repeated] == [1, 2, 3]
    ended = events(operator, "emergency-ended")[0]
    assert ended["outcome"] == "complete" and ended["id"] == "e-storm-1"
    # The programme comes back after it and plays out.
    wait_until(
        lambda: (
            any(json.loads(m.payload).get("code") == "accepted" for m in list(operator.messages))
            and runs(heard(scene.proc.capture), 440) == 2
        ),
        "the programme resumed",
    )
    windows = heard(scene.proc.capture)
    # Three repetitions of the 1 s clip in one play (the gaps between them write nothing to
    # the file: only what the station sends the card is in it).
    alarm = [w for w in windows if w and abs(w - 1000) <= 20]
    assert runs(windows, 1000) == 1 and 13 <= len(alarm) <= 16, windows
    first_alarm = next(i for i, w in enumerate(windows) if w and abs(w - 1000) <= 20)
    assert any(w and abs(w - 440) <= 20 for w in windows[:first_alarm])  # it cut in


def test_a_cancel_stops_the_emergency_at_once(scene: Scene, operator: Recorder) -> None:
    operator.publish(COMMUNE_CMD, scene.emergency("e-storm-2", repeat=10))
    wait_until(lambda: bool(events(operator, "emergency-started")), "the emergency on air")
    operator.publish(COMMUNE_CMD, scene.cancel("c-storm-2", "e-storm-2"))
    wait_until(lambda: bool(events(operator, "emergency-ended")), "the emergency's end")
    ended = events(operator, "emergency-ended")[0]
    assert ended["outcome"] == "partial" and ended["reason"] == "cancelled by c-storm-2"
    assert len(events(operator, "emergency-repeated")) < 9


def test_emergencies_that_must_not_sound_stay_silent(scene: Scene, operator: Recorder) -> None:
    test_cap = {"identifier": "vn-25-test-1", "sender": "kttv@25.gov.vn",
                "sent": "2026-11-22T10:00:00+07:00", "status": "Test", "msgType": "Alert",
                "scope": "Public"}  # fmt: skip
    now = datetime.now(UTC)
    sent = [
        scene.emergency("e-test-1", cap=test_cap),
        scene.emergency(
            "e-old-1", issued_at="2026-11-01T00:00:00+07:00", expires="2026-11-01T01:00:00+07:00"
        ),
        scene.emergency("e-scope-1", signer="commune-08230"),  # a commune key: no emergencies
        scene.emergency(
            "e-future-1",
            issued_at=format_rfc3339(now + timedelta(hours=2)),
            expires=format_rfc3339(now + timedelta(hours=3)),
        ),
    ]
    for data in sent:
        operator.publish(COMMUNE_CMD, data)
    replayed = scene.emergency("e-once-1", repeat=1)
    operator.publish(COMMUNE_CMD, replayed)
    wait_until(lambda: bool(events(operator, "emergency-ended")), "the one good emergency")
    operator.publish(COMMUNE_CMD, replayed)
    wait_until(lambda: bool(events(operator, "replay")), "the replay refused")
    wait_until(lambda: bool(events(operator, "emergency-silent")), "the CAP test kept silent")
    codes = {e["code"] for e in events(operator) if e["event"] == "envelope"}
    assert {"expired", "replay", "not-yet-valid"} <= codes
    assert codes & {"out-of-scope", "threshold-not-met", "unknown-key", "bad-signature"}
    # Only e-once-1 sounded, once.
    assert [e["id"] for e in events(operator, "emergency-started")] == ["e-once-1"]
    alarm = [w for w in heard(scene.proc.capture) if w and abs(w - 1000) <= 20]
    assert runs(heard(scene.proc.capture), 1000) == 1 and len(alarm) <= 6  # one 1 s clip


def test_a_failed_clip_fetch_is_retried_while_the_emergency_is_valid(
    scene: Scene, operator: Recorder
) -> None:
    # The media server is overloaded (503) when the emergency arrives, and recovers.
    command = scene.emergency("e-busy-1", repeat=1)
    scene.server.add("/alarm.mp3", b"busy", status=503, retry_after="1")
    operator.publish(COMMUNE_CMD, command)
    wait_until(lambda: bool(events(operator, "emergency-fetch-retry")), "the failed fetch")
    assert not events(operator, "emergency-ended")  # not given up
    scene.server.add("/alarm.mp3", scene.alarm)
    wait_until(lambda: bool(events(operator, "emergency-ended")), "the emergency, late")
    assert [e["id"] for e in events(operator, "emergency-started")] == ["e-busy-1"]
    assert events(operator, "emergency-ended")[0]["outcome"] == "complete"
