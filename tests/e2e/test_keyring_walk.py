"""A station that missed several rotations walks the retained keyring topics in order, however
the broker happens to deliver them (PROTOCOL.md sections 2 and 4)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.broker import MosquittoBroker, Recorder
from tests.harness.station_proc import provision_station
from tests.harness.trust import envelope, keyid, keyring_body, playlist_body, public_hex

pytestmark = pytest.mark.integration
STATION = "25/08230/08230-01"
PREFIX = f"loa/v1/{STATION}"


@pytest.fixture
def operator(mqtt_connect: Any) -> Iterator[Recorder]:
    recorder: Recorder = mqtt_connect("province-25")
    recorder.subscribe(f"{PREFIX}/#")
    yield recorder
    recorder.publish(f"{PREFIX}/state", b"", retain=True)


def test_missed_rotations_are_applied_in_order(
    tmp_path: Path, mqtt_broker: MosquittoBroker, operator: Recorder
) -> None:
    # The newest playlist is signed by a key that only keyring v5 brings, and it is retained
    # first: the station must hold it until the keyring chain has caught up.
    playlist = envelope("playlist", playlist_body(version=7), "new1")
    operator.publish("loa/v1/25/playlist/25", playlist, retain=True)
    # Published newest first, so a broker delivering in publication order hands out v5 first.
    for version in (5, 4, 3, 2):
        body = keyring_body(version)
        if version == 5:
            body["keys"][keyid("new1")] = {"scheme": "ed25519", "public": public_hex("new1"),
                                           "scope": ["25"]}  # fmt: skip
            body["roles"]["playlist"]["keyids"].append(keyid("new1"))
        data = envelope("keyring", body, "root1", "root2")
        operator.publish(f"loa/v1/25/keyring/{version}", data, retain=True)
    proc = provision_station(tmp_path / "station", mqtt_broker, STATION)
    proc.start()
    try:
        operator.wait_for(
            lambda m: (
                m.topic == f"{PREFIX}/telemetry/heartbeat" and json.loads(m.payload)["keyring"] == 5
            ),
            "a heartbeat on keyring v5",
            timeout=30,
        )
        accepted = [
            json.loads(m.payload)["label"]
            for m in list(operator.messages)
            if m.topic == f"{PREFIX}/telemetry/event"
            and json.loads(m.payload).get("code") == "accepted"
            and json.loads(m.payload).get("payload_kind") == "keyring"
        ]
        assert accepted == ["v2", "v3", "v4", "v5"]
        codes = [
            json.loads(m.payload).get("code")
            for m in list(operator.messages)
            if m.topic == f"{PREFIX}/telemetry/event"
        ]
        # mosquitto 2.0 hands out retained messages in publication order, so v5, v4 and v3 were
        # held back as version gaps and applied once v2 arrived: the walk really ran.
        assert codes.count("version-gap") == 3
        assert codes.count("unknown-key") == 1  # the playlist, before its key was known
    finally:
        assert proc.stop() == 0, proc.log_text()
