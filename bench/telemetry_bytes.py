"""Telemetry bytes per day: what one station's MQTT link carries in a day at the default
settings, counted at the TCP socket, against a budget of 1 MB (10^6 bytes) a day.

Real parts: a real mosquitto with mutual TLS and the ACL from the registry
(``tests.harness.broker``), a real ``province.collector.Collector`` with a SQLite registry that
stores the reports and sends the receipts, and real ``loa-agent run`` processes (``LOA_HAL=sim``,
``tests.harness.station_proc``), each provisioned with ``loa-provision``'s own code and talking
to the broker through its own counting proxy (``tests.harness.tcp_proxy``). The proxy counts
every byte the station's socket sends and receives: TLS records, MQTT keepalives, PUBACKs, the
collector's receipts and their PUBACKs, reconnects. IP and TCP headers are not in the count (a
data plan also bills them; ``detail.estimated_ip_bytes_per_day`` adds 52 bytes per estimated
segment as a rough guide). Media downloads are not on this link and not counted.

A day cannot be run, so each thing the link does is measured on the wire several times, and
the day is composed from the unit costs:

- ``reconnect``: a new connection after the old one was cut: TCP, TLS handshake, CONNECT,
  SUBSCRIBE, whatever retained messages the broker delivers again (keyring, the province
  playlist, the time beacon) and what the station says about them, its birth, its heartbeat
  on connect, receipts;
- ``heartbeat``: one heartbeat, its PUBACK, the collector's receipt and the station's PUBACK
  (agent run with a short heartbeat and a long keepalive);
- ``ping``: one PINGREQ/PINGRESP (agent run with a 5 s keepalive and no heartbeat);
- ``time_beacon``: one signed time beacon from the province (PROTOCOL.md section 9) delivered
  to the station, and whatever the station says about it, with the receipts (0 bytes when the
  station is not subscribed to it);
- ``playlist_update``: a new playlist of 10 slots and 10 new media delivered, and the events
  the station sends about it (accepted, each medium cached);
- ``asrun``: one slot played and its signed as-run, receipted.

``bytes_per_day = sum(count_per_day x unit bytes)`` with the agent's defaults, read from
``agent.config`` at run time, never written here: heartbeats ``86400 / heartbeat_s``; pings
``86400 / keepalive_s`` (paho pings on schedule even on a busy link); time beacons
``86400 / every`` with the province's default ``loa-province time-beacon --every``;
``RECONNECTS_PER_DAY`` reconnects (an assumption: a 4G link whose carrier NAT or radio drops the
connection once an hour); one playlist update and ``SLOTS_PER_DAY`` as-runs. The cross-check
runs an agent with the defaults for a window (10 minutes; 60 s with ``--quick``), the time
beacon at its default interval and one cut in the middle, and compares the bytes measured with
the model's prediction for that window (by rates, and by the counts actually seen).

    .venv/bin/python -m bench.telemetry_bytes [--quick] [--window-s S] [--results DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.config import Config, load_config
from agent.core.targets import StationId
from agent.link import TlsFiles, tls_client
from bench.common import RESULTS, machine_info, make_tone, write_result
from province import cli_time
from province.collector import Collector
from province.mosquitto import find_mosquitto
from province.publish import route
from province.registry import Registry
from provisioning.init import InitRequest, provision
from tests.harness.broker import MosquittoBroker, Recorder, close_client, connect_client
from tests.harness.media_server import MediaServer
from tests.harness.station_proc import StationProcess
from tests.harness.tcp_proxy import UP, Chunk, ProxyStats, TcpProxy
from tests.harness.trust import VECTORS, envelope, playlist_body

COMMAND = ".venv/bin/python -m bench.telemetry_bytes"
DAY_S = 86_400
TARGET = 1_000_000  # bytes a day: the budget of a station's data plan for telemetry
RECONNECTS_PER_DAY = 24  # assumption: the 4G link drops once an hour (NAT timeout, radio)
SLOTS_PER_DAY = 10  # a typical commune day: news, announcements, music, each once
PLAYLIST_UPDATES_PER_DAY = 1  # the province publishes tomorrow's playlist once a day
HEARTBEAT_GRID = (60, 300, 900)
KEEPALIVE_GRID = (60, 120, 300, 600)
LONG_S = 3600  # broker.keepalive_s's maximum: no keepalive traffic in a phase
NO_HEARTBEAT_S = 86_400  # reports.heartbeat_s's maximum: no heartbeat in a phase
SEGMENT_PAYLOAD = 1448  # TCP payload of a 1500-byte MTU segment with timestamps
SEGMENT_HEADERS = 52  # IPv4 20 + TCP 20 + timestamps 12
PROVINCE = "25"
OPERATOR = "province-25"  # the collector's identity, as in production
PUBLISHER = "province-25-ops"  # the bench's publishing identity, apart from the collector's
PROBE = "25/08230/08230-99"  # a station identity that only connects (TLS handshake bytes)
ROLES = {  # role -> station: each role runs its own agent through its own proxy
    "units": "25/08230/08230-01",  # reconnects, then time beacons
    "day": "25/08230/08230-02",  # a playlist update and the slots it brings
    "heartbeat": "25/08230/08230-03",
    "keepalive": "25/08230/08230-04",
    "defaults": "25/08230/08230-05",  # the cross-check
}
HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
STARTUP_S = 30.0  # an agent's first connection and its first exchanges, on a loaded machine
SILENT_S = 5.0  # a message the station takes reaches it within this, even on a loaded machine


@dataclass(frozen=True)
class Mode:
    reconnects: int
    updates: int
    heartbeats: int
    beacons: int
    slots_played: int
    ping_window_s: float
    window_s: float
    quiet_s: float  # no byte for this long: an exchange is over (receipts come within 1 s)
    heartbeat_test_s: int
    slot_spacing_s: float


FULL = Mode(reconnects=5, updates=3, heartbeats=10, beacons=10, slots_played=10, ping_window_s=60.0,
            window_s=600.0, quiet_s=2.5, heartbeat_test_s=6, slot_spacing_s=4.0)  # fmt: skip
QUICK = Mode(reconnects=2, updates=1, heartbeats=3, beacons=3, slots_played=2, ping_window_s=16.0,
             window_s=60.0, quiet_s=1.8, heartbeat_test_s=5, slot_spacing_s=3.5)  # fmt: skip


# -- units and the model ----------------------------------------------------------------------


@dataclass
class Unit:
    """Bytes of one kind of exchange, one entry per repetition."""

    name: str
    what: str
    up: list[int] = field(default_factory=list)
    down: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    reports: list[dict[str, int]] = field(default_factory=list)  # reports stored, by kind

    def add(self, used: ProxyStats, chunks: list[Chunk], reports: dict[str, int]) -> None:
        self.up.append(used.up)
        self.down.append(used.down)
        self.segments.append(segments(chunks))
        self.reports.append(reports)

    @property
    def totals(self) -> list[int]:
        return [u + d for u, d in zip(self.up, self.down, strict=True)]

    @property
    def bytes(self) -> float:
        return float(statistics.median(self.totals))

    def summary(self) -> dict[str, Any]:
        totals = self.totals
        return {
            "what": self.what,
            "n": len(totals),
            "bytes_median": round(self.bytes, 1),
            "bytes_min": min(totals),
            "bytes_max": max(totals),
            "up_median": statistics.median(self.up),
            "down_median": statistics.median(self.down),
            "segments_median": statistics.median(self.segments),
            "bytes_each": totals,
            "reports_stored_each": self.reports,
        }


def segments(chunks: list[Chunk]) -> int:
    """Estimated TCP segments on a 1500-byte-MTU link for the recorded chunks."""
    return sum(math.ceil(c.size / SEGMENT_PAYLOAD) for c in chunks if not c.dropped)


@dataclass(frozen=True)
class Intervals:
    heartbeat_s: float
    keepalive_s: float
    beacon_every_s: float | None  # None: the province sends no time beacon
    will_delay_s: int = 0
    session_expiry_s: int = 0


def pings_per_day(iv: Intervals) -> float:
    """One PINGREQ every ``keepalive_s``, whatever else the link carries: paho 2.2 refreshes
    its "last packet out" time only when it sends a ping (``_packet_write`` returns before the
    update once its queue is empty), so it pings on schedule even while it publishes
    (eclipse-paho/paho.mqtt.python issue 813). The cross-check window sees it."""
    return DAY_S / iv.keepalive_s


def counts_per_day(iv: Intervals) -> dict[str, float]:
    return {
        "reconnect": float(RECONNECTS_PER_DAY),
        "heartbeat": DAY_S / iv.heartbeat_s,
        "ping": pings_per_day(iv),
        "time_beacon": DAY_S / iv.beacon_every_s if iv.beacon_every_s else 0.0,
        "playlist_update": float(PLAYLIST_UPDATES_PER_DAY),
        "asrun": float(SLOTS_PER_DAY),
    }


def compose(units: dict[str, Unit], iv: Intervals) -> dict[str, Any]:
    counts = counts_per_day(iv)
    breakdown = {}
    total = 0.0
    ip_total = 0.0
    for name, count in counts.items():
        unit = units[name]
        per_day = count * unit.bytes
        total += per_day
        ip_total += count * (unit.bytes + SEGMENT_HEADERS * statistics.median(unit.segments))
        breakdown[name] = {
            "count_per_day": round(count, 2),
            "bytes_per_unit": round(unit.bytes, 1),
            "bytes_per_day": round(per_day),
        }
    return {"bytes_per_day": round(total), "breakdown": breakdown, "ip_bytes": round(ip_total)}


# -- the rig: broker, collector, media, the province's publishing identity ----------------------


class Rig:
    """Everything but the agents; ``close()`` stops what was started."""

    def __init__(self, tmp: Path, stations: list[str]) -> None:
        self.tmp = tmp
        self._stack = contextlib.ExitStack()
        executable = find_mosquitto()
        if executable is None:
            raise RuntimeError("mosquitto is not installed (make sysdeps)")
        self.broker = MosquittoBroker(
            tmp / "broker", stations=stations,
            operators=[(OPERATOR, PROVINCE), (PUBLISHER, PROVINCE)], executable=executable,
        )  # fmt: skip
        self.broker.start()
        self._stack.callback(self.broker.stop)
        self.media = MediaServer()
        self._stack.callback(self.media.close)
        self.registry_path = tmp / "province" / "registry.db"
        self.registry = Registry(self.registry_path)
        self._stack.callback(self.registry.close)
        self.registry.set_meta("province", PROVINCE)
        self.collector: Collector | None = None
        self.publisher: Recorder | None = None

    def start_collector(self) -> None:
        """As ``loa-province collect`` runs it: the operator's identity, the defaults."""
        cert, key = self.broker.client_credentials(OPERATOR)
        tls = TlsFiles(self.broker.ca_path, cert, key)
        self.collector = Collector(self.registry, self.broker.host, self.broker.port, tls, PROVINCE)
        self.collector.start()
        self._stack.callback(self.collector.stop)
        if not self.collector.wait_ready(20):
            raise RuntimeError(f"the collector did not subscribe\n{self.broker.log_text()}")
        self.publisher = Recorder(connect_client(self.broker, PUBLISHER))
        self._stack.callback(close_client, self.publisher.client)

    def publish(self, signed: bytes) -> str:
        """Publish an envelope where ``loa-province publish`` would; wait for the PUBACK."""
        outgoing = route(signed, datetime.now(UTC))
        assert self.publisher is not None
        reason = self.publisher.publish(outgoing.topic, signed, retain=outgoing.retain)
        if reason.is_failure:
            raise RuntimeError(f"publishing {outgoing.topic} refused: {reason}")
        return outgoing.topic

    def beacon(self) -> int:
        """Publish a signed time beacon as ``loa-province time-beacon`` does; its size."""
        body = cli_time.beacon_body(PROVINCE, datetime.now(UTC))
        signed = envelope("time", body, "maintenance")
        self.publish(signed)
        return len(signed)

    def counts(self, station: str) -> dict[str, int]:
        """Reports of ``station`` stored in the registry, by kind (a reader of its own)."""
        db = sqlite3.connect(self.registry_path, timeout=30)
        try:
            rows = db.execute(
                "SELECT kind, COUNT(*) FROM report WHERE station = ? GROUP BY kind", (station,)
            ).fetchall()
        finally:
            db.close()
        return {kind: int(n) for kind, n in rows}

    def close(self) -> None:
        self._stack.close()


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    kinds = sorted(set(after) | set(before))
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in kinds if after.get(k, 0) != before.get(k, 0)
    }


# -- agents -----------------------------------------------------------------------------------


class Agent:
    """One provisioned station, its proxy, and its ``loa-agent run`` process."""

    def __init__(self, rig: Rig, role: str, station: str) -> None:
        self.rig = rig
        self.role = role
        self.station = station
        self.directory = rig.tmp / f"station-{role}"
        self.proxy = TcpProxy((rig.broker.host, rig.broker.port), record=True).start()
        self.process = StationProcess(self.directory, StationId.parse(station))
        result = provision(
            InitRequest(
                StationId.parse(station), (VECTORS / "keyring-v1.json").read_bytes(),
                self.directory, brokers=(f"mqtts://127.0.0.1:{self.proxy.port}",),
                clock_trust="system",
            ),
            datetime.now(UTC),
        )  # fmt: skip
        keys = self.directory / "keys"
        (keys / "station.crt").write_bytes(rig.broker.sign_csr((keys / "station.csr").read_bytes()))
        (keys / "ca.crt").write_bytes(rig.broker.ca_path.read_bytes())
        rig.registry.add_station(
            StationId.parse(station), (keys / "station.crt").read_bytes(),
            (keys / "station.pub").read_text().strip(),
        )  # fmt: skip
        self.config_path = result.config_path
        self.provisioned = result.config_path.read_text()

    def configure(
        self,
        heartbeat_s: float | None = None,
        keepalive_s: int | None = None,
        reports: dict[str, float] | None = None,
    ) -> Config:
        """The provisioned config, tuned only where the bench needs it (sim audio and relays,
        media over loopback http) and where a phase isolates one exchange; everything else,
        the intervals included, stays at the agent's defaults."""
        text = self.provisioned
        text = text.replace("[audio]\n", '[audio]\noutput = "wav"\nwarmup_s = 0.2\nhold_s = 0.2\n')
        text = text.replace("[gpio]\n", "[gpio]\namp_pin = 17\n")
        text = text.replace("[gpio.zones]\n", "[gpio.zones]\nnorth = 27\nsouth = 22\n")
        if keepalive_s is not None:
            text = text.replace("[broker]\n", f"[broker]\nkeepalive_s = {keepalive_s}\n")
        text += "\n[media]\nallow_http = true\ntimeout_s = 10\n"
        lines = dict(reports or {})
        if heartbeat_s is not None:
            lines["heartbeat_s"] = heartbeat_s
        if lines:
            text += "\n[reports]\n" + "".join(f"{k} = {v}\n" for k, v in lines.items())
        self.config_path.write_text(text)
        env = {"LOA_HAL": "sim", "LOA_CLOCK_TRUST": "system"}
        return load_config(text, env, self.directory)

    def wait_started(self, quiet_s: float) -> None:
        """Wait until the started agent's first connection has said all it had to say."""
        deadline = time.monotonic() + STARTUP_S
        process = self.process.process
        assert process is not None
        while not self.rig.counts(self.station).get("heartbeat", 0):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{self.role}: no heartbeat stored\n{self.process.log_text()}")
            time.sleep(0.1)
        self.proxy.wait_quiet(quiet_s, STARTUP_S)

    def stop(self) -> None:
        if self.process.process is not None and self.process.process.poll() is None:
            self.process.stop()

    def close(self) -> None:
        self.stop()
        self.proxy.stop()


def parallel(*bodies: Callable[[], object]) -> None:
    """Run the bodies in threads at once; the first failure is raised here."""
    errors: list[BaseException] = []

    def guarded(body: Callable[[], object]) -> None:
        try:
            body()
        except BaseException as exc:  # handed to the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(b,), daemon=True) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def window(
    agent: Agent, unit: Unit, quiet_s: float, *, may_be_silent: bool = False
) -> Iterator[None]:
    """Bytes and reports from a quiet moment to the next quiet moment after the body ran. With
    ``may_be_silent``, a body that brings no traffic within ``SILENT_S`` counts as 0 bytes (a
    station that is not subscribed to what was published)."""
    rig = agent.rig
    start = agent.proxy.wait_quiet(quiet_s, STARTUP_S)
    t0 = time.monotonic()
    counts = rig.counts(agent.station)
    yield
    try:
        agent.proxy.wait_until(
            lambda s: s.total > start.total, SILENT_S if may_be_silent else STARTUP_S, "traffic"
        )
    except TimeoutError:
        if not may_be_silent:
            raise
    end = agent.proxy.wait_quiet(quiet_s, STARTUP_S)
    unit.add(end - start, agent.proxy.chunks(t0), diff(rig.counts(agent.station), counts))


# -- the phases ---------------------------------------------------------------------------------


def media_set(rig: Rig, tag: str, count: int, offset_hz: int = 0) -> dict[str, dict[str, Any]]:
    """``count`` half-second tones served over loopback http, as playlist media; sets with
    different ``offset_hz`` (below 40) share no medium."""
    media = {}
    for n in range(count):
        path = rig.tmp / f"{tag}-{n}.mp3"
        make_tone(path, 300 + 40 * n + offset_hz, 0.5, 0.5, mono_64k=True)
        data = path.read_bytes()
        name = f"{tag}-{n:02d}"
        media[name] = {
            "url": rig.media.add(f"/media/25/{name}.mp3", data),
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "duration_s": 0.5,
            "title": f"Bản tin {n}", "category": "news",
        }  # fmt: skip
    return media


def playlist(
    target: str, media: dict[str, dict[str, Any]], slots: list[dict[str, Any]],
    valid_from: datetime, version: int = 1,
) -> bytes:  # fmt: skip
    now = datetime.now(UTC).astimezone(HANOI)
    doc = playlist_body(
        target=target, version=version, media=media, slots=slots,
        issued_at=now.isoformat(timespec="seconds"),
        valid_from=valid_from.astimezone(HANOI).isoformat(timespec="seconds"),
        expires=(now + timedelta(days=9)).isoformat(timespec="seconds"),
    )  # fmt: skip
    return envelope("playlist", doc, "playlist")


def slot(n: int, item: str, at: datetime | None) -> dict[str, Any]:
    """A slot of one item: at an instant today (``at``), or every day at a fixed hour."""
    base: dict[str, Any] = {"id": f"slot-{n:02d}", "items": [item], "priority": 50,
                            "zones": ["all"], "volume": 80}  # fmt: skip
    if at is None:
        return {**base, "start": f"{5 + n:02d}:00", "days": ALL_DAYS}
    local = at.astimezone(HANOI)
    return {**base, "start": local.strftime("%H:%M:%S"), "dates": [local.date().isoformat()]}


def retained_set(rig: Rig) -> dict[str, int]:
    """What the province keeps retained for every station: the keyring, the province playlist
    (10 daily slots, starting in two days, so nothing plays during the bench), a time beacon.
    Returns each topic with its payload's size."""
    now = datetime.now(UTC)
    keyring = (VECTORS / "keyring-v1.json").read_bytes()
    media = media_set(rig, "week", SLOTS_PER_DAY)
    slots = [slot(n, name, None) for n, name in enumerate(media)]
    week = playlist(PROVINCE, media, slots, now + timedelta(days=2))
    sizes = {rig.publish(keyring): len(keyring), rig.publish(week): len(week)}
    sizes[f"loa/v1/{PROVINCE}/time"] = rig.beacon()
    return sizes


def tls_connect_bytes(rig: Rig, reps: int) -> list[int]:
    """Bytes of a bare connection through a proxy: TCP, the TLS handshake with a station's
    certificate, CONNECT/CONNACK, DISCONNECT; nothing subscribed, nothing published."""
    cert, key = rig.broker.client_credentials(PROBE)
    tls = TlsFiles(rig.broker.ca_path, cert, key)
    found: list[int] = []
    with TcpProxy((rig.broker.host, rig.broker.port)) as proxy:
        for _ in range(reps):
            before = proxy.stats()
            connect_once(proxy, tls)
            # Closed by both ends: every byte of the connection is counted.
            done = proxy.wait_until(closed_after(before), STARTUP_S, "the probe closed")
            found.append((done - before).total)
    return found


def closed_after(before: ProxyStats) -> Callable[[ProxyStats], bool]:
    return lambda s: s.opened > before.opened and s.active == 0


def connect_once(proxy: TcpProxy, tls: TlsFiles) -> None:
    client = tls_client(PROBE, tls)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.connect(proxy.host, proxy.port, keepalive=LONG_S)
    client.loop_start()
    try:
        if not connected.wait(STARTUP_S):
            raise RuntimeError("the probe could not connect")
    finally:
        client.disconnect()
        client.loop_stop()


def reconnect(agent: Agent) -> None:
    """Cut the station's connection and let it come back at once (paho retries after 1 s)."""
    opened = agent.proxy.stats().opened
    agent.proxy.cut()
    agent.proxy.restore()
    agent.proxy.wait_until(lambda s: s.opened > opened, STARTUP_S, "a new connection")


def wait_stored(agent: Agent, kind: str, what: str, timeout_s: float) -> None:
    """Wait until one more report of ``kind`` from the agent's station is stored."""
    rig, station = agent.rig, agent.station
    before = rig.counts(station).get(kind, 0)
    wait_for(lambda: rig.counts(station).get(kind, 0) > before, what, timeout_s)


def measure_reconnects(agent: Agent, mode: Mode, unit: Unit) -> None:
    for _ in range(mode.reconnects):
        with window(agent, unit, mode.quiet_s):
            reconnect(agent)
            # The heartbeat on connect is stored: the new session is under way.
            wait_stored(agent, "heartbeat", "the heartbeat on connect", STARTUP_S)


def measure_day(agent: Agent, mode: Mode, update: Unit, asrun: Unit) -> None:
    """``mode.updates`` new versions of the station's playlist, each with 10 slots and 10 new
    media; in the last one ``slots_played`` slots play within seconds, every other slot is
    tomorrow (its media are fetched all the same: they are within the lookahead)."""
    rig = agent.rig
    lead_s = 12.0
    for version in range(1, mode.updates + 1):
        media = media_set(rig, f"day{version}", SLOTS_PER_DAY, offset_hz=7 + 3 * version)
        last = version == mode.updates
        first = datetime.now(UTC) + timedelta(seconds=lead_s)
        slots = []
        for n, name in enumerate(media):
            if last and n < mode.slots_played:
                slots.append(slot(n, name, first + timedelta(seconds=n * mode.slot_spacing_s)))
            else:
                slots.append(slot(n, name, first + timedelta(days=1, seconds=n)))
        valid_from = datetime.now(UTC) - timedelta(hours=1)
        signed = playlist(agent.station, media, slots, valid_from, version)
        with window(agent, update, mode.quiet_s):
            rig.publish(signed)
    if datetime.now(UTC) > first - timedelta(seconds=1):
        raise RuntimeError("the playlist update was not over before the first slot: raise lead_s")
    # One window per as-run: the slots are far enough apart for each exchange to end.
    for n in range(mode.slots_played):
        with window(agent, asrun, mode.quiet_s):
            wait_stored(agent, "asrun", f"as-run {n}", lead_s + mode.slot_spacing_s * (n + 2))


def measure_beacons(agent: Agent, mode: Mode, unit: Unit) -> None:
    for _ in range(mode.beacons):
        # The agent may take the beacon only while its clock is untrusted.
        with window(agent, unit, mode.quiet_s, may_be_silent=True):
            agent.rig.beacon()
        if unit.totals[-1] == 0:
            return  # not subscribed: every other beacon would pass it by as well


def measure_heartbeats(agent: Agent, mode: Mode, unit: Unit) -> None:
    """Several heartbeat cycles in one window from quiet to quiet, divided by the count."""
    rig = agent.rig
    start = agent.proxy.wait_quiet(mode.quiet_s, STARTUP_S)
    t0 = time.monotonic()
    before = rig.counts(agent.station)
    want = before.get("heartbeat", 0) + mode.heartbeats
    wait_for(lambda: rig.counts(agent.station).get("heartbeat", 0) >= want, "heartbeats",
             mode.heartbeat_test_s * (mode.heartbeats + 3))  # fmt: skip
    end = agent.proxy.wait_quiet(mode.quiet_s, STARTUP_S)
    stored = diff(rig.counts(agent.station), before)
    n = stored.get("heartbeat", 0)
    used = end - start
    chunks = agent.proxy.chunks(t0)
    for _ in range(n):  # one entry per cycle: the window's bytes shared out evenly
        unit.up.append(round(used.up / n))
        unit.down.append(round(used.down / n))
        unit.segments.append(round(segments(chunks) / n))
    unit.reports.append(stored)


def measure_pings(agent: Agent, mode: Mode, unit: Unit) -> dict[str, Any]:
    """An agent with a 5 s keepalive and no heartbeat: everything on its link is keepalives."""
    start = agent.proxy.wait_quiet(1.0, STARTUP_S)
    t0 = time.monotonic()
    before = agent.rig.counts(agent.station)
    time.sleep(mode.ping_window_s)
    end = agent.proxy.wait_quiet(1.0, STARTUP_S)
    chunks = agent.proxy.chunks(t0)
    pings = [c for c in chunks if c.direction == UP]
    used = end - start
    if not pings:
        raise RuntimeError("no PINGREQ seen: is the keepalive set?")
    for _ in pings:
        unit.up.append(round(used.up / len(pings)))
        unit.down.append(round(used.down / len(pings)))
        unit.segments.append(round(segments(chunks) / len(pings)))
    unit.reports.append(diff(agent.rig.counts(agent.station), before))
    return {"pings": len(pings), "window_s": round(time.monotonic() - t0, 1),
            "sizes_up": sorted({c.size for c in pings}),
            "sizes_down": sorted({c.size for c in chunks if c.direction != UP})}  # fmt: skip


def cross_check(
    agent: Agent, mode: Mode, units: dict[str, Unit], iv: Intervals, ping_up_size: int
) -> dict[str, Any]:
    """An agent at the defaults for a window, the beacon at its default interval, one cut in
    the middle: bytes measured against the model's prediction for the same window."""
    rig = agent.rig
    start = agent.proxy.wait_quiet(mode.quiet_s, STARTUP_S)
    t0 = time.monotonic()
    before = rig.counts(agent.station)
    end_at = t0 + mode.window_s
    beacons = 0
    halt = threading.Event()

    def beacon_loop() -> None:
        nonlocal beacons
        every = iv.beacon_every_s
        next_at = t0
        while every and not halt.is_set() and next_at < end_at - 1:
            if halt.wait(max(0.0, next_at - time.monotonic())):
                return
            rig.beacon()
            beacons += 1
            next_at += every

    publisher = threading.Thread(target=beacon_loop, name="beacons", daemon=True)
    publisher.start()
    # The cut falls between two beacons, not on one.
    time.sleep(mode.window_s * 0.45)
    reconnect(agent)
    time.sleep(max(0.0, end_at - time.monotonic()))
    end = agent.proxy.stats()
    halt.set()
    publisher.join(30)
    used = end - start
    stored = diff(rig.counts(agent.station), before)
    chunks = [c for c in agent.proxy.chunks(t0) if c.at <= t0 + mode.window_s]
    pings = sum(1 for c in chunks if c.direction == UP and c.size == ping_up_size)
    reconnects = 1
    timer_heartbeats = max(0, stored.get("heartbeat", 0) - reconnects)
    w = mode.window_s
    by_rates = (
        w / iv.heartbeat_s * units["heartbeat"].bytes
        + w / DAY_S * pings_per_day(iv) * units["ping"].bytes
        + (w / iv.beacon_every_s * units["time_beacon"].bytes if iv.beacon_every_s else 0.0)
        + reconnects * units["reconnect"].bytes
    )
    by_counts = (
        timer_heartbeats * units["heartbeat"].bytes
        + pings * units["ping"].bytes
        + beacons * units["time_beacon"].bytes
        + reconnects * units["reconnect"].bytes
    )
    return {
        "window_s": w,
        "measured_bytes": used.total,
        "measured_up": used.up,
        "measured_down": used.down,
        "predicted_bytes_by_rates": round(by_rates),
        "ratio_measured_to_rates": round(used.total / by_rates, 3),
        "predicted_bytes_by_counts": round(by_counts),
        "ratio_measured_to_counts": round(used.total / by_counts, 3),
        "seen": {
            "heartbeats_on_timer": timer_heartbeats,
            "pings": pings,
            "time_beacons": beacons,
            "reconnects": reconnects,
            "reports_stored": stored,
        },
        "notes": (
            "by_rates: window x (1/interval) of each periodic exchange plus the one forced "
            "reconnect; by_counts: the exchanges actually seen in the window x unit bytes. "
            "A window shorter than the heartbeat interval makes by_rates coarse."
        ),
    }


def check_attribution(units: dict[str, Unit], mode: Mode, opened: dict[str, int]) -> list[str]:
    """What would make a unit's bytes belong to something else: a window that stored other
    reports than its own, or a connection nobody asked for (each one costs a reconnect)."""
    found = []
    expected = {"units": 1 + mode.reconnects, "defaults": 2}
    for role, count in opened.items():
        if count != expected.get(role, 1):
            found.append(f"{role}: {count} connections, expected {expected.get(role, 1)}")
    for n, stored in enumerate(units["reconnect"].reports):
        if stored.get("heartbeat") != 1 or set(stored) - {"heartbeat", "event"}:
            found.append(f"reconnect {n} stored {stored}")
    for n, stored in enumerate(units["asrun"].reports):
        if stored != {"asrun": 1}:
            found.append(f"as-run window {n} stored {stored}")
    for name in ("playlist_update", "time_beacon", "ping"):
        for n, stored in enumerate(units[name].reports):
            if set(stored) - {"event"}:
                found.append(f"{name} window {n} stored {stored}")
    return found


def beacon_default_every() -> float:
    """``loa-province time-beacon --every``'s default, read from its own parser."""
    parser = argparse.ArgumentParser()
    cli_time.register(parser.add_subparsers())
    args = parser.parse_args(["time-beacon", "--broker", "mqtts://x", "--key", "k"])
    return float(args.every)


def grid(units: dict[str, Unit], defaults: Intervals) -> list[dict[str, Any]]:
    rows = []
    for hb in HEARTBEAT_GRID:
        for ka in KEEPALIVE_GRID:
            with_beacon = replace(defaults, heartbeat_s=hb, keepalive_s=ka)
            without = replace(with_beacon, beacon_every_s=None)
            rows.append({
                "heartbeat_s": hb, "keepalive_s": ka,
                "bytes_per_day": compose(units, with_beacon)["bytes_per_day"],
                "bytes_per_day_without_time_beacon": compose(units, without)["bytes_per_day"],
            })  # fmt: skip
    return rows


def print_grid(rows: list[dict[str, Any]], beacon_every: float) -> None:
    print(f"bytes/day by (heartbeat_s, keepalive_s); time beacon every {beacon_every:g} s / none")
    print("heartbeat_s " + "".join(f"{'keepalive ' + str(ka):>24}" for ka in KEEPALIVE_GRID))
    for hb in HEARTBEAT_GRID:
        cells = []
        for ka in KEEPALIVE_GRID:
            row = next(r for r in rows if r["heartbeat_s"] == hb and r["keepalive_s"] == ka)
            cells.append(
                f"{row['bytes_per_day']:>11,} / {row['bytes_per_day_without_time_beacon']:>9,}"
            )
        print(f"{hb:>11} " + "".join(f"{c:>24}" for c in cells))


# -- the run ------------------------------------------------------------------------------------


def run(tmp: Path, mode: Mode, quick: bool) -> dict[str, Any]:
    started = time.monotonic()
    rig = Rig(tmp, [*ROLES.values(), PROBE])
    agents: dict[str, Agent] = {}
    try:
        for role, station in ROLES.items():
            agents[role] = Agent(rig, role, station)
        rig.start_collector()
        retained = retained_set(rig)
        tls_bytes = tls_connect_bytes(rig, 3)
        units = {
            "reconnect": Unit("reconnect", "connection cut, then: TCP+TLS handshake, CONNECT, "
                              "SUBSCRIBE, retained deliveries, events about them, birth, "
                              "heartbeat on connect, receipts"),
            "heartbeat": Unit("heartbeat", "heartbeat + PUBACK + the collector's receipt + PUBACK"),
            "ping": Unit("ping", "PINGREQ + PINGRESP"),
            "time_beacon": Unit("time_beacon", "signed time beacon delivered + PUBACK, the "
                                "station's event about it, receipts; 0 for a station that "
                                "is not subscribed to the beacon"),
            "playlist_update": Unit("playlist_update", f"a new playlist ({SLOTS_PER_DAY} slots, "
                                    f"{SLOTS_PER_DAY} new media) delivered, the events about "
                                    "it (accepted, each medium cached), receipts"),
            "asrun": Unit("asrun", "a slot played: signed as-run + PUBACK + receipt + PUBACK"),
        }  # fmt: skip
        defaults = agents["defaults"].configure()
        iv = Intervals(
            heartbeat_s=defaults.reports.heartbeat_s,
            keepalive_s=defaults.broker.keepalive_s,
            beacon_every_s=beacon_default_every(),
            will_delay_s=defaults.broker.will_delay_s,
            session_expiry_s=defaults.broker.session_expiry_s,
        )
        units_agent, day_agent = agents["units"], agents["day"]
        hb_agent, ka_agent = agents["heartbeat"], agents["keepalive"]
        # Reconnects come seconds apart here, an hour apart in the model: a flood gate that
        # counts repeated notices per window (if the agent has one) gets a 1 s window, so each
        # measured reconnect reports what an hourly one does.
        flood: dict[str, float] = {}
        if hasattr(defaults.reports, "rejection_window_s"):
            flood["rejection_window_s"] = 1
        units_agent.configure(heartbeat_s=NO_HEARTBEAT_S, keepalive_s=LONG_S, reports=flood)
        day_agent.configure(heartbeat_s=NO_HEARTBEAT_S, keepalive_s=LONG_S)
        hb_agent.configure(heartbeat_s=mode.heartbeat_test_s, keepalive_s=LONG_S)
        ka_agent.configure(heartbeat_s=NO_HEARTBEAT_S, keepalive_s=5)
        for agent in agents.values():
            agent.process.start()
        for agent in agents.values():
            agent.wait_started(mode.quiet_s)
        first = units_agent.proxy.connections()[0]
        boot = {"first_connection_bytes": first.up + first.down}
        phases = {"setup_s": round(time.monotonic() - started, 1)}
        # Phase 1: four agents at once, each through its own proxy; nothing province-wide is
        # published meanwhile, so none of them sees another's traffic.
        ping_info: dict[str, Any] = {}
        parallel(
            lambda: measure_reconnects(units_agent, mode, units["reconnect"]),
            lambda: measure_day(day_agent, mode, units["playlist_update"], units["asrun"]),
            lambda: measure_heartbeats(hb_agent, mode, units["heartbeat"]),
            lambda: ping_info.update(measure_pings(ka_agent, mode, units["ping"])),
        )
        for agent in (day_agent, hb_agent, ka_agent):
            agent.stop()
        phases["units_s"] = round(time.monotonic() - started - sum(phases.values()), 1)
        # Phase 2: a time beacon reaches every station of the province; the defaults agent is
        # idle meanwhile and its window starts only afterwards.
        measure_beacons(units_agent, mode, units["time_beacon"])
        units_agent.stop()
        phases["beacons_s"] = round(time.monotonic() - started - sum(phases.values()), 1)
        # Phase 3: the defaults, for the cross-check.
        check = cross_check(agents["defaults"], mode, units, iv, ping_info["sizes_up"][0])
        agents["defaults"].stop()
        phases["cross_check_s"] = round(time.monotonic() - started - sum(phases.values()), 1)
        opened = {role: agent.proxy.stats().opened for role, agent in agents.items()}
    finally:
        for agent in agents.values():
            agent.close()
        rig.close()

    anomalies = check_attribution(units, mode, opened)
    model = compose(units, iv)
    without = compose(units, replace(iv, beacon_every_s=None))
    candidates = grid(units, iv)
    per_day = model["bytes_per_day"]
    return {
        "benchmark": "telemetry_bytes",
        "title": "Bytes per day on one station's MQTT link at the default settings",
        "command": COMMAND + (" --quick" if quick else ""),
        "quick": quick,
        # Repetitions of the least repeated unit (a beacon the station does not take is
        # measured once).
        "n": min(len(u.totals) for u in units.values() if u.bytes > 0),
        "bytes_per_day": per_day,
        "target": TARGET,
        "kb_per_day": round(per_day / 1000, 1),
        "kb_per_day_without_time_beacon": round(without["bytes_per_day"] / 1000, 1),
        "fraction_of_target": round(per_day / TARGET, 3),
        "cross_check_ratio": check["ratio_measured_to_rates"],
        "figures": [
            "kb_per_day",
            "kb_per_day_without_time_beacon",
            "fraction_of_target",
            "cross_check_ratio",
        ],
        "labels": {
            "kb_per_day": "kB/day (10^3 bytes) at the socket, default settings, composed from "
            f"measured unit costs; target {TARGET // 1000} kB",
            "kb_per_day_without_time_beacon": "the same without the province's time beacon",
            "fraction_of_target": f"bytes_per_day / {TARGET} (above 1: over budget)",
            "cross_check_ratio": f"measured / modelled bytes, agent at defaults for "
            f"{mode.window_s:g} s with one reconnect",
        },
        "intervals": {
            "heartbeat_s": iv.heartbeat_s,
            "keepalive_s": iv.keepalive_s,
            "will_delay_s": iv.will_delay_s,
            "session_expiry_s": iv.session_expiry_s,
            "time_beacon_every_s": iv.beacon_every_s,
            "source": "agent.config defaults (read at run time); time beacon: "
            "loa-province time-beacon --every default",
        },
        "assumptions": {
            "reconnects_per_day": RECONNECTS_PER_DAY,
            "slots_per_day": SLOTS_PER_DAY,
            "playlist_updates_per_day": PLAYLIST_UPDATES_PER_DAY,
            "retained_payload_bytes": retained,
            "notes": (
                "Bytes at the TCP socket (TLS records included, IP/TCP headers not). One "
                "reconnect an hour stands for a 4G link whose NAT mapping or radio drops the "
                "connection; a reconnect costs the same whether the old connection was cut or "
                "died silently, plus keepalives sent into the dead link (not counted). Media "
                "downloads are not on this link."
            ),
        },
        "anomalies": anomalies,
        "breakdown": model["breakdown"],
        "breakdown_without_time_beacon": without["breakdown"],
        "units": {name: unit.summary() for name, unit in units.items()},
        "candidates": candidates,
        "cross_check": check,
        "detail": {
            "estimated_ip_bytes_per_day": model["ip_bytes"],
            "estimated_ip_bytes_note": (
                f"each unit's bytes + {SEGMENT_HEADERS} bytes of IPv4+TCP headers per estimated "
                f"data segment ({SEGMENT_PAYLOAD}-byte payload); pure ACKs not included"
            ),
            "time_beacon_reaches_station": units["time_beacon"].bytes > 0,
            "keepalive_phase": ping_info,
            "boot": boot,
            "tls_connect_bytes": tls_bytes,
            "flood_gate_for_reconnects": flood or None,
            "connections_opened": opened,
            "phases": phases,
            "mode": mode.__dict__,
            "wall_s": round(time.monotonic() - started, 1),
        },
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, 60 s check")
    parser.add_argument("--window-s", type=float, help="the cross-check's window")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    if args.window_s is not None:
        mode = replace(mode, window_s=args.window_s)
    # SIGTERM ends the run through the finally blocks, so no agent or broker outlives it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="loa-bench-telemetry-") as tmp:
        result = run(Path(tmp), mode, args.quick)
    path = write_result("telemetry_bytes", result, args.results)
    print(f"telemetry_bytes: {result['bytes_per_day']:,} bytes/day at the defaults "
          f"(heartbeat {result['intervals']['heartbeat_s']:g} s, keepalive "
          f"{result['intervals']['keepalive_s']:g} s, time beacon every "
          f"{result['intervals']['time_beacon_every_s']:g} s); target {TARGET:,}")  # fmt: skip
    for name, part in result["breakdown"].items():
        print(f"  {name:<16} {part['count_per_day']:>9.2f}/day x {part['bytes_per_unit']:>8.1f} B"
              f" = {part['bytes_per_day']:>9,} B/day")  # fmt: skip
    check = result["cross_check"]
    print(f"cross-check over {check['window_s']:g} s: measured {check['measured_bytes']:,} B, "
          f"model {check['predicted_bytes_by_rates']:,} B by rates (ratio "
          f"{check['ratio_measured_to_rates']}), {check['predicted_bytes_by_counts']:,} B by "
          f"counts (ratio {check['ratio_measured_to_counts']})")  # fmt: skip
    print_grid(result["candidates"], result["intervals"]["time_beacon_every_s"])
    for anomaly in result["anomalies"]:
        print(f"ANOMALY: {anomaly}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
