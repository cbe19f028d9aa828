"""A real ``loa-agent run`` reporting through a real mosquitto (PROTOCOL.md section 7):
rejection floods aggregated, ``resync`` answered, and the outbox's cap reported as a loss."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import MQTTMessage

from tests.corpus.hostile import stop
from tests.harness.broker import MosquittoBroker, Recorder
from tests.harness.station_proc import StationProcess, provision_station
from tests.harness.trust import STATION, envelope

pytestmark = pytest.mark.integration
PREFIX = f"loa/v1/{STATION}"
WAIT_S = 20.0


@pytest.fixture
def operator(mqtt_connect: Any) -> Iterator[Recorder]:
    recorder: Recorder = mqtt_connect("province-25")
    recorder.subscribe(f"{PREFIX}/state")
    recorder.subscribe(f"{PREFIX}/telemetry/#")
    yield recorder
    recorder.publish(f"{PREFIX}/state", b"", retain=True)


def body(message: MQTTMessage) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(message.payload)
    return doc


def events(operator: Recorder, where: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Distinct events (by seq) heard so far that satisfy ``where``."""
    found: dict[int, dict[str, Any]] = {}
    for message in list(operator.messages):
        if message.topic == f"{PREFIX}/telemetry/event":
            doc = body(message)
            if where(doc):
                found[doc["seq"]] = doc
    return [found[seq] for seq in sorted(found)]


def wait_until(done: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def start_station(
    tmp_path: Path, mqtt_broker: MosquittoBroker, operator: Recorder
) -> Iterator[Callable[[str], StationProcess]]:
    started: list[StationProcess] = []

    def start(reports: str) -> StationProcess:
        proc = provision_station(tmp_path / "station", mqtt_broker, STATION, reports=reports)
        proc.start()
        started.append(proc)
        operator.wait_for(lambda m: m.topic == f"{PREFIX}/state" and body(m)["online"], "birth")
        return proc

    yield start
    for proc in started:
        assert proc.stop() == 0, proc.log_text()[-3000:]


def test_a_rejection_flood_is_reported_as_a_few_events_and_a_count(
    start_station: Callable[[str], StationProcess], operator: Recorder
) -> None:
    start_station("rejection_events_per_minute = 3\nrejection_window_s = 2\n")
    for n in range(50):
        operator.client.publish(f"{PREFIX}/cmd", b"not an envelope %d" % n, qos=1)

    def summary() -> list[dict[str, Any]]:
        return events(operator, lambda e: e["code"] == "rejections-suppressed")

    wait_until(lambda: bool(summary()), "a rejections-suppressed summary")
    singles = events(operator, lambda e: e["code"] == "bad-envelope")
    assert len(singles) == 3
    assert summary()[0]["count"] == 47 and summary()[0]["rejected_code"] == "bad-envelope"


def test_resync_republishes_birth_heartbeat_and_everything_unacknowledged(
    start_station: Callable[[str], StationProcess], operator: Recorder
) -> None:
    start_station("heartbeat_s = 3600\n")  # no heartbeat of its own during the test
    wait_until(lambda: bool(events(operator, lambda e: e["event"] == "boot")), "the boot event")
    births_before = len([m for m in list(operator.messages) if m.topic == f"{PREFIX}/state"])
    boot_copies = sum(
        1
        for m in list(operator.messages)
        if m.topic == f"{PREFIX}/telemetry/event" and body(m)["event"] == "boot"
    )
    resync = envelope("command", stop("t-resync-1", action="resync"), "maintenance")
    operator.publish("loa/v1/25/08230/cmd", resync)  # the command targets the commune

    def state_count() -> int:
        return len([m for m in list(operator.messages) if m.topic == f"{PREFIX}/state"])

    def boot_count() -> int:
        return sum(
            1
            for m in list(operator.messages)
            if m.topic == f"{PREFIX}/telemetry/event" and body(m)["event"] == "boot"
        )

    wait_until(lambda: state_count() > births_before, "a new birth")
    wait_until(lambda: boot_count() > boot_copies, "the unacknowledged boot event again")
    heartbeats = [m for m in list(operator.messages) if m.topic.endswith("/heartbeat")]
    assert len({body(m)["seq"] for m in heartbeats}) >= 2  # the connect's and the resync's
    assert events(operator, lambda e: e["code"] == "accepted" and e["payload_kind"] == "command")


def test_an_outbox_over_its_cap_drops_heartbeats_first_and_says_which(
    start_station: Callable[[str], StationProcess], operator: Recorder
) -> None:
    # 2 KiB: a couple of reports; nobody receipts them, so the heartbeats pile up.
    start_station("outbox_max_mb = 0.002\nheartbeat_s = 1\n")

    def losses() -> list[dict[str, Any]]:
        return events(operator, lambda e: e["code"] == "reports-dropped")

    def kinds() -> set[str]:
        return {loss["report_kind"] for loss in losses()}

    wait_until(lambda: "heartbeat" in kinds(), "a reports-dropped event for heartbeats")
    # Each kind's losses are contiguous ranges from seq 0, one after the other: the collector
    # can account for every seq as stored or known lost.
    for kind in kinds():
        mine = [e for e in losses() if e["report_kind"] == kind]
        ranges = [(e["first_seq"], e["last_seq"], e["count"]) for e in mine]
        assert ranges[0][0] == 0
        for (_, last, _), (first, _, _) in itertools.pairwise(ranges):
            assert first == last + 1
        assert all(count == last - first + 1 for first, last, count in ranges)
    assert "asrun" not in kinds()
    hb = [m for m in list(operator.messages) if m.topic.endswith("/heartbeat")]
    assert body(hb[-1])["outbox"]["cap_bytes"] == 2097
