"""The station on air, end to end, with every real part a station has but the hardware.

A real mosquitto (mutual TLS, generated ACL) carries a province-signed playlist to the real
``loa-agent run`` process; the media (a generated 1 kHz tone) comes from a local HTTP server;
the agent plays it through PyAudio into an ALSA file sink, switches MockFactory relays, and
reports a signed as-run record, heartbeats and events back over the broker. Bad playlists and
bad media are sent over the same path, and the good schedule still plays.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.core import dsse
from agent.core.reports import ASRUN_TYPE
from agent.schemas import load_schema_set
from tests.harness.audio import analyse_pcm, make_tone
from tests.harness.broker import MosquittoBroker, Recorder
from tests.harness.media_server import MediaServer, closed_port
from tests.harness.station_proc import AMP_PIN, NORTH_PIN, SOUTH_PIN, provision_station
from tests.harness.trust import envelope, playlist_body

pytestmark = pytest.mark.integration
STATION = "25/08230/08230-01"
PREFIX = f"loa/v1/{STATION}"
HANOI = ZoneInfo("Asia/Ho_Chi_Minh")


def local_slot(at: datetime) -> tuple[str, str]:
    local = at.astimezone(HANOI)
    return local.strftime("%H:%M:%S"), local.date().isoformat()


def media_entry(url: str, data: bytes, **extra: Any) -> dict[str, Any]:
    import hashlib

    return {"url": url, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} | extra


def events(recorder: Recorder) -> list[dict[str, Any]]:
    return [
        json.loads(m.payload)
        for m in list(recorder.messages)
        if m.topic == f"{PREFIX}/telemetry/event"
    ]


def asruns(recorder: Recorder) -> list[dict[str, Any]]:
    found = []
    for m in list(recorder.messages):
        if m.topic == f"{PREFIX}/telemetry/asrun":
            found.append(json.loads(base64.b64decode(json.loads(m.payload)["payload"])))
    return found


@pytest.fixture
def operator(mqtt_connect: Any) -> Iterator[Recorder]:
    recorder: Recorder = mqtt_connect("province-25")
    recorder.subscribe(f"{PREFIX}/#")
    yield recorder
    # The station's retained birth/offline must not leak into other tests on the shared broker.
    recorder.publish(f"{PREFIX}/state", b"", retain=True)


@pytest.fixture
def media(tmp_path: Path) -> Iterator[tuple[MediaServer, bytes]]:
    tone = tmp_path / "tone.mp3"
    make_tone(tone, 1000, 1.5, amplitude=0.5)
    with MediaServer() as server:
        yield server, tone.read_bytes()


def test_playlist_over_mqtt_plays_and_reports(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    operator: Recorder,
    media: tuple[MediaServer, bytes],
) -> None:
    server, tone = media
    proc = provision_station(tmp_path / "station", mqtt_broker, STATION)
    proc.start()
    try:
        operator.wait_for(
            lambda m: m.topic == f"{PREFIX}/state" and json.loads(m.payload).get("online") is True,
            "birth",
            timeout=20,
        )
        start_at = datetime.now(UTC) + timedelta(seconds=6)
        start, day = local_slot(start_at)
        good = playlist_body(
            version=1,
            valid_from="2026-11-01T00:00:00+07:00",
            media={"tone": media_entry(server.add("/tone.mp3", tone), tone, duration_s=1.5)},
            slots=[{"id": "test-tone", "start": start, "dates": [day], "items": ["tone"],
                    "zones": ["north"], "volume": 100}],
        )  # fmt: skip
        operator.publish(
            "loa/v1/25/playlist/25", envelope("playlist", good, "playlist"), retain=True
        )

        # v2 replaces v1; then bad playlists, each over MQTT: the station says why, keeps v2.
        v2 = good | {"version": 2}
        operator.publish("loa/v1/25/playlist/25", envelope("playlist", v2, "playlist"), retain=True)
        signed = json.loads(envelope("playlist", good | {"version": 3}, "playlist"))
        signed["signatures"][0]["sig"] = base64.b64encode(bytes(64)).decode()
        expired = good | {"version": 3, "expires": "2026-11-02T00:00:00+07:00"}
        bad = {
            "rollback": ("loa/v1/25/playlist/25", envelope("playlist", good, "playlist")),
            "version-conflict": (
                "loa/v1/25/playlist/25",
                envelope("playlist", v2 | {"issued_at": "2026-11-02T00:00:00+07:00"}, "playlist"),
            ),
            "unknown-key": ("loa/v1/25/playlist/25", envelope("playlist", v2, "stranger")),
            "threshold-not-met": ("loa/v1/25/playlist/25", envelope("playlist", v2, "emergency")),
            "bad-signature": ("loa/v1/25/playlist/25", json.dumps(signed).encode()),
            "bad-envelope": ("loa/v1/25/playlist/25", b"{not json"),
            "wrong-payload-type": (
                "loa/v1/25/playlist/25",
                json.dumps(signed | {"payloadType": "text/plain"}).encode(),
            ),
            "schema": ("loa/v1/25/playlist/25", envelope("playlist", v2 | {"x": 1}, "playlist")),
            "expired": ("loa/v1/25/playlist/25", envelope("playlist", expired, "playlist")),
            "out-of-scope": (
                "loa/v1/25/08230/playlist/25",
                envelope("playlist", v2 | {"target": "25/08230"}, "commune-08230"),
            ),
            "wrong-audience": (
                "loa/v1/25/08230/playlist/25",
                envelope("playlist", good | {"version": 3}, "playlist"),
            ),
        }
        for topic, data in bad.values():
            operator.publish(topic, data, retain=True)

        asrun = operator.wait_for(
            lambda m: m.topic == f"{PREFIX}/telemetry/asrun", "as-run", timeout=40
        )
        env = json.loads(asrun.payload)
        assert env["payloadType"] == ASRUN_TYPE
        body = base64.b64decode(env["payload"])
        public = bytes.fromhex((tmp_path / "station" / "keys" / "station.pub").read_text().strip())
        Ed25519PublicKey.from_public_bytes(public).verify(
            base64.b64decode(env["signatures"][0]["sig"]), dsse.pae(ASRUN_TYPE, body)
        )
        record = json.loads(body)
        load_schema_set().validate("asrun", record)
        assert record["outcome"] == "complete", record
        assert record["slot"] == "test-tone" and record["stream"] == "25@25"
        assert record["playlist_version"] == 2
        assert abs(record["played_s"] - 1.5) < 0.1
        assert record["relay_ok"] is True and record["amp_power_ok"] is True
        # The tone (-9 dBFS RMS as made) was measured when it entered the cache and played at
        # the station's loudness target, -16 LUFS: a stereo sine reads 3 dB lower in RMS.
        assert -20.0 < record["output_level_db"] < -18.0

        codes = [e["code"] for e in events(operator) if e["event"] == "envelope"]
        assert sorted(codes) == sorted(["accepted", "accepted", *bad]), codes
        heartbeat = operator.wait_for(
            lambda m: (
                m.topic == f"{PREFIX}/telemetry/heartbeat"
                and json.loads(m.payload)["streams"] == {"25@25": 2}
            ),
            "a heartbeat naming the stream in force",
        )
        load_schema_set().validate("heartbeat", json.loads(heartbeat.payload))
        assert json.loads(heartbeat.payload)["alerts"] == []  # keyring valid, clock trusted
        assert all(e["alerts"] == [] for e in events(operator))
    finally:
        assert proc.stop() == 0, proc.log_text()

    report = analyse_pcm(proc.capture.read_bytes())
    assert abs(report.seconds - 1.5) < 0.1
    assert report.freq_hz is not None and abs(report.freq_hz - 1000) < 20
    assert report.dbfs is not None and abs(report.dbfs - record["output_level_db"]) < 0.2
    pins = proc.pins()
    # Active-high relays: amplifier on, north zone on, both off again; south never touched.
    assert pins[AMP_PIN] == [False, True, False]
    assert pins[NORTH_PIN] == [False, True, False]
    assert pins[SOUTH_PIN] == [False]
    # Amplifier first, zone after the warm-up; off in reverse order.
    assert proc.switching_order() == [
        (AMP_PIN, True),
        (NORTH_PIN, True),
        (NORTH_PIN, False),
        (AMP_PIN, False),
    ]


def test_bad_media_never_plays_and_is_reported(
    tmp_path: Path,
    mqtt_broker: MosquittoBroker,
    operator: Recorder,
    media: tuple[MediaServer, bytes],
) -> None:
    server, tone = media
    proc = provision_station(tmp_path / "station", mqtt_broker, STATION)
    proc.start()
    try:
        operator.wait_for(lambda m: m.topic == f"{PREFIX}/state", "birth", timeout=20)
        start, day = local_slot(datetime.now(UTC) + timedelta(seconds=6))
        corrupt_url = server.add("/corrupt.mp3", tone[:-100] + b"\x00" * 100)
        dead_url = f"http://127.0.0.1:{closed_port()}/gone.mp3"
        doc = playlist_body(
            issuer="08230",
            target="25/08230",
            version=1,
            media={
                "corrupt": media_entry(corrupt_url, tone),
                "gone": media_entry(dead_url, tone + b"x"),
            },
            slots=[
                {"id": "s-corrupt", "start": start, "dates": [day], "items": ["corrupt"]},
                {"id": "s-gone", "start": start, "dates": [day], "items": ["gone"], "priority": 40},
            ],
        )
        operator.publish(
            "loa/v1/25/08230/playlist/08230",
            envelope("playlist", doc, "commune-08230"),
            retain=True,
        )
        for code in ("media-hash-mismatch", "media-unreachable"):
            operator.wait_for(
                lambda m, c=code: (
                    m.topic == f"{PREFIX}/telemetry/event" and json.loads(m.payload)["code"] == c
                ),
                code,
                timeout=20,
            )
        operator.wait_for(
            lambda m: m.topic == f"{PREFIX}/telemetry/asrun" and len(asruns(operator)) >= 2,
            "two as-run records",
            timeout=30,
        )
        outcomes = {(r["slot"], r["outcome"], r["reason"]) for r in asruns(operator)}
        assert outcomes == {
            ("s-corrupt", "failed", "media-missing"),
            ("s-gone", "failed", "media-missing"),
        }
    finally:
        assert proc.stop() == 0, proc.log_text()
    assert not proc.capture.exists() or proc.capture.stat().st_size == 0
    cached = [p for p in (tmp_path / "station" / "cache").iterdir() if not p.name.startswith(".")]
    assert cached == []  # no medium (the integrity index, a dotfile, may be there)
