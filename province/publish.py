"""Publishing signed envelopes to their topics (PROTOCOL.md section 2), as the province operator.

The topic comes from the body, never from the person typing: a playlist goes to
``loa/v1/{target}/playlist/{issuer}`` (retained: a station that connects later still gets the
stream's current playlist), a keyring to ``loa/v1/{p}/keyring/{version}`` (retained, one topic
per version so a station can walk the chain), a time beacon to ``loa/v1/{p}/time`` (retained)
and a command to ``loa/v1/{target}/cmd`` with an MQTT Message Expiry equal to what is left of
its validity, so a station that reconnects late never receives a stale command. A release
(docs/releases.md) goes to ``loa/v1/{target}/release/{issuer}``, retained like a playlist: one
current release per target and issuer. Everything published is recorded in the registry:
coverage counts what was expected from playlists, ``loa-province updates`` reads releases.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.core import dsse
from agent.core.codes import Rejected
from agent.core.timefmt import parse_rfc3339
from agent.core.verify import PAYLOAD_KINDS
from agent.link import LinkError, TlsFiles, parse_broker_url, tls_client
from province.errors import ProvinceError
from province.registry import Registry
from province.signing import BodyError, check_body, subject


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    kind: str
    issuer: str
    target: str
    label: str
    body: bytes
    envelope: bytes
    retain: bool
    expiry_s: int | None


def route(envelope: bytes, now: datetime) -> Outgoing:
    """Where an envelope goes and how; ProvinceError if it is not one a station would take."""
    try:
        parsed = dsse.parse_envelope(envelope, 3 * 1024 * 1024)
    except Rejected as exc:
        raise ProvinceError(f"not a publishable envelope: {exc}") from exc
    kind = PAYLOAD_KINDS.get(parsed.payload_type)
    try:
        body_kind = check_body(parsed.body)
    except BodyError as exc:
        raise ProvinceError(str(exc)) from exc
    if kind != body_kind:
        raise ProvinceError(f"payload type says {kind}, body says {body_kind}")
    # Who and which: named once, as the signing log names them (province.signing.subject).
    _, issuer, target, label = subject(parsed.body)
    body, retained = parsed.body, True
    if kind == "playlist":
        return Outgoing(f"loa/v1/{target}/playlist/{issuer}", kind, issuer, target, label,
                        body, envelope, retained, None)  # fmt: skip
    if kind == "release":
        return Outgoing(f"loa/v1/{target}/release/{issuer}", kind, issuer, target, label,
                        body, envelope, retained, None)  # fmt: skip
    if kind == "keyring":
        return Outgoing(f"loa/v1/{issuer}/keyring/{label[1:]}", kind, issuer, target, label,
                        body, envelope, retained, None)  # fmt: skip
    if kind == "time":
        return Outgoing(f"loa/v1/{issuer}/time", kind, issuer, target, label, body, envelope,
                        retained, None)  # fmt: skip
    expires = json.loads(body)["expires"]
    left = int((parse_rfc3339(expires) - now).total_seconds())
    if left <= 0:
        raise ProvinceError(f"command {label} has already expired")
    return Outgoing(f"loa/v1/{target}/cmd", kind, issuer, target, label, body, envelope, False,
                    left)  # fmt: skip


class Publisher:
    """A short-lived operator connection: connect, publish QoS 1 and wait for PUBACKs, close."""

    def __init__(self, broker_url: str, tls: TlsFiles, client_id: str, timeout_s: float = 15.0):
        self._host, self._port = parse_broker_url(broker_url)
        self._timeout = timeout_s
        self._connected = threading.Event()
        self._refused: str | None = None
        try:
            client = tls_client(client_id, tls)
        except LinkError as exc:
            raise ProvinceError(f"the operator's identity: {exc}") from exc
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._acks: dict[int, ReasonCode] = {}  # mid -> the PUBACK's reason (MQTT 5)
        self._client = client

    def __enter__(self) -> Publisher:
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except OSError as exc:
            raise ProvinceError(
                f"cannot reach the broker {self._host}:{self._port}: {exc}"
            ) from exc
        self._client.loop_start()
        if not self._connected.wait(self._timeout) or self._refused:
            self.__exit__()
            raise ProvinceError(f"the broker refused the operator: {self._refused or 'timeout'}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def send(self, outgoing: Outgoing) -> None:
        props = None
        if outgoing.expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = outgoing.expiry_s
        info = self._client.publish(
            outgoing.topic, outgoing.envelope, qos=1, retain=outgoing.retain, properties=props
        )
        info.wait_for_publish(self._timeout)
        if not info.is_published():
            raise ProvinceError(f"the broker did not acknowledge {outgoing.topic}")
        # A PUBACK is not a delivery: mosquitto answers "Not authorized" and drops a message
        # its ACL refuses, and paho calls that published.
        reason = self._acks.pop(info.mid, None)
        if reason is not None and reason.is_failure:
            raise ProvinceError(
                f"the broker refused {outgoing.topic}: {reason} (is this identity in the ACL? "
                "`loa-province acl`, then reload the broker)"
            )

    def _on_publish(
        self, client: Client, userdata: Any, mid: int, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:  # fmt: skip
        self._acks[mid] = reason

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:  # fmt: skip
        if reason.is_failure:
            self._refused = str(reason)
        self._connected.set()

    def _on_disconnect(
        self, client: Client, userdata: Any, flags: DisconnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:  # fmt: skip
        if not self._connected.is_set():
            self._refused = str(reason)
            self._connected.set()


def operator_tls(home: Path) -> TlsFiles:
    return TlsFiles(home / "ca" / "ca.crt", home / "operator" / "operator.crt",
                    home / "operator" / "operator.key")  # fmt: skip


def publish(
    registry: Registry, home: Path, broker_url: str, envelopes: Sequence[bytes], now: datetime
) -> list[Outgoing]:
    """Route every envelope first (nothing is sent if one is bad), then send and record them."""
    routed = [route(e, now) for e in envelopes]
    province = registry.meta("province") or ""
    for outgoing in routed:
        if outgoing.topic.split("/")[2] != province:
            raise ProvinceError(f"{outgoing.topic} is not in province {province}")
    with Publisher(broker_url, operator_tls(home), f"province-{province}-publish") as publisher:
        for outgoing in routed:
            publisher.send(outgoing)
            registry.record_published(
                outgoing.topic, outgoing.kind, outgoing.issuer, outgoing.target, outgoing.label,
                outgoing.body, outgoing.envelope,
            )  # fmt: skip
    return routed
