"""A province on PostgreSQL (LOA_PROVINCE_STORE) keeps its whole registry there: every
``loa-province`` command opens the store through ``province.home``, so stations are enrolled
into the database the collector and the reports read, and no ``registry.db`` appears.

Runs the commands as an officer types them (subprocesses), against a real PostgreSQL server
(tests/harness/postgres.py) and a real mosquitto with the province's own CA and the ACL
rendered from the PostgreSQL registry.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import Client, ConnectFlags, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import keyfiles
from province import pki
from province.home import STORE_ENV
from province.mosquitto import BrokerFiles, Mosquitto, find_mosquitto
from province.registry import Registry, open_registry
from province.registry_pg import PostgresStore
from tests.harness.broker import Recorder
from tests.harness.trust import playlist_body

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
STATION = "25/08230/08230-01"
TIMEOUT_S = 30.0


def province(*args: str | Path, store: str | None) -> subprocess.CompletedProcess[str]:
    """``loa-province`` with ``LOA_PROVINCE_STORE`` set to ``store`` (or unset)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if store is not None:
        env[STORE_ENV] = store
    return subprocess.run(
        [str(BIN / "loa-province"), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def connect(port: int, ca: Path, cert: Path, key: Path, cn: str) -> Client:
    client = Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=cn, protocol=MQTTv5)
    client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
    answers: list[ReasonCode] = []
    answered = threading.Event()

    def on_connect(
        c: Client, u: Any, f: ConnectFlags, rc: ReasonCode, p: Properties | None
    ) -> None:
        answers.append(rc)
        answered.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert answered.wait(TIMEOUT_S) and not answers[0].is_failure, answers
    return client


def wait_until(done: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        assert time.monotonic() < deadline, f"no {what} within {TIMEOUT_S} s"
        time.sleep(0.1)


def test_enroll_publish_and_collect_all_use_the_postgresql_store(
    postgres_url: str, tmp_path: Path
) -> None:
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("mosquitto binary not found (install the Debian package: make sysdeps)")
    home = tmp_path / "home"
    store = postgres_url

    # -- the officer: CA, a station enrolled, the broker's certificate and ACL ------------------
    ok(province("ca", "init", "--province", "25", "--home", home, store=store))
    station_dir = tmp_path / "station"
    station_dir.mkdir()
    tls_key = pki.make_key()
    (station_dir / "station.key").write_bytes(tls_key)
    (station_dir / "station.csr").write_bytes(pki.make_csr(tls_key, STATION))
    signing = keyfiles.generate()
    (station_dir / "station.pub").write_text(keyfiles.public_hex(signing) + "\n")
    csr, pub = station_dir / "station.csr", station_dir / "station.pub"
    ok(province("enroll", csr, "--signing-key", pub, "--home", home, store=store))
    station_cert = home / "stations" / "25_08230_08230-01.crt"
    broker_dir = tmp_path / "broker"
    server_cert = ("ca", "server-cert", "--ip", "127.0.0.1", "--out-dir", broker_dir)
    ok(province(*server_cert, "--home", home, store=store))
    ok(province("acl", "--home", home, "--out", broker_dir / "acl", store=store))
    assert f"user {STATION}" in (broker_dir / "acl").read_text()  # read from PostgreSQL

    files = BrokerFiles(
        broker_dir / "ca.crt",
        broker_dir / "server.crt",
        broker_dir / "server.key",
        broker_dir / "acl",
    )
    probe = (station_cert, station_dir / "station.key")
    with Mosquitto(broker_dir, files, probe, executable=executable) as broker:
        # -- a playlist published: recorded as published, in PostgreSQL ------------------------
        ok(province("keygen", "playlist", "--dir", tmp_path / "keys", store=store))
        body = tmp_path / "playlist.json"
        body.write_text(json.dumps(playlist_body(target="25/08230")))
        envelope = tmp_path / "playlist.signed.json"
        key = tmp_path / "keys" / "playlist.key"
        ok(province("sign", body, "--key", key, "--out", envelope, "--home", home, store=store))
        published = ok(
            province("publish", envelope, "--home", home, "--broker", broker.url, store=store)
        )
        assert "loa/v1/25/08230/playlist/25" in published

        # -- the collector stores what the station says, in PostgreSQL -------------------------
        log_path = tmp_path / "collect.log"
        with log_path.open("w") as log:
            collector = subprocess.Popen(
                [str(BIN / "loa-province"), "collect", "--home", str(home), "--broker", broker.url],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                env={"PATH": os.environ.get("PATH", ""), STORE_ENV: store, "PYTHONUNBUFFERED": "1"},
            )
        try:
            wait_until(lambda: "collecting province 25" in log_path.read_text(), "collector")
            station_key = station_dir / "station.key"
            station = Recorder(
                connect(broker.port, broker_dir / "ca.crt", station_cert, station_key, STATION)
            )
            try:
                own = f"loa/v1/{STATION}"
                birth = {"online": True, "station": STATION}
                beat = {"kind": "heartbeat", "station": STATION, "seq": 0, "session": 1}
                for topic, doc in ((f"{own}/state", birth), (f"{own}/telemetry/heartbeat", beat)):
                    assert station.publish(topic, json.dumps(doc).encode()).value == 0
                with open_registry(store) as registry:
                    wait_until(
                        lambda: (
                            registry.last_report(STATION, "heartbeat") is not None
                            and registry.station_state(STATION) is not None
                        ),
                        "heartbeat and birth in PostgreSQL",
                    )
            finally:
                station.client.disconnect()
                station.client.loop_stop()
        finally:
            collector.send_signal(signal.SIGTERM)
            assert collector.wait(TIMEOUT_S) == 0, log_path.read_text()

    # -- the collect-side reads find it all -----------------------------------------------------
    listed = json.loads(ok(province("stations", "--json", "--home", home, store=store)))
    assert [(s["station"], s["online"]) for s in listed] == [(STATION, True)]
    assert listed[0]["last_heartbeat"] is not None
    ok(province("coverage", "--home", home, store=store))

    with open_registry(store) as registry:
        assert isinstance(registry.store, PostgresStore)
        assert registry.meta("province") == "25"
        assert [s.id.path for s in registry.stations()] == [STATION]
        assert [p.topic for p in registry.published("playlist")] == ["loa/v1/25/08230/playlist/25"]
        assert [r.seq for r in registry.reports("heartbeat")] == [0]
    # Nothing went to SQLite: no registry file anywhere, the home holds files only.
    assert list(tmp_path.rglob("registry.db*")) == []

    # The twin: without the variable the same home has no registry (it is not in the home).
    missing = province("stations", "--home", home, store=None)
    assert missing.returncode == 1
    assert f"no registry at {home / 'registry.db'}" in missing.stderr
    assert not (home / "registry.db").exists()


def test_a_new_database_names_no_province_and_the_message_says_where(
    postgres_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    beacon = province(
        "time-beacon",
        "--home",
        home,
        "--broker",
        "mqtts://127.0.0.1:1",
        "--key",
        tmp_path / "none.key",
        "--once",
        store=postgres_url,
    )
    assert beacon.returncode == 1
    assert "names no province" in beacon.stderr
    assert "postgresql:" in beacon.stderr and "registry.db" not in beacon.stderr
    assert not home.exists()


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("postgresql://loa@127.0.0.1:1/nowhere", "cannot open the province store"),
        ("/srv/loa/registry.db", "must be a postgresql:// URL"),
    ],
)
def test_a_store_that_cannot_be_used_is_refused_in_one_line(
    tmp_path: Path, store: str, message: str
) -> None:
    result = province("stations", "--home", tmp_path / "home", store=store)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home").exists()


def test_without_the_variable_the_home_holds_a_sqlite_registry(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok(province("ca", "init", "--province", "25", "--home", home, store=None))
    with Registry(home / "registry.db") as registry:
        assert registry.meta("province") == "25"
