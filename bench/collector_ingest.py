"""Collector ingest: reports per second from many stations into a real ``Collector`` with a
SQLite registry, against a bare paho subscriber on the same stream in the same run.

Real parts: a real mosquitto with mutual TLS and the ACL from the registry
(``tests.harness.broker``); 200 station identities, each with its own certificate from the
broker's CA and its own Ed25519 report key enrolled in the registry; several publisher
processes, each holding the MQTT connections of its share of the stations (one connection per
station, as in the field, each also subscribed to its ``ack`` topic, so the broker delivers the
collector's receipts as it would to stations). The stream is each station's heartbeats and
signed as-runs, interleaved, seq from 0, built with the agent's own report code, so every one
of them is valid for the registry and must be stored, not refused.

The same stream is published once per trial; trials alternate between the two subscribers:

- ``collector``: ``province.collector.Collector`` (its defaults, except a session that does
  not outlive the trial, so the broker queues nothing for it during the next trial) on a fresh
  registry holding the 200 stations; done when ``stats().stored`` reaches the stream's length.
  Every message must then be stored exactly once: one row per (station, kind, seq), every seq
  from 0 present, no refusal, no error;
- ``baseline``: a bare paho client (MQTT 5, mutual TLS, QoS 1, the topic filters a Collector
  subscribes to, without the shared-subscription prefix) that only counts; done when it has
  counted the stream's length.

The collector of each trial has a share group of its own, and each trial waits until the broker
has let the previous subscriber go, so that no message of a trial can be routed to a subscriber
of an earlier one.

The stream is fed in batches, never more than ``LAG`` messages ahead of what the subscriber has
handled: mosquitto queues at most 1000 messages for a subscriber that is behind (the province's
broker keeps that default) and silently drops the rest, so an unfed stream would measure the
drops. ``msgs_per_s`` is the stream's length over the time from the first batch to done; the
figures are medians over the trials. A last round (``detail.burst``) publishes the whole stream
at once into a collector and counts what was lost. ``detail.intake_msgs_per_s`` is
``ReportIntake.handle`` alone on the same messages (checks and storage, no MQTT, no threads), in
this process.

    .venv/bin/python -m bench.collector_ingest [--quick] [--results DIR]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.client import Client, MQTTMessage

from agent.core import dsse
from agent.core.reports import AsRun, Health, heartbeat_body, signed_asrun, to_bytes
from agent.core.targets import StationId
from agent.link import TlsFiles, tls_client
from bench.common import RESULTS, ROOT, machine_info, write_result
from province.collector import Collector, ReportIntake
from province.mosquitto import MAX_QUEUED_MESSAGES, find_mosquitto
from province.registry import Registry
from tests.harness.broker import MosquittoBroker

COMMAND = ".venv/bin/python -m bench.collector_ingest"
PROVINCE = "25"
OPERATOR = "province-25"  # the collector's identity, as in production
BARE = "province-25-bare"  # the baseline subscriber's
COMMUNES = 10
STATIONS = 200
PUBLISHERS = 4
TIMEOUT_S = 600.0
STALL_S = 15.0  # nothing handled for this long: the rest is not coming
# mosquitto queues at most max_queued_messages for a subscriber that is behind and drops the
# rest, PUBACKed to the sender all the same: the province's broker sets 200,000
# (province.mosquitto.MAX_QUEUED_MESSAGES; the default of 1000 lost reports). The stream is fed
# in batches and never gets more than LAG messages ahead of the subscriber, so no trial loses a
# message to that limit; the burst trial shows what a burst costs with the province's setting.
BATCH = 25  # per publisher
LAG = 400
POLL_S = 0.003  # Collector.stats() copies every watermark under the worker's lock: not too often


@dataclass(frozen=True)
class Mode:
    per_kind: int  # heartbeats and as-runs per station
    trials: int  # per subscriber, alternating


FULL = Mode(per_kind=25, trials=3)
QUICK = Mode(per_kind=3, trials=1)


# -- the stream -----------------------------------------------------------------------------------


def station_ids() -> list[StationId]:
    per = STATIONS // COMMUNES
    return [
        StationId(PROVINCE, f"{8230 + c:05d}", f"{8230 + c:05d}-{n:02d}")
        for c in range(COMMUNES)
        for n in range(1, per + 1)
    ]


def report_key(station: StationId) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(station.path.encode()).digest())


def health(uptime_s: float) -> Health:
    """What a station's heartbeat carries, shaped like the agent's."""
    return Health(
        uptime_s=uptime_s, state="idle", streams={"25@25": 3, "25@25/08230": 1}, keyring=1,
        volume=80, agent_version="0.1.0",
        cache={"files": 12, "bytes": 48_000_000, "missing_24h": 0, "fetching": 0,
               "quota_bytes": 0},
        clock={"synchronised": True, "trusted": True, "floor": "2026-11-22T10:00:00+00:00"},
        link={"session": 1, "connected": True}, outbox={"heartbeat": 1},
        hw={"inputs": None, "level": "digital"},
    )  # fmt: skip


def asrun(n: int, start: datetime) -> AsRun:
    at = start + timedelta(minutes=30 * n)
    return AsRun(
        slot=f"slot-{n:02d}", stream="25@25", playlist_version=3, media="ban-tin-sang",
        sha256=hashlib.sha256(b"media %d" % n).hexdigest(), scheduled_at=at,
        started_at=at + timedelta(seconds=0.002), ended_at=at + timedelta(minutes=10),
        played_s=600.0, outcome="complete", reason=None, zones=("all",), volume=80,
        relay_ok=True, amp_power_ok=True, output_level_db=-16.2, clock_trusted=True,
    )  # fmt: skip


def stream(stations: list[StationId], per_kind: int) -> dict[str, list[tuple[str, bytes]]]:
    """Each station's messages in the order it sends them: heartbeat 0, as-run 0, ..."""
    start = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    out: dict[str, list[tuple[str, bytes]]] = {}
    for station in stations:
        key = report_key(station)
        hb_topic = f"{station.prefix}/telemetry/heartbeat"
        ar_topic = f"{station.prefix}/telemetry/asrun"
        messages = []
        for seq in range(per_kind):
            now = start + timedelta(minutes=5 * seq)
            body = heartbeat_body(station, seq, 1, now, health(300.0 * seq))
            messages.append((hb_topic, to_bytes(body)))
            messages.append((ar_topic, signed_asrun(station, seq, 1, asrun(seq, start), key)))
        out[station.path] = messages
    return out


# -- publisher processes ------------------------------------------------------------------------


def publisher_main(job_path: Path) -> int:
    """One publisher process: connect every station of the job, say ``ready``, then obey its
    input: ``go N`` publishes the next N messages of the round (round robin over the stations,
    each station's in order); ``end`` waits for every PUBACK of the round, says how long the
    round took, and starts the next round from the first message again."""
    job = json.loads(job_path.read_text())
    tls_ca = Path(job["ca"])
    clients: list[tuple[Client, list[tuple[str, bytes]]]] = []
    connected = threading.Semaphore(0)
    for entry in job["stations"]:
        client = tls_client(entry["cn"], TlsFiles(tls_ca, Path(entry["cert"]), Path(entry["key"])))
        client.on_connect = on_connect_subscribe(f"loa/v1/{entry['cn']}/ack", connected)
        client.connect(job["host"], job["port"], keepalive=120)
        client.loop_start()
        messages = [(t, base64.b64decode(p)) for t, p in entry["messages"]]
        clients.append((client, messages))
    for _ in clients:
        if not connected.acquire(timeout=60):
            print("error: a station could not connect", flush=True)
            return 1
    longest = max(len(messages) for _, messages in clients)
    order = [(client, messages[i]) for i in range(longest) for client, messages in clients
             if i < len(messages)]  # fmt: skip
    print("ready", flush=True)
    position, started, infos = 0, 0.0, []
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "go":
            if position == 0:
                started = time.monotonic()
            for client, (topic, payload) in order[position : position + int(argument)]:
                infos.append(client.publish(topic, payload, qos=1))
            position = min(len(order), position + int(argument))
        elif command == "end":
            for info in infos:
                info.wait_for_publish(TIMEOUT_S)
            acked = sum(1 for info in infos if info.is_published())
            print(json.dumps({"sent": len(infos), "acked": acked,
                              "publish_s": time.monotonic() - started}), flush=True)  # fmt: skip
            position, infos = 0, []
        else:
            break
    for client, _ in clients:
        client.disconnect()
        client.loop_stop()
    return 0


def on_connect_subscribe(ack: str, connected: threading.Semaphore) -> Any:
    """A station's on_connect: subscribe to its receipts, as the agent does, then count it."""

    def on_connect(client: Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe(ack, qos=1)
        connected.release()

    return on_connect


class Publishers:
    """The publisher processes; ``go()`` starts one round of the stream in all of them."""

    def __init__(self, tmp: Path, broker: MosquittoBroker, messages: dict[str, list[Any]]) -> None:
        self.processes: list[subprocess.Popen[str]] = []
        names = sorted(messages)
        for p in range(PUBLISHERS):
            share = names[p::PUBLISHERS]
            entries = []
            for cn in share:
                cert, key = broker.client_credentials(cn)
                entries.append({"cn": cn, "cert": str(cert), "key": str(key), "messages": [
                    [t, base64.b64encode(payload).decode()] for t, payload in messages[cn]
                ]})  # fmt: skip
            job = tmp / f"publisher-{p}.json"
            spec = {"host": broker.host, "port": broker.port, "ca": str(broker.ca_path)}
            job.write_text(json.dumps({**spec, "stations": entries}))
            self.processes.append(subprocess.Popen(
                [sys.executable, "-m", "bench.collector_ingest", "--publisher", str(job)],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            ))  # fmt: skip
        for process in self.processes:
            line = self._line(process)
            if line != "ready":
                raise RuntimeError(f"a publisher did not start: {line!r}")

    @staticmethod
    def _line(process: subprocess.Popen[str]) -> str:
        stdout: IO[str] | None = process.stdout
        assert stdout is not None
        return stdout.readline().strip()

    def go(self, per_publisher: int) -> None:
        """The next ``per_publisher`` messages of the round, in every publisher."""
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(f"go {per_publisher}\n")
            process.stdin.flush()

    def feed(self, progress: Callable[[], int], total: int, burst: bool = False) -> float:
        """Publish one round of the stream, never more than ``LAG`` messages ahead of what the
        subscriber has taken (``progress()``), unless ``burst``; the start's monotonic time."""
        started = time.monotonic()
        if burst:
            self.go(total)
            return started
        sent = 0
        while sent < total:
            wait_for_count(progress, sent - LAG, "the subscriber to catch up")
            self.go(BATCH)
            sent += BATCH * len(self.processes)
        return started

    def end(self) -> list[dict[str, Any]]:
        """Wait for the round's PUBACKs in every publisher; what each one says about it."""
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write("end\n")
            process.stdin.flush()
        done = []
        for process in self.processes:
            line = self._line(process)
            try:
                done.append(json.loads(line))
            except ValueError as exc:
                raise RuntimeError(f"a publisher failed: {line!r}") from exc
        return done

    def close(self) -> None:
        for process in self.processes:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            if process.stdout is not None:
                process.stdout.close()


# -- subscribers --------------------------------------------------------------------------------


def fresh_registry(path: Path, stations: list[StationId], broker: MosquittoBroker) -> Registry:
    registry = Registry(path)
    registry.set_meta("province", PROVINCE)
    for station in stations:
        cert, _ = broker.client_credentials(station.path)
        public = dsse.public_raw(report_key(station)).hex()
        registry.add_station(station, cert.read_bytes(), public)
    return registry


def wait_for_count(count: Callable[[], int], target: int, what: str) -> float:
    """Poll ``count()`` until it reaches ``target``; the monotonic time it did. A count that
    stops moving for ``STALL_S`` fails the run: a message the broker dropped never comes."""
    last, moved = count(), time.monotonic()
    while last < target:
        time.sleep(POLL_S)
        now = count()
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved > STALL_S:
            raise RuntimeError(f"{what}: stuck at {last} of {target} for {STALL_S:.0f} s")
    return time.monotonic()


def settle(progress: Callable[[], int], quiet_s: float = 2.0) -> int:
    """Wait until ``progress()`` has not moved for ``quiet_s``; its value then."""
    last, since = progress(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.05)
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
    return last


def dropped_notices(broker: MosquittoBroker, client: str) -> int:
    return broker.log_text().count(f"Outgoing messages are being dropped for client {client}")


def disconnects(broker: MosquittoBroker, client: str) -> int:
    return broker.log_text().count(f"Client {client} disconnected")


def wait_gone(broker: MosquittoBroker, client: str, before: int) -> None:
    """Wait until the broker has let a subscriber go, so that nothing of the next trial is
    routed to it."""
    deadline = time.monotonic() + 10
    while disconnects(broker, client) <= before and time.monotonic() < deadline:
        time.sleep(0.02)


def collector_trial(
    path: Path, broker: MosquittoBroker, publishers: Publishers, stations: list[StationId],
    total: int, per_kind: int, *, burst: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The collector on a fresh registry takes one round of the stream: fed (at most ``LAG``
    ahead of what its worker has handled) or, with ``burst``, all at once."""
    registry = fresh_registry(path, stations, broker)
    cert, key = broker.client_credentials(OPERATOR)
    # A share group of its own: the group of an earlier trial's collector, if the broker has not
    # let it go yet, could never take a share of this trial's stream.
    collector = Collector(
        registry, broker.host, broker.port, TlsFiles(broker.ca_path, cert, key), PROVINCE,
        session_expiry_s=0, share_group=f"loa-bench-{path.stem}",
    )  # fmt: skip
    drops_before = dropped_notices(broker, OPERATOR)
    gone_before = disconnects(broker, OPERATOR)
    collector.start()
    try:
        if not collector.wait_ready(30):
            raise RuntimeError(f"the collector did not subscribe\n{broker.log_text()[-2000:]}")

        def handled() -> int:
            return collector.stats().received

        started = publishers.feed(handled, total, burst)
        if burst:
            sent = publishers.end()
            settle(handled)  # what the broker dropped never comes
            done = time.monotonic()
        else:
            done = wait_for_count(lambda: collector.stats().stored, total, "the collector")
            sent = publishers.end()
            time.sleep(0.5)  # anything late (a duplicate, a refusal) shows up before the check
        stats = collector.stats()
    finally:
        collector.stop()
        registry.close()
        wait_gone(broker, OPERATOR, gone_before)
    return {
        "seconds": done - started,
        "publishers": sent,
        "stats": {
            "received": stats.received,
            "stored": stats.stored,
            "duplicates": stats.duplicates,
            "refused": stats.refused,
            "errors": stats.errors,
            "receipts": stats.receipts,
        },
        "broker_dropped_notices": dropped_notices(broker, OPERATOR) - drops_before,
        "check": check_stored(path, stations, per_kind, total),
    }


def check_stored(
    path: Path, stations: list[StationId], per_kind: int, total: int
) -> dict[str, Any]:
    """Every (station, kind, seq) sent is stored once: per station and kind, ``per_kind`` rows,
    seqs 0..per_kind-1; nothing refused."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT station, kind, COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) "
            "FROM report GROUP BY station, kind"
        ).fetchall()
        refused = int(db.execute("SELECT COUNT(*) FROM refused").fetchone()[0])
    finally:
        db.close()
    expected = {(s.path, k) for s in stations for k in ("heartbeat", "asrun")}
    complete = {
        (station, kind)
        for station, kind, n, distinct, low, high in rows
        if n == distinct == per_kind and low == 0 and high == per_kind - 1
    }
    stored = sum(int(r[2]) for r in rows)
    return {
        "rows": stored,
        "sent": total,
        "streams_complete": len(complete & expected),
        "streams_expected": len(expected),
        "refused_rows": refused,
        "stored_exactly_once": stored == total and complete == expected and refused == 0,
    }


def collector_topics(path: Path, broker: MosquittoBroker) -> list[str]:
    """The topic filters a Collector subscribes to, read from one that is never started, with
    its shared-subscription prefix taken off: the bare subscriber gets the same messages."""
    cert, key = broker.client_credentials(OPERATOR)
    with Registry(path) as registry:
        tls = TlsFiles(broker.ca_path, cert, key)
        topics = Collector(registry, broker.host, broker.port, tls, PROVINCE).topics
    return [t.split("/", 2)[2] if t.startswith("$share/") else t for t in topics]


def baseline_trial(
    broker: MosquittoBroker, publishers: Publishers, total: int, topics: list[str]
) -> dict[str, Any]:
    """The bare subscriber takes one round of the stream on the collector's topic filters, fed
    as the collector is."""
    cert, key = broker.client_credentials(BARE)
    client = tls_client(BARE, TlsFiles(broker.ca_path, cert, key))
    lock = threading.Lock()
    count = 0
    subscribed = threading.Event()

    def on_message(c: Client, userdata: Any, message: MQTTMessage) -> None:
        nonlocal count
        with lock:
            count += 1

    def received() -> int:
        with lock:
            return count

    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
    client.on_subscribe = lambda *args: subscribed.set()
    gone_before = disconnects(broker, BARE)
    client.connect(broker.host, broker.port, keepalive=60, clean_start=True)
    client.loop_start()
    try:
        if not subscribed.wait(30):
            raise RuntimeError("the bare subscriber did not subscribe")
        started = publishers.feed(received, total)
        done = wait_for_count(received, total, "the bare subscriber")
        sent = publishers.end()
        time.sleep(0.5)
        final = received()
    finally:
        client.disconnect()
        client.loop_stop()
        wait_gone(broker, BARE, gone_before)
    return {"seconds": done - started, "publishers": sent, "received": final}


def intake_only(
    tmp: Path, broker: MosquittoBroker, stations: list[StationId],
    messages: dict[str, list[tuple[str, bytes]]], total: int,
) -> float:  # fmt: skip
    """``ReportIntake.handle`` alone over the same messages, in this process; seconds."""
    registry = fresh_registry(tmp / "registry-intake.db", stations, broker)
    try:
        intake = ReportIntake(registry, PROVINCE)
        ordered = [m for i in range(max(map(len, messages.values())))
                   for ms in messages.values() if i < len(ms) for m in [ms[i]]]  # fmt: skip
        start = time.perf_counter()
        for topic, payload in ordered:
            intake.handle(topic, payload)
        seconds = time.perf_counter() - start
        stored = registry.db.execute("SELECT COUNT(*) FROM report").fetchone()[0]
    finally:
        registry.close()
    if stored != total:
        raise RuntimeError(f"intake alone stored {stored} of {total}")
    return seconds


# -- the run ------------------------------------------------------------------------------------


@contextlib.contextmanager
def running_broker(tmp: Path, stations: list[StationId]) -> Iterator[MosquittoBroker]:
    executable = find_mosquitto()
    if executable is None:
        raise RuntimeError("mosquitto is not installed (make sysdeps)")
    broker = MosquittoBroker(
        tmp / "broker", stations=[s.path for s in stations],
        operators=[(OPERATOR, PROVINCE), (BARE, PROVINCE)], executable=executable,
    )  # fmt: skip
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def run(tmp: Path, mode: Mode, quick: bool) -> dict[str, Any]:
    started = time.monotonic()
    stations = station_ids()
    messages = stream(stations, mode.per_kind)
    total = sum(len(m) for m in messages.values())
    payload_bytes = sum(len(p) for ms in messages.values() for _, p in ms)
    collector_runs: list[dict[str, Any]] = []
    baseline_runs: list[dict[str, Any]] = []
    with running_broker(tmp, stations) as broker:
        topics = collector_topics(tmp / "registry-topics.db", broker)
        publishers = Publishers(tmp, broker, {k: list(v) for k, v in messages.items()})
        try:
            for trial in range(mode.trials):
                # Alternate which goes first, so neither always follows the other.
                order = ("baseline", "collector") if trial % 2 == 0 else ("collector", "baseline")
                for which in order:
                    if which == "collector":
                        collector_runs.append(collector_trial(
                            tmp / f"registry-{trial}.db", broker, publishers, stations, total,
                            mode.per_kind,
                        ))  # fmt: skip
                    else:
                        baseline_runs.append(baseline_trial(broker, publishers, total, topics))
            # The same round all at once: what the broker's queue limit does to a burst.
            burst = collector_trial(tmp / "registry-burst.db", broker, publishers, stations,
                                    total, mode.per_kind, burst=True)  # fmt: skip
        except RuntimeError as exc:
            drops = {cn: dropped_notices(broker, cn) for cn in (OPERATOR, BARE)}
            raise RuntimeError(f"{exc}; the broker's 'dropped' notices: {drops}") from exc
        finally:
            publishers.close()
        intake_s = intake_only(tmp, broker, stations, messages, total)
    collector_s = statistics.median(r["seconds"] for r in collector_runs)
    baseline_s = statistics.median(r["seconds"] for r in baseline_runs)
    burst_publish_s = max(p["publish_s"] for p in burst["publishers"])
    exactly_once = all(r["check"]["stored_exactly_once"] for r in collector_runs)
    msgs_per_s = round(total / collector_s, 1)
    baseline = round(total / baseline_s, 1)
    return {
        "benchmark": "collector_ingest",
        "title": f"Collector ingest: {STATIONS} stations' heartbeats and signed as-runs",
        "command": COMMAND + (" --quick" if quick else ""),
        "quick": quick,
        "n": total,
        "msgs_per_s": msgs_per_s,
        "baseline_msgs_per_s": baseline,
        "ratio": round(msgs_per_s / baseline, 3),
        "stored_exactly_once": exactly_once,
        "figures": ["msgs_per_s", "ratio"],
        "baselines": {"msgs_per_s": "baseline_msgs_per_s"},
        "labels": {
            "msgs_per_s": f"Collector: reports stored per second, {STATIONS} stations over "
            f"{PUBLISHERS} publisher processes, SQLite registry, median of trials "
            f"({'every' if exactly_once else 'NOT every'} report stored exactly once)",
            "baseline_msgs_per_s": "bare paho subscriber, same stream, counting only",
            "ratio": "collector's rate / bare subscriber's rate (below 1: collector slower)",
        },
        "detail": {
            "stations": STATIONS,
            "publisher_processes": PUBLISHERS,
            "messages_per_trial": total,
            "per_station": {"heartbeat": mode.per_kind, "asrun": mode.per_kind},
            "payload_bytes_per_trial": payload_bytes,
            "trials_per_subscriber": mode.trials,
            "collector_s": [round(r["seconds"], 3) for r in collector_runs],
            "baseline_s": [round(r["seconds"], 3) for r in baseline_runs],
            "unpaced_publish_msgs_per_s": round(total / burst_publish_s, 1),
            "unpaced_publish_note": "the burst round: messages over the slowest publisher's "
            "time from its start to its last PUBACK, what the stations and the broker do when "
            "nothing holds them back",
            "intake_msgs_per_s": round(total / intake_s, 1),
            "intake_note": "ReportIntake.handle alone on the same messages, one thread, fresh "
            "registry: the checks and the storage without MQTT",
            "feed": f"batches of {BATCH} per publisher, never more than {LAG} messages ahead "
            "of what the subscriber has handled",
            "burst": {
                "note": "the same round published at once, collector on a fresh registry; the "
                "broker queues up to the province's max_queued_messages "
                f"({MAX_QUEUED_MESSAGES}) for a subscriber behind",
                "sent": total,
                "stored": burst["stats"]["stored"],
                "lost": total - burst["stats"]["stored"],
                "broker_dropped_notices": burst["broker_dropped_notices"],
                "publishers_acked": sum(p["acked"] for p in burst["publishers"]),
            },
            "topic_filters": topics,
            "collector_runs": collector_runs,
            "baseline_runs": baseline_runs,
            "collector_session": "session_expiry_s=0 (the default is 86400): a session kept "
            "between trials would make the broker queue the next trial's stream for it",
            "wall_s": round(time.monotonic() - started, 1),
        },
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 of each per station, 1 trial")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--publisher", type=Path, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    if args.publisher is not None:
        return publisher_main(args.publisher)
    # SIGTERM ends the run through the finally blocks, so no publisher or broker outlives it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    mode = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="loa-bench-ingest-") as tmp:
        result = run(Path(tmp), mode, args.quick)
    path = write_result("collector_ingest", result, args.results)
    detail = result["detail"]
    print(
        f"collector_ingest: {result['msgs_per_s']:.1f} msgs/s stored by the collector, "
        f"{result['baseline_msgs_per_s']:.1f} msgs/s counted by a bare subscriber (ratio "
        f"{result['ratio']}); unpaced publishing {detail['unpaced_publish_msgs_per_s']:.1f} "
        f"msgs/s, burst lost {detail['burst']['lost']} of {result['n']}; intake alone "
        f"{detail['intake_msgs_per_s']:.1f} msgs/s; {result['n']} messages per trial; stored "
        f"exactly once: {result['stored_exactly_once']}"
    )
    print(f"wrote {path}")
    return 0 if result["stored_exactly_once"] else 1


if __name__ == "__main__":
    sys.exit(main())
