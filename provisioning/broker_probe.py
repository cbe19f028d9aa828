"""One connection to a broker as the station, to tell a technician what stands in the way.

The station connects with its own certificate; the broker takes the certificate's name as the
client id (``use_username_as_clientid``), so this probe *is* the station to the broker. It must
therefore leave the station's session as it found it: it resumes the session (clean start
off, the agent's session expiry), subscribes to nothing, and acknowledges nothing
(``manual_ack``), so whatever the broker had queued for the station is delivered again to the
agent at its next connect. ``loa-provision check`` never probes while the agent runs: the
broker would hand the agent's connection over to the probe.

Each failure is named for what a technician can do about it: the address, the port, the
network, the broker's certificate, this station's certificate (expired, revoked, from another
authority) or the broker's access list.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from paho.mqtt.client import Client, ConnectFlags
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.link import TlsFiles

# What went wrong, by what the technician does about it.
OK = "ok"
DNS = "dns"  # the broker's name does not resolve
REFUSED = "refused"  # nothing listens on that port
TIMEOUT = "timeout"  # no answer: network, firewall, 4G
SERVER_UNTRUSTED = "server-untrusted"  # the broker's certificate is not from our CA
SERVER_TIME = "server-time"  # the broker's certificate is outside its dates: our clock?
REVOKED = "revoked"  # the province revoked this station's certificate
CERT_EXPIRED = "cert-expired"  # the broker says our certificate has expired
CERT_REJECTED = "cert-rejected"  # the broker does not accept our certificate
CLOSED = "closed"  # closed after the handshake without a word: our certificate, most likely
NOT_AUTHORIZED = "not-authorized"  # the broker's ACL does not know this station
REFUSED_CONNACK = "connack"  # refused for another reason
OTHER = "other"


@dataclass(frozen=True)
class Probe:
    url: str
    outcome: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == OK


def parse_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtts", "ssl", "tls") or not parts.hostname:
        raise ValueError(f"not an mqtts:// URL: {url!r}")
    return parts.hostname, parts.port or 8883


def probe(
    url: str, tls: TlsFiles, client_id: str, session_expiry_s: int, timeout_s: float = 10.0
) -> Probe:
    """One probe; a connection the broker closed without saying why is tried once more: under
    TLS 1.3 the broker judges the client's certificate after the handshake, and its alert
    ("certificate revoked") sometimes loses the race with the close."""
    first = _probe_once(url, tls, client_id, session_expiry_s, timeout_s)
    if first.outcome != CLOSED:
        return first
    return _probe_once(url, tls, client_id, session_expiry_s, timeout_s)


def _probe_once(
    url: str, tls: TlsFiles, client_id: str, session_expiry_s: int, timeout_s: float
) -> Probe:
    started = time.monotonic()

    def done(outcome: str, detail: str = "") -> Probe:
        return Probe(url, outcome, detail, round(time.monotonic() - started, 2))

    try:
        host, port = parse_url(url)
    except ValueError as exc:
        return done(OTHER, str(exc))
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=True,
    )
    client.connect_timeout = timeout_s
    logs: list[str] = []
    answer: dict[str, ReasonCode] = {}

    def on_connect(
        c: Client, u: Any, flags: ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        answer.setdefault("reason", reason)

    client.on_log = lambda c, u, level, text: logs.append(str(text))
    client.on_connect = on_connect
    client.on_message = lambda c, u, message: None  # delivered again to the agent: no ack
    try:
        client.tls_set(str(tls.ca), str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        return done(OTHER, f"cannot load the station's TLS files: {exc}")
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry_s
    try:
        client.connect(host, port, keepalive=30, clean_start=False, properties=props)
    except socket.gaierror as exc:
        return done(DNS, f"{host}: {exc.strerror or exc}")
    except ConnectionRefusedError:
        return done(REFUSED, f"{host}:{port}")
    except ssl.SSLCertVerificationError as exc:
        message = exc.verify_message or str(exc)
        if "expired" in message or "not yet valid" in message:
            return done(SERVER_TIME, message)
        return done(SERVER_UNTRUSTED, message)
    except ssl.SSLError as exc:
        return done(*_classify_tls(str(exc)))
    except TimeoutError:
        return done(TIMEOUT, f"{host}:{port} ({timeout_s:.0f} s)")
    except OSError as exc:
        return done(OTHER, f"{host}:{port}: {exc.strerror or exc}")
    deadline = time.monotonic() + timeout_s
    lost = False
    try:
        while "reason" not in answer and time.monotonic() < deadline:
            if client.loop(timeout=0.2) != 0:
                lost = True
                break
        reason = answer.get("reason")
        if reason is not None:
            if reason.is_failure:
                name = str(reason)
                kind = NOT_AUTHORIZED if "authori" in name.lower() else REFUSED_CONNACK
                return done(kind, name)
            client.disconnect()  # a normal disconnection: the session stays for the agent
            return done(OK)
        said = " ".join(logs)
        outcome, detail = _classify_tls(said)
        if outcome != OTHER:
            return done(outcome, detail)
        if lost:
            return done(CLOSED, said[-300:] or "the broker closed the connection")
        return done(TIMEOUT, f"no answer to CONNECT from {host}:{port} ({timeout_s:.0f} s)")
    finally:
        client.loop_stop()
        sock = client.socket()
        if sock is not None:
            sock.close()


def _classify_tls(text: str) -> tuple[str, str]:
    """OpenSSL's words for an alert the broker sent about our certificate."""
    lowered = text.lower()
    if "revoked" in lowered:
        return REVOKED, text[-300:]
    if "certificate expired" in lowered or "certificate has expired" in lowered:
        return CERT_EXPIRED, text[-300:]
    for words in ("unknown ca", "bad certificate", "certificate unknown", "handshake failure"):
        if words in lowered:
            return CERT_REJECTED, text[-300:]
    return OTHER, text[-300:]
