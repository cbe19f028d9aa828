"""A real mosquitto broker for tests, with mutual TLS and the generated ACL (pytest plugin).

This module owns the test broker's lifecycle: a throwaway CA, the server and client
certificates, the ACL rendered by `province.acl`, the mosquitto.conf, the subprocess, and a
connected paho client per identity. It leaves what the tests assert to the tests.

Loaded from the root conftest with `pytest_plugins = ["tests.harness.broker"]`; it provides the
session-scoped `mqtt_broker` fixture and the function-scoped `mqtt_connect` factory.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
from paho.mqtt.client import (
    MQTT_ERR_SUCCESS,
    Client,
    ConnectFlags,
    DisconnectFlags,
    MQTTMessage,
    MQTTv5,
    error_string,
)
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from province import acl, pki
from province.mosquitto import (
    BrokerError,
    BrokerFiles,
    Mosquitto,
    find_mosquitto,
)

DEFAULT_STATIONS = ("25/08230/08230-01", "25/08230/08230-02", "25/08231/08231-01")
DEFAULT_OPERATORS = (("province-25", "25"),)

START_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
_T = TypeVar("_T")


@dataclass
class MosquittoBroker:
    """One mosquitto process on a loopback port, configured like the province broker."""

    directory: Path
    stations: Sequence[str] = DEFAULT_STATIONS
    operators: Sequence[tuple[str, str]] = DEFAULT_OPERATORS
    host: str = "127.0.0.1"
    executable: str = "mosquitto"
    port: int = 0
    _ca_cert_pem: bytes = field(init=False, repr=False)
    _ca_key_pem: bytes = field(init=False, repr=False)
    _clients: dict[str, tuple[Path, Path]] = field(init=False, default_factory=dict, repr=False)
    _broker: Mosquitto | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ca_cert_pem, self._ca_key_pem = pki.create_ca("loa-test-ca", days=2)
        self.ca_path.write_bytes(self._ca_cert_pem)
        cert_pem, key_pem = pki.issue_server_cert(
            self._ca_cert_pem, self._ca_key_pem, hosts=("localhost",), ips=(self.host,), days=2
        )
        self.server_cert_path.write_bytes(cert_pem)
        self.server_key_path.write_bytes(key_pem)
        self.server_key_path.chmod(0o600)
        self.write_acl(self.stations, self.operators)
        # CRL checking on, as at the province: an empty CRL from the start (without one, every
        # client would be refused); `revoke` replaces it.
        self.revoked: list[pki.RevokedCert] = []
        self._crl_number = 0
        self._write_crl()

    # -- paths ---------------------------------------------------------------------------------
    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def server_cert_path(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key_path(self) -> Path:
        return self.directory / "server.key"

    @property
    def acl_path(self) -> Path:
        return self.directory / "acl"

    @property
    def crl_path(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def conf_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    # -- identities ----------------------------------------------------------------------------
    def client_credentials(self, cn: str) -> tuple[Path, Path]:
        """(cert path, key path) of a client certificate with subject CN `cn`, issued once."""
        if cn not in self._clients:
            key_pem = pki.make_key()
            cert_pem = pki.sign_csr(
                pki.make_csr(key_pem, cn), self._ca_cert_pem, self._ca_key_pem, days=2
            )
            # A CN holds `/`; the index keeps file names unique whatever the CN looks like.
            stem = f"client-{len(self._clients):03d}-" + re.sub(r"[^A-Za-z0-9.-]", "_", cn)
            cert_path = self.directory / f"{stem}.crt"
            key_path = self.directory / f"{stem}.key"
            cert_path.write_bytes(cert_pem)
            key_path.write_bytes(key_pem)
            key_path.chmod(0o600)
            self._clients[cn] = (cert_path, key_path)
        return self._clients[cn]

    # -- configuration -------------------------------------------------------------------------
    def write_acl(self, stations: Iterable[str], operators: Iterable[tuple[str, str]]) -> None:
        self.stations = tuple(stations)
        self.operators = tuple(operators)
        text = acl.render_acl(self.stations, self.operators)
        # Atomic replace: a SIGHUP racing the write must never read half a file.
        tmp = self.acl_path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.acl_path)

    def _write_crl(self) -> None:
        self._crl_number += 1
        next_update = datetime.now(UTC) + timedelta(days=2)
        pem = pki.make_crl(
            self._ca_cert_pem, self._ca_key_pem, self.revoked, self._crl_number,
            next_update=next_update,
        )  # fmt: skip
        tmp = self.crl_path.with_suffix(".tmp")
        tmp.write_bytes(pem)
        tmp.replace(self.crl_path)

    # -- lifecycle: the same broker process the province's demo runs -------------------------
    def start(self, timeout: float = START_TIMEOUT_S, *, same_port: bool = False) -> None:
        if same_port and self._broker is not None:
            self._broker.start(timeout, same_port=True)
            self.port = self._broker.port
            return
        files = BrokerFiles(
            self.ca_path, self.server_cert_path, self.server_key_path, self.acl_path,
            self.crl_path,
        )  # fmt: skip
        probe = self.client_credentials("harness-probe")
        self._broker = Mosquitto(self.directory, files, probe, self.host, self.executable)
        self._broker.start(timeout)
        self.port = self._broker.port

    def stop(self, timeout: float = 5.0) -> None:
        if self._broker is not None:
            self._broker.stop(timeout)

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL the broker, as a crash would (no DISCONNECT, no Will sent on its way out),
        then reap it; ``start(same_port=True)`` brings it back where clients look for it."""
        assert self._broker is not None, "broker not started"
        os.kill(self._broker.pid, signal.SIGKILL)
        self._broker.stop(timeout)  # the process is dead or dying: this only waits and reaps

    def reload(
        self,
        stations: Iterable[str],
        operators: Iterable[tuple[str, str]] | None = None,
        timeout: float = START_TIMEOUT_S,
    ) -> None:
        """Rewrite the ACL for a new registry and make the running broker apply it (SIGHUP)."""
        self.write_acl(stations, self.operators if operators is None else operators)
        assert self._broker is not None, "broker not started"
        self._broker.reload(timeout)

    def revoke(self, cert_pem: bytes, reason: str = "key-compromise") -> None:
        """Put a client certificate on the CRL and make the running broker re-read it."""
        now = datetime.now(UTC)
        self.revoked.append(pki.RevokedCert(pki.serial_number(cert_pem), now, reason))
        self._write_crl()
        self.reload(self.stations)

    def sign_csr(self, csr_pem: bytes) -> bytes:
        """Issue a client certificate for a station's own certificate request."""
        return pki.sign_csr(csr_pem, self._ca_cert_pem, self._ca_key_pem, days=2)

    def log_text(self) -> str:
        return self._broker.log_text() if self._broker is not None else ""

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- paho clients ------------------------------------------------------------------------------
@dataclass
class ConnectOutcome:
    """What a connection attempt came to: a CONNACK reason, or how it was refused."""

    connected: bool
    detail: str


def _new_client(cn: str) -> Client:
    return Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=cn, protocol=MQTTv5)


class Endpoint(Protocol):
    """Where ``attempt_connect`` connects: this harness's broker or a ``Mosquitto`` a test
    configured itself."""

    host: str
    port: int

    @property
    def ca_path(self) -> Path: ...


def attempt_connect(
    broker: Endpoint,
    *,
    client_id: str,
    certfile: Path | None,
    keyfile: Path | None,
    ca_path: Path | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
) -> ConnectOutcome:
    """Try one connection with the given TLS material, then disconnect; never retries.

    Waits for an answer (CONNACK, or the broker closing the connection), not for a fixed time,
    so a refusal is observed rather than assumed from silence.
    """
    client = _new_client(client_id)
    client.tls_set(
        ca_certs=str(ca_path or broker.ca_path),
        certfile=None if certfile is None else str(certfile),
        keyfile=None if keyfile is None else str(keyfile),
    )
    answered = threading.Event()
    outcome: list[ConnectOutcome] = []

    def on_connect(
        c: Client, u: Any, f: ConnectFlags, rc: ReasonCode, p: Properties | None
    ) -> None:
        outcome.append(ConnectOutcome(not rc.is_failure, f"CONNACK {rc}"))
        answered.set()

    def on_disconnect(
        c: Client, u: Any, f: DisconnectFlags, rc: ReasonCode, p: Properties | None
    ) -> None:
        outcome.append(ConnectOutcome(False, f"disconnected: {rc}"))
        answered.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(broker.host, broker.port)
    except OSError as exc:  # TLS refusal during the handshake (ssl.SSLError is an OSError)
        return ConnectOutcome(False, f"handshake failed: {exc!r}")
    # One attempt only: loop() by hand instead of loop_start(), whose thread would reconnect.
    deadline = time.monotonic() + timeout
    while not answered.is_set() and time.monotonic() < deadline:
        client.loop(timeout=0.05)
    client.disconnect()
    # paho closes its socket once DISCONNECT is written or the broker hung up; loop until then
    # so no socket is left for the garbage collector (ResourceWarning is an error here).
    close_deadline = time.monotonic() + timeout
    while client.socket() is not None and time.monotonic() < close_deadline:
        client.loop(timeout=0.05)
    if not outcome:
        return ConnectOutcome(False, f"no answer from the broker within {timeout} s")
    return outcome[0]


def connect_client(broker: MosquittoBroker, cn: str, timeout: float = CONNECT_TIMEOUT_S) -> Client:
    """A paho MQTT 5 client connected over mutual TLS as `cn`, its network loop running.

    The caller owns it: `client.disconnect()` then `client.loop_stop()` (or use `mqtt_connect`).
    """
    cert_path, key_path = broker.client_credentials(cn)
    client = _new_client(cn)
    client.tls_set(ca_certs=str(broker.ca_path), certfile=str(cert_path), keyfile=str(key_path))
    connected = threading.Event()
    result: list[ReasonCode] = []

    def on_connect(
        c: Client, u: Any, f: ConnectFlags, rc: ReasonCode, p: Properties | None
    ) -> None:
        result.append(rc)
        connected.set()

    client.on_connect = on_connect
    client.connect(broker.host, broker.port)
    client.loop_start()
    if not connected.wait(timeout) or result[0].is_failure:
        close_client(client)
        answer = f"CONNACK {result[0]}" if result else f"no CONNACK within {timeout} s"
        raise BrokerError(f"{cn} could not connect: {answer}\n{broker.log_text()}")
    return client


def close_client(client: Client) -> None:
    client.disconnect()
    client.loop_stop()


class Recorder:
    """Records what a connected paho client receives (messages, SUBACKs, PUBACKs) so that
    tests wait for facts with deadlines instead of sleeping."""

    def __init__(self, client: Client, timeout: float = CONNECT_TIMEOUT_S) -> None:
        self.client = client
        self.timeout = timeout
        self.messages: list[MQTTMessage] = []
        self._cond = threading.Condition()
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._pubacks: dict[int, ReasonCode] = {}
        self.retained: set[str] = set()
        self.disconnected = threading.Event()
        self.disconnect_reasons: list[ReasonCode] = []
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish

    def subscribe(self, topic: str, qos: int = 1) -> list[ReasonCode]:
        """Subscribe and wait for the SUBACK; returns its reason codes."""
        rc, mid = self.client.subscribe(topic, qos=qos)
        if rc != MQTT_ERR_SUCCESS or mid is None:
            raise BrokerError(f"SUBSCRIBE {topic} not sent: {error_string(rc)}")
        return self._wait_for(self._subacks, mid, f"SUBACK for {topic}")

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> ReasonCode:
        """Publish and wait for the broker's answer (PUBACK reason code at QoS 1)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTT_ERR_SUCCESS:
            raise BrokerError(f"PUBLISH {topic} not sent: {error_string(info.rc)}")
        reason = self._wait_for(self._pubacks, info.mid, f"PUBACK for {topic}")
        if retain and not reason.is_failure:
            if payload:
                self.retained.add(topic)
            else:
                self.retained.discard(topic)
        return reason

    def clear_retained(self) -> None:
        """Clear what this client retained (an empty retained payload deletes it), with its
        own identity, which the ACL let write those topics."""
        for topic in sorted(self.retained):
            reason = self.publish(topic, b"", retain=True)
            if reason.is_failure:
                raise BrokerError(f"could not clear retained {topic}: {reason}")

    def wait_for_message(self, topic: str, payload: bytes | None = None) -> MQTTMessage:
        """The first message received on `topic` (with `payload`, if given)."""

        def find() -> MQTTMessage | None:
            for message in self.messages:
                if message.topic == topic and payload in (None, message.payload):
                    return message
            return None

        with self._cond:
            if not self._cond.wait_for(lambda: find() is not None, self.timeout):
                raise AssertionError(f"no message on {topic} within {self.timeout} s")
            found = find()
            assert found is not None
            return found

    def wait_for(
        self, predicate: Callable[[MQTTMessage], bool], what: str, timeout: float | None = None
    ) -> MQTTMessage:
        """The first message received (before or after the call) that satisfies ``predicate``."""

        def find() -> MQTTMessage | None:
            return next((m for m in self.messages if predicate(m)), None)

        with self._cond:
            if not self._cond.wait_for(lambda: find() is not None, timeout or self.timeout):
                raise AssertionError(f"no message {what} within {timeout or self.timeout} s")
            found = find()
            assert found is not None
            return found

    def topics(self) -> list[str]:
        with self._cond:
            return [message.topic for message in self.messages]

    def _wait_for(self, table: dict[int, _T], mid: int, what: str) -> _T:
        with self._cond:
            if not self._cond.wait_for(lambda: mid in table, self.timeout):
                raise AssertionError(f"no {what} within {self.timeout} s")
            return table.pop(mid)

    # paho's network thread calls these; they only record and notify.
    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.disconnect_reasons.append(reason_code)
        self.disconnected.set()

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def _on_subscribe(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._subacks[mid] = reason_codes
            self._cond.notify_all()

    def _on_publish(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._pubacks[mid] = reason_code
            self._cond.notify_all()


# -- pytest fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """The shared test broker: three stations in two communes of province 25, one operator."""
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("mosquitto binary not found (install the Debian package: make sysdeps)")
    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"), executable=executable)
    with broker:
        yield broker


@pytest.fixture
def mqtt_connect(mqtt_broker: MosquittoBroker) -> Iterator[Callable[[str], Recorder]]:
    """Connect clients by CN to `mqtt_broker`, each wrapped in a `Recorder`.

    When the test ends, each client clears the retained messages it published (the broker is
    shared by the session) and disconnects, so the next test starts clean and can reuse a CN
    (the CN is the client id: a second connection with it would take the first one over).
    """
    recorders: list[Recorder] = []

    def connect(cn: str) -> Recorder:
        recorder = Recorder(connect_client(mqtt_broker, cn))
        recorders.append(recorder)
        return recorder

    yield connect
    try:
        for recorder in recorders:
            if recorder.retained:
                recorder.clear_retained()
    finally:
        for recorder in recorders:
            close_client(recorder.client)
