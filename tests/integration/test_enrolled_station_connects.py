"""A station enrolled with the province tools reaches the real broker: mosquitto runs on the
province CA, the server certificate from `loa-province ca server-cert` and the ACL from
`loa-province acl`, and the station connects with exactly the files `loa-provision enroll`
installed. Nothing here is issued by the test harness's own CA.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import Client, ConnectFlags, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import read_config
from province.mosquitto import BrokerFiles, Mosquitto, find_mosquitto
from tests.harness.broker import Recorder, close_client

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
VECTORS = Path(__file__).resolve().parents[2].parent / "shared/vectors"
STATION = "25/08230/08230-01"
OPERATOR = "province-25"
CONNECT_TIMEOUT_S = 10.0
NOT_AUTHORIZED = 0x87


def cli(*args: str | Path) -> str:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, f"{args[0]} {args[1]}: {result.stderr}"
    return result.stdout


def connect(broker: Mosquitto, client_id: str, ca: Path, cert: Path, key: Path) -> Recorder:
    """A paho MQTT 5 client over mutual TLS, connected (CONNACK awaited) and recording."""
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTv5
    )
    client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
    connected = threading.Event()
    answers: list[ReasonCode] = []

    def on_connect(
        c: Client, u: Any, f: ConnectFlags, rc: ReasonCode, p: Properties | None
    ) -> None:
        answers.append(rc)
        connected.set()

    client.on_connect = on_connect
    recorder = Recorder(client, timeout=CONNECT_TIMEOUT_S)
    client.connect(broker.host, broker.port)
    client.loop_start()
    if not connected.wait(CONNECT_TIMEOUT_S) or answers[0].is_failure:
        close_client(client)
        answer = f"CONNACK {answers[0]}" if answers else "no CONNACK"
        raise AssertionError(f"{client_id} could not connect: {answer}\n{broker.log_text()}")
    return recorder


def test_enrolled_station_connects_and_receives_its_commune_playlist(tmp_path: Path) -> None:
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("mosquitto binary not found (install the Debian package: make sysdeps)")
    home, station, broker_dir = tmp_path / "home", tmp_path / "station", tmp_path / "broker"
    province = BIN / "loa-province"
    cli(province, "ca", "init", "--province", "25", "--home", home)
    cli(
        BIN / "loa-provision", "init", "--province", "25", "--commune", "08230",
        "--station", "08230-01", "--keyring", VECTORS / "keyring-v1.json", "--dir", station,
    )  # fmt: skip
    cert = tmp_path / "issued.crt"
    cli(
        province, "enroll", station / "keys/station.csr",
        "--signing-key", station / "keys/station.pub", "--out", cert, "--home", home,
    )  # fmt: skip
    cli(
        province, "ca", "server-cert", "--host", "localhost", "--ip", "127.0.0.1",
        "--out-dir", broker_dir, "--home", home,
    )  # fmt: skip
    cli(province, "acl", "--out", broker_dir / "acl", "--home", home)

    files = BrokerFiles(
        broker_dir / "ca.crt", broker_dir / "server.crt", broker_dir / "server.key",
        broker_dir / "acl",
    )  # fmt: skip
    operator_cert = home / "operator/operator.crt"
    operator_key = home / "operator/operator.key"
    # The operator identity doubles as the readiness probe: any client certificate of the CA.
    broker = Mosquitto(broker_dir, files, (operator_cert, operator_key), executable=executable)
    broker.start()
    recorders: list[Recorder] = []
    try:
        cli(
            BIN / "loa-provision", "enroll", cert, "--ca", home / "ca/ca.crt",
            "--config", station / "station.toml", "--broker", broker.url,
        )  # fmt: skip
        config = read_config(station / "station.toml", {})
        assert config.broker.urls == (broker.url,)
        keys = config.paths
        radio = connect(broker, STATION, keys.ca_certificate, keys.certificate, keys.tls_key)
        recorders.append(radio)
        # The broker took the certificate CN as the username: the ACL's user block applies.
        assert f"u'{STATION}'" in broker.log_text()
        desk = connect(broker, OPERATOR, files.ca, operator_cert, operator_key)
        recorders.append(desk)

        topic = "loa/v1/25/08230/playlist/08230"
        granted = radio.subscribe("loa/v1/25/08230/playlist/+")
        assert [rc.value for rc in granted] == [1], granted
        payload = b'{"test": "commune playlist"}'
        assert not desk.publish(topic, payload).is_failure
        message = radio.wait_for_message(topic, payload)
        assert message.payload == payload

        # And the ACL is the registry's, not a blanket grant: the station may report under its
        # own prefix but never publish a playlist.
        assert not radio.publish(f"loa/v1/{STATION}/telemetry/heartbeat", b"{}").is_failure
        assert radio.publish(topic, b"forged").value == NOT_AUTHORIZED
    finally:
        for recorder in recorders:
            close_client(recorder.client)
        broker.stop()
