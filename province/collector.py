"""The report collector: what stations say comes in here, is checked, stored, and receipted.

This module owns the province's side of PROTOCOL.md section 7: it subscribes as the province
operator to every station's ``telemetry`` and ``state`` topics, refuses what it cannot attribute
or believe (recording why in the registry's ``refused`` table), stores the rest once per
(station, kind, seq), and publishes each station's receipt watermarks to its ``ack`` topic.

Concurrency: paho's network thread only puts messages on a queue; one worker thread takes them
off, owns every registry write, and sends the receipts. While the collector runs, the registry
it was given belongs to that thread. ``ReportIntake`` is the part without MQTT (checks and
storage), so it can be tested on its own.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.core import strict
from agent.core.codes import Rejected
from agent.core.dsse import parse_envelope
from agent.core.reports import ASRUN_TYPE, to_bytes
from agent.core.targets import StationId
from agent.core.timefmt import format_rfc3339
from agent.link import LinkError, TlsFiles, tls_client
from agent.outbox import KINDS
from province.errors import ProvinceError
from province.registry import Registry, StationRecord, received_at_text
from province.signer import Signer
from province.signing import canonical_json, sign_body

log = logging.getLogger("loa.province.collector")

# PROTOCOL.md section 3's envelope cap; an as-run is far smaller, but the broker already lets
# nothing larger through, so the cap here only guards the parser.
ENVELOPE_CAP = 3 * 1024 * 1024
RECEIPT_INTERVAL_S = 1.0
QUEUE_SIZE = 10_000
# Several collectors split the stations' telemetry through one MQTT 5 shared subscription.
SHARE_GROUP = "loa-collectors"
# A hole in a station's seqs that lasts this long is not reordering (shared subscriptions
# deliver round-robin, so reports arrive out of order) but a loss: ask the station to resync.
GAP_GRACE_S = 60.0
RESYNC_EVERY_S = 600.0  # at most one resync per station this often
RESYNC_VALID_S = 900.0

# What happened to one message (``Handled.outcome``).
STORED, DUPLICATE, CONFLICT, STATE, IGNORED, REFUSED = (
    "stored", "duplicate", "conflict", "state", "ignored", "refused",
)  # fmt: skip
# A station resending what is already stored lost our receipt: it gets one again, or it keeps
# those reports in its outbox (and resends them) forever.
_RECEIPTED = frozenset({STORED, DUPLICATE, CONFLICT})


class CollectorError(ProvinceError):
    """The collector cannot be set up (unreadable TLS files)."""


class _Refuse(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


@dataclass(frozen=True, slots=True)
class Handled:
    """The intake's verdict on one message."""

    topic: str
    station: str | None  # None when the topic names no station
    kind: str | None  # heartbeat | asrun | event | state
    outcome: str
    reason: str | None = None  # "code: detail" for refused (and conflicting) messages
    seq: int | None = None
    watermark: int | None = None

    @property
    def wants_receipt(self) -> bool:
        return self.outcome in _RECEIPTED


def utc_now() -> datetime:
    return datetime.now(UTC)


def resync_body(province: str, station: str, issued: datetime, valid_s: float) -> bytes:
    """A ``resync`` command for one station (role ``maintenance``), with a fresh id."""
    doc = {
        "kind": "command", "schema": 1,
        "id": f"resync-{issued.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}",
        "issuer": province, "target": station,
        "issued_at": format_rfc3339(issued),
        "expires": format_rfc3339(issued + timedelta(seconds=valid_s)),
        "action": "resync",
    }  # fmt: skip
    return canonical_json(doc)


class ReportIntake:
    """Checks one message from a station and stores it; no MQTT, no threads.

    Order of checks: the topic names a station of this province; the station is enrolled and
    not revoked; an as-run is a DSSE envelope of the as-run type whose signature verifies with
    the station's registered key (from then on only the verified payload is used); the body is
    strict JSON whose ``kind`` and ``station`` match the topic and whose ``seq`` is an integer
    from 0. Deeper body checks (the as-run schema) are deliberately not made here: a signed
    report refused for a missing field would hold that kind's watermark forever, and coverage
    already skips as-runs it cannot read.
    """

    def __init__(
        self, registry: Registry, province: str, now: Callable[[], datetime] = utc_now
    ) -> None:
        self.registry = registry
        self.province = province
        self._now = now

    def handle(self, topic: str, payload: bytes) -> Handled:
        """Judge and store one message; refusals are recorded, never raised. Registry
        failures (sqlite3.Error) propagate: the caller decides whether to go on."""
        received_at = received_at_text(self._now())
        station: StationId | None = None
        kind: str | None = None
        try:
            station, kind = self._parse_topic(topic)
            record = self._enrolled(station)
            if kind == "state":
                return self._state(topic, station, payload, received_at)
            return self._report(topic, record, kind, payload, received_at)
        except _Refuse as refusal:
            reason = str(refusal)
            self.registry.refuse(topic, reason, payload, received_at)
            path = None if station is None else station.path
            return Handled(topic, path, kind, REFUSED, reason)

    def _parse_topic(self, topic: str) -> tuple[StationId, str]:
        parts = topic.split("/")
        if parts[:2] != ["loa", "v1"]:
            raise _Refuse("bad-topic", f"not a loa/v1 topic: {topic[:200]!r}")
        if len(parts) == 6 and parts[5] == "state":
            kind = "state"
        elif len(parts) == 7 and parts[5] == "telemetry" and parts[6] in KINDS:
            kind = parts[6]
        else:
            raise _Refuse("bad-topic", f"not a station's state or telemetry topic: {topic[:200]!r}")
        try:
            station = StationId(parts[2], parts[3], parts[4])
        except ValueError as exc:
            raise _Refuse("bad-topic", str(exc)) from exc
        if station.province != self.province:
            raise _Refuse("wrong-province", f"{station.path} is not in province {self.province}")
        return station, kind

    def _enrolled(self, station: StationId) -> StationRecord:
        record = self.registry.lookup_station(station.path)
        if record is None:
            raise _Refuse("unknown-station", f"{station.path} is not enrolled")
        if record.revoked_at is not None:
            raise _Refuse("revoked-station", f"{station.path} was revoked {record.revoked_at}")
        return record

    def _state(self, topic: str, station: StationId, payload: bytes, received_at: str) -> Handled:
        if not payload:
            # An empty retained message deletes the retained state; it says nothing new.
            return Handled(topic, station.path, "state", IGNORED)
        doc = _json_object(payload)
        if doc.get("station") != station.path:
            raise _Refuse("wrong-station", f"state names {doc.get('station')!r}")
        online = doc.get("online")
        if not isinstance(online, bool):
            raise _Refuse("schema", "state has no boolean 'online'")
        self.registry.set_station_state(station.path, online, payload, received_at)
        return Handled(topic, station.path, "state", STATE)

    def _report(
        self, topic: str, record: StationRecord, kind: str, payload: bytes, received_at: str
    ) -> Handled:
        station = record.id.path
        envelope: bytes | None = None
        body = payload
        if kind == "asrun":
            envelope, body = payload, _verified_asrun(payload, record)
        doc = _json_object(body)
        if doc.get("kind") != kind:
            raise _Refuse("wrong-kind", f"body kind {doc.get('kind')!r} on a {kind} topic")
        if doc.get("station") != station:
            raise _Refuse("wrong-station", f"body names station {doc.get('station')!r}")
        seq = doc.get("seq")
        if not _is_int(seq) or seq < 0:
            raise _Refuse("bad-seq", f"seq must be an integer from 0, got {seq!r}")
        session = doc.get("session")
        result = self.registry.store_report(
            station, kind, seq, session if _is_int(session) else None, body, envelope, received_at
        )
        if result.conflict:
            # Same seq, other bytes: the station lost its counter (a reset outbox). The first
            # report stays; this one is kept in `refused` so a person can look.
            reason = f"seq-conflict: {kind} seq {seq} is stored with other content"
            self.registry.refuse(topic, reason, payload, received_at)
            return Handled(topic, station, kind, CONFLICT, reason, seq, result.watermark)
        if result.stored and kind == "event" and doc.get("code") == "reports-dropped":
            self._record_lost(station, doc, received_at)
        outcome = STORED if result.stored else DUPLICATE
        return Handled(topic, station, kind, outcome, None, seq, result.watermark)

    def _record_lost(self, station: str, doc: dict[str, Any], received_at: str) -> None:
        """The station's outbox dropped reports unsent (agent/outbox.py's retention policy):
        that range will never come, so it must not hold the watermark (and with it the
        station's outbox) forever. Kept in ``lost``, so coverage can say "lost", not "silent"."""
        kind, first, last = doc.get("report_kind"), doc.get("first_seq"), doc.get("last_seq")
        if kind in KINDS and _is_int(first) and _is_int(last) and 0 <= first <= last:
            self.registry.record_lost(station, kind, first, last, received_at)
        else:
            log.warning("%s: reports-dropped event without a usable range: %s", station, doc)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        doc = strict.loads(data)
    except strict.StrictDecodeError as exc:
        raise _Refuse("bad-json", str(exc)) from exc
    if not isinstance(doc, dict):
        raise _Refuse("bad-json", "body is not a JSON object")
    return doc


def _verified_asrun(payload: bytes, record: StationRecord) -> bytes:
    """The as-run body, if the envelope is signed by the station's registered key."""
    try:
        envelope = parse_envelope(payload, ENVELOPE_CAP)
    except Rejected as exc:
        raise _Refuse(str(exc.code), exc.detail) from exc
    if envelope.payload_type != ASRUN_TYPE:
        raise _Refuse("wrong-payload-type", f"{envelope.payload_type[:100]!r} on an asrun topic")
    try:
        public = bytes.fromhex(record.signing_public)
    except ValueError as exc:
        raise _Refuse("bad-signature", "the registry's signing key is not hex") from exc
    if not any(envelope.verifies_with(public, sig) for sig in envelope.signatures):
        raise _Refuse("bad-signature", f"not signed by the key registered for {record.id.path}")
    return envelope.body


# -- the MQTT side -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Inbound:
    topic: str
    payload: bytes


_STOP = object()


@dataclass
class CollectorStats:
    """Counters for tests and the operator's log line; a snapshot, not live."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    states: int = 0
    receipts: int = 0
    errors: int = 0  # messages the worker could not handle (registry failures, bugs)
    resyncs: int = 0  # resync commands sent to stations with a lasting hole in their seqs
    connected: bool = False
    refused_codes: dict[str, int] = field(default_factory=dict)
    watermarks: dict[str, dict[str, int]] = field(default_factory=dict)


class Collector:
    """Subscribes as the province operator and runs the intake on one worker thread."""

    def __init__(
        self,
        registry: Registry,
        host: str,
        port: int,
        tls: TlsFiles,
        province: str,
        *,
        receipt_interval_s: float = RECEIPT_INTERVAL_S,
        session_expiry_s: int = 86_400,
        keepalive_s: int = 60,
        now: Callable[[], datetime] = utc_now,
        client_id: str | None = None,
        share_group: str | None = SHARE_GROUP,
        resync_signer: Signer | None = None,
        gap_grace_s: float = GAP_GRACE_S,
        resync_every_s: float = RESYNC_EVERY_S,
    ) -> None:
        self.province = province
        self.intake = ReportIntake(registry, province, now)
        self._now = now
        self._share_group = share_group
        self._resync_signer = resync_signer
        self._gap_grace = gap_grace_s
        self._resync_every = resync_every_s
        self._gappy: dict[str, float] = {}  # station -> monotonic time a hole was first seen
        self._last_resync: dict[str, float] = {}
        self._host, self._port = host, port
        self._receipt_interval = receipt_interval_s
        # A persistent session makes the broker queue reports while the collector is down;
        # stations resend unreceipted reports only when they reconnect themselves.
        self._session_expiry = session_expiry_s
        self._keepalive = keepalive_s
        self._queue: queue.Queue[_Inbound | object] = queue.Queue(QUEUE_SIZE)
        self._lock = threading.Lock()
        self._stats = CollectorStats()
        self._subscribed = threading.Event()
        self._connected = False
        self._dirty: set[str] = set()  # stations owed a receipt
        self._last_receipt: dict[str, float] = {}  # station -> monotonic time of the last one
        self._worker: threading.Thread | None = None
        try:
            client = tls_client(client_id or f"province-{province}", tls)
        except LinkError as exc:
            raise CollectorError(f"the operator's identity: {exc}") from exc
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client

    @property
    def topics(self) -> list[str]:
        """Telemetry through the shared subscription (each report reaches one collector of
        the group); ``state`` directly, because a shared subscription gets no retained message
        and every collector wants each station's last birth or Will when it starts."""
        p = self.province
        telemetry = f"loa/v1/{p}/+/+/telemetry/#"
        if self._share_group:
            telemetry = f"$share/{self._share_group}/{telemetry}"
        return [telemetry, f"loa/v1/{p}/+/+/state"]

    def start(self) -> None:
        if self._worker is not None:
            raise RuntimeError("collector already started")
        self._worker = threading.Thread(target=self._work, name="loa-collector", daemon=True)
        self._worker.start()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry
        self._client.connect_async(
            self._host,
            self._port,
            keepalive=self._keepalive,
            clean_start=self._session_expiry == 0,
            properties=props,
        )
        self._client.loop_start()

    def wait_ready(self, timeout_s: float) -> bool:
        """True once connected and subscribed (a report published before that may be lost)."""
        return self._subscribed.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Handle what is queued, send the receipts owed, then disconnect."""
        worker, self._worker = self._worker, None
        if worker is not None:
            self._queue.put(_STOP)
            worker.join(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()

    def stats(self) -> CollectorStats:
        with self._lock:
            s = self._stats
            return dataclasses.replace(
                s,
                connected=self._connected,
                refused_codes=dict(s.refused_codes),
                watermarks={station: dict(marks) for station, marks in s.watermarks.items()},
            )

    # the worker thread ------------------------------------------------------------------------

    def _work(self) -> None:
        stopping = False
        while not stopping:
            try:
                item = self._queue.get(timeout=self._wait_s())
            except queue.Empty:
                item = None
            # Drain what is already queued before receipting: a burst gets one receipt.
            while item is not None:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, _Inbound):
                    self._process(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            self._send_receipts(force=stopping)
            self._chase_gaps()

    def _wait_s(self) -> float | None:
        if self._gappy and not self._dirty:
            return self._gap_grace / 4
        if not self._dirty:
            return None
        if not self._connected:
            return self._receipt_interval  # look again later, without spinning
        now = time.monotonic()
        due = min(self._last_sent(s) + self._receipt_interval for s in self._dirty)
        return max(0.0, due - now) + 0.001

    def _last_sent(self, station: str) -> float:
        return self._last_receipt.get(station, float("-inf"))

    def _process(self, item: _Inbound) -> None:
        try:
            handled = self.intake.handle(item.topic, item.payload)
        except Exception:
            # A bad message or a failing disk must never end the worker; the station resends
            # what is not receipted.
            log.exception("could not handle a message on %s", item.topic)
            with self._lock:
                self._stats.received += 1
                self._stats.errors += 1
            return
        with self._lock:
            s = self._stats
            s.received += 1
            if handled.outcome == STORED:
                s.stored += 1
            elif handled.outcome in (DUPLICATE, CONFLICT):
                s.duplicates += 1
            elif handled.outcome == STATE:
                s.states += 1
            if handled.reason is not None:
                s.refused += 1
                code = handled.reason.partition(":")[0]
                s.refused_codes[code] = s.refused_codes.get(code, 0) + 1
            if handled.station and handled.kind and handled.watermark is not None:
                s.watermarks.setdefault(handled.station, {})[handled.kind] = handled.watermark
        if handled.outcome == REFUSED:
            log.warning("refused %s: %s", handled.topic, handled.reason)
        if handled.wants_receipt and handled.station is not None:
            self._dirty.add(handled.station)
            if handled.seq is not None and (
                handled.watermark is None or handled.seq > handled.watermark
            ):
                self._gappy.setdefault(handled.station, time.monotonic())

    def _chase_gaps(self) -> None:
        """Stations whose seqs have had a hole for ``gap_grace_s`` are asked to ``resync``
        (republish everything not receipted) by a command signed with the maintenance key;
        without a key the station's own resend (a few heartbeats later) fills the hole."""
        now = time.monotonic()
        for station, since in list(self._gappy.items()):
            if now - since < self._gap_grace:
                continue
            try:
                gaps = self.intake.registry.gaps(station)
            except Exception:
                log.exception("cannot read the gaps of %s", station)
                continue
            if not gaps:
                del self._gappy[station]
                continue
            self._gappy[station] = now  # look again after another grace period
            last = self._last_resync.get(station, float("-inf"))
            if self._resync_signer is None or not self._connected:
                continue
            if now - last < self._resync_every:
                continue
            log.info("%s: seqs missing %s, asking for a resync", station, gaps)
            if self._send_resync(station):
                self._last_resync[station] = now
                with self._lock:
                    self._stats.resyncs += 1

    def _send_resync(self, station: str) -> bool:
        assert self._resync_signer is not None
        issued = self._now()
        body = resync_body(self.province, station, issued, RESYNC_VALID_S)
        try:
            envelope = sign_body(body, [self._resync_signer])
        except Exception:
            log.exception("cannot sign a resync for %s", station)
            return False
        info = self._client.publish(f"loa/v1/{station}/cmd", envelope, qos=1)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _send_receipts(self, force: bool = False) -> None:
        if not self._connected:
            return  # kept dirty; stations resend after they reconnect anyway
        now = time.monotonic()
        for station in sorted(self._dirty):
            if not force and now - self._last_sent(station) < self._receipt_interval:
                continue
            try:
                marks = self.intake.registry.watermarks(station)
            except Exception:
                log.exception("cannot read the watermarks of %s", station)
                continue
            if not marks:
                self._dirty.discard(station)  # nothing contiguous from 0 yet: nothing to say
                continue
            info = self._client.publish(f"loa/v1/{station}/ack", to_bytes(marks), qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.warning("receipt to %s not sent: rc %s", station, info.rc)
                continue
            self._dirty.discard(station)
            self._last_receipt[station] = now
            with self._lock:
                self._stats.receipts += 1

    # paho callbacks: paho's network thread, enqueue and flag only ---------------------------

    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the collector: %s", reason_code)
            return
        with self._lock:
            self._connected = True
        # Renewed on every connect: a broker that lost the session still serves us.
        client.subscribe([(topic, 1) for topic in self.topics])

    def _on_subscribe(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("subscription refused (ACL?): %s", ", ".join(failed))
            return
        self._subscribed.set()

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._connected = False
        self._subscribed.clear()
        log.info("collector disconnected: %s", reason_code)

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        # Blocks when the worker is far behind: paho stops reading, TCP pushes back.
        self._queue.put(_Inbound(message.topic, bytes(message.payload)))
