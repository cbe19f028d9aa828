"""The MQTT link (paho, MQTT 5, mutual TLS): connects, subscribes, and hands everything over.

paho's network thread never does the station's work: every callback only builds a frozen
message and calls ``deliver`` (the runtime's queue put). Publishing is thread-safe in paho and
is called from the runtime's thread. The Will on ``state`` carries a Will Delay so a short drop
raises no alarm.

The link owns its reconnects (paho's own retry knows one broker and no jitter): a station has a
list of brokers and tries them in turn, staying with the one that last worked; between attempts
it waits a jittered, exponentially growing delay ("full jitter"), so that when a broker restarts
a thousand stations do not come back in the same second. The jitter comes from the system's
random source; ``$LOA_LINK_SEED`` (an integer; tests, or replaying a field trace) makes it a
fixed sequence instead, so a run's reconnect timeline can be reproduced.
"""

from __future__ import annotations

import contextlib
import os
import random
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.core.backoff import full_jitter
from agent.core.targets import StationId

SEED_ENV = "LOA_LINK_SEED"


class LinkError(RuntimeError):
    """The link cannot be set up (bad broker URL, unreadable TLS files)."""


@dataclass(frozen=True, slots=True)
class Connected:
    session_present: bool


@dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retained: bool


LinkEvent = Connected | Disconnected | Received


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def time_topic(station: StationId) -> str:
    return f"loa/v1/{station.province}/time"


def down_topics(station: StationId, *, with_time: bool = True) -> list[str]:
    """Section 2, down: exactly what the ACL lets this station read, with no overlaps (an
    overlapping pair would deliver each message twice). ``with_time=False`` leaves out the
    province's time beacon, which only a station with an untrusted clock needs."""
    p, c, s = station.province, station.commune, station.name
    topics = [
        f"loa/v1/{p}/playlist/+",
        f"loa/v1/{p}/{c}/playlist/+",
        f"loa/v1/{p}/{c}/{s}/playlist/+",
        f"loa/v1/{p}/release/+",
        f"loa/v1/{p}/{c}/release/+",
        f"loa/v1/{p}/{c}/{s}/release/+",
        f"loa/v1/{p}/keyring/+",
        f"loa/v1/{p}/cmd",
        f"loa/v1/{p}/{c}/cmd",
        f"loa/v1/{p}/{c}/{s}/cmd",
        f"loa/v1/{p}/time",
        f"loa/v1/{p}/{c}/{s}/ack",
    ]
    return topics if with_time else [t for t in topics if t != time_topic(station)]


# Retained messages: all of them at the first connect of a run (the station's state may be new:
# a replaced SD card, a factory reset, while the broker still holds its session), then only for
# a new subscription: a reconnect that finds its session (QoS 1 messages queued meanwhile) is
# not sent the keyring and playlists again, about 10 kB each time on a 4G plan
# (bench/results/telemetry_bytes.json). A lost session is a new subscription.
_SUBSCRIBE_FIRST = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
_SUBSCRIBE = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)


def parse_broker_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "mqtts" or not parts.hostname:
        raise LinkError(f"broker URL must be mqtts://host[:port], got {url!r}")
    return parts.hostname, parts.port or 8883


def reconnect_delay(
    attempt: int, rng: random.Random, *, base_s: float = 2.0, cap_s: float = 120.0
) -> float:
    """Seconds to wait before reconnect ``attempt`` (0 for the first after a drop): uniform
    between a floor and ``base * 2**attempt`` capped ("full jitter"). Even the first wait is
    random: when a broker restarts every station loses it in the same instant."""
    return full_jitter(attempt, rng, base_s=base_s, cap_s=cap_s, floor_s=0.5)


def jitter_rng(environ: Mapping[str, str] = os.environ) -> random.Random:
    """The reconnect jitter's random source: seeded from ``$LOA_LINK_SEED`` when it is set (a
    reproducible timeline), else the system's (stations must not share a sequence)."""
    seed = environ.get(SEED_ENV, "").strip()
    if not seed:
        return random.SystemRandom()
    try:
        return random.Random(int(seed))
    except ValueError:
        raise LinkError(f"{SEED_ENV} must be an integer, got {seed!r}") from None


def tls_client(
    client_id: str,
    tls: TlsFiles,
    *,
    reconnect_on_failure: bool = True,
    context: ssl.SSLContext | None = None,
) -> Client:
    """A paho client as every Loa party uses it: MQTT 5, callback API 2, mutual TLS (the
    broker's chain and host name checked). ``context``, when given, is the one the client uses,
    so its owner can change how later handshakes judge the certificate dates.

    Raises LinkError when the TLS files cannot be loaded (missing, unreadable, not matching)."""
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,  # the broker takes it from the certificate anyway
        protocol=MQTTProtocolVersion.MQTTv5,
        reconnect_on_failure=reconnect_on_failure,
    )
    context = context or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=str(tls.ca))
        context.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise LinkError(f"cannot load TLS files: {exc}") from exc
    client.tls_set_context(context)
    return client


NO_CHECK_TIME = 0x200000  # OpenSSL's X509_V_FLAG_NO_CHECK_TIME (not named by Python's ssl)


def judge_certificate_dates(context: ssl.SSLContext, clock_trusted: bool) -> None:
    """Whether later handshakes check the certificates' dates. On an untrusted clock (a Pi
    booted at 1970) every certificate is "not yet valid": the station could never reach the
    broker that brings the signed time beacon that would fix its clock (section 9). Then only
    the dates are skipped (chain and host name are still checked), as chrony's
    ``nocerttimecheck`` does; everything the station acts on is signed end to end anyway."""
    flags = context.verify_flags
    if clock_trusted:
        context.verify_flags = flags & ~NO_CHECK_TIME
    else:
        context.verify_flags = flags | NO_CHECK_TIME


class Link:
    def __init__(
        self,
        station: StationId,
        broker_urls: Sequence[str],
        tls: TlsFiles,
        deliver: Callable[[LinkEvent], None],
        *,
        will_payload: bytes,
        keepalive_s: int = 120,
        will_delay_s: int = 60,
        session_expiry_s: int = 600,
        reconnect_base_s: float = 2.0,
        reconnect_cap_s: float = 120.0,
        rng: random.Random | None = None,
    ) -> None:
        if not broker_urls:
            raise LinkError("no broker URL configured")
        self.station = station
        self.brokers = [parse_broker_url(url) for url in broker_urls]
        self._deliver = deliver
        self._keepalive = keepalive_s
        self._session_expiry = session_expiry_s
        self._reconnect_base = reconnect_base_s
        self._reconnect_cap = reconnect_cap_s
        self._rng = rng or jitter_rng()
        self._stopping = threading.Event()
        self._attempt = 0  # attempts since the last connection that worked
        self._session_up = False  # this connection got a CONNACK that was not a refusal
        self.connected = False
        # The time beacon costs every station about 1.4 MB a day (one a minute); a station
        # whose clock is trusted does not need it. Set from the runtime's thread.
        self.want_time = True
        self._time_subscribed = False
        self._retained_seen = False  # this run has had every retained message once
        self.broker_index = 0  # the broker tried next, or connected to now
        self._tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client = tls_client(station.path, tls, context=self._tls_context)
        will_props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
        will_props.WillDelayInterval = will_delay_s
        client.will_set(self.state_topic, will_payload, qos=1, retain=True, properties=will_props)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    @property
    def state_topic(self) -> str:
        return f"{self.station.prefix}/state"

    def start(self) -> None:
        # paho's own thread runs the network (``loop_start``: publishing from another thread is
        # only safe then); the link steers the retries from paho's callbacks: which broker next
        # (``connect_async``) and how long to wait before it (``reconnect_delay_set``).
        self._plan_retry(failed=False, first=True)
        self._client.loop_start()

    def _plan_retry(self, failed: bool, first: bool = False) -> None:
        """After a drop or a failed attempt: the same broker if it had worked, else the next
        one; and a jittered wait that grows with each attempt that did not work."""
        if self._stopping.is_set():
            return
        if failed:
            self.broker_index = (self.broker_index + 1) % len(self.brokers)
        else:
            self._attempt = 0
        delay = reconnect_delay(
            self._attempt, self._rng, base_s=self._reconnect_base, cap_s=self._reconnect_cap
        )
        self._attempt += 0 if first else 1
        # min = max = this delay: paho then waits exactly that long (it doubles only its own).
        self._client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]
        host, port = self.brokers[self.broker_index]
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry
        self._client.connect_async(
            host, port, keepalive=self._keepalive, clean_start=False, properties=props
        )

    def resync(self) -> None:
        """Ask the broker for every retained message again (a subscription renewed with
        "send retained"): after a flood the broker may have dropped, from this station's full
        queue, a playlist or keyring published meanwhile; retained, it is still there to take.
        What the station holds already costs a no-op verification each."""
        if not self.connected:
            return  # the next connect subscribes anew
        topics = down_topics(self.station, with_time=self._time_subscribed)
        self._client.subscribe([(topic, _SUBSCRIBE_FIRST) for topic in topics])

    def set_clock_trusted(self, trusted: bool) -> None:
        """The station's judgement of its clock, for the next handshake's certificate dates."""
        judge_certificate_dates(self._tls_context, trusted)

    def set_want_time(self, wanted: bool) -> None:
        """Subscribe to the time beacon while the clock is untrusted, not otherwise."""
        self.want_time = wanted
        if not self.connected or wanted == self._time_subscribed:
            return
        topic = time_topic(self.station)
        if wanted:
            self._client.subscribe([(topic, _SUBSCRIBE)])
        else:
            self._client.unsubscribe(topic)
        self._time_subscribed = wanted

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Queue a QoS 1 publish; False when not connected (the outbox keeps the report)."""
        if not self.connected:
            return False
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def stop(self, last_words: bytes | None = None, timeout_s: float = 5.0) -> None:
        """Say goodbye on ``state`` (a clean disconnect suppresses the Will), then close."""
        self._stopping.set()
        if last_words is not None and self.connected:
            info = self._client.publish(self.state_topic, last_words, qos=1, retain=True)
            # Not connected any more: the Will says it for us.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()

    # paho callbacks: run on paho's thread, enqueue only -----------------------------------

    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._session_up = False
            self._deliver(Disconnected(f"connect refused: {reason_code}"))
            return
        self.connected = True
        self._session_up = True
        # Renewed on every connect: a broker that lost the session still serves us.
        want_time = self.want_time
        topics = down_topics(self.station, with_time=want_time)
        options = _SUBSCRIBE if self._retained_seen else _SUBSCRIBE_FIRST
        client.subscribe([(topic, options) for topic in topics])
        self._retained_seen = True
        if not want_time:
            client.unsubscribe(time_topic(self.station))  # a kept session may still have it
        self._time_subscribed = want_time
        self._deliver(Connected(bool(flags.session_present)))

    def _on_connect_fail(self, client: Client, userdata: Any) -> None:
        host, port = self.brokers[self.broker_index]
        self._deliver(Disconnected(f"cannot reach {host}:{port}"))
        self._plan_retry(failed=True)

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected = False
        self._deliver(Disconnected(str(reason_code)))
        self._plan_retry(failed=not self._session_up)
        self._session_up = False

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        self._deliver(Received(message.topic, bytes(message.payload), bool(message.retain)))
