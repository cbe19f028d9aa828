"""The collector against a real mosquitto: a station's reports in, receipts out (section 7).

The station is played by a bare paho client with the station's certificate, so the test
controls exactly which seqs arrive, and in which order. Waits poll facts with deadlines.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.client import MQTTMessage

from agent import keyfiles
from agent.core import dsse
from agent.core.reports import (
    AsRun,
    Health,
    birth_body,
    event_body,
    heartbeat_body,
    signed_asrun,
    to_bytes,
)
from agent.core.targets import StationId
from agent.core.verify import Accepted
from agent.link import TlsFiles
from province.collector import Collector
from province.mosquitto import find_mosquitto
from province.registry import Registry
from province.signer import FileSigner
from tests.harness import trust
from tests.harness.broker import (
    DEFAULT_STATIONS,
    MosquittoBroker,
    Recorder,
    close_client,
    connect_client,
)
from tests.harness.clock import FakeClock
from tests.harness.trust import make_station

pytestmark = pytest.mark.integration

STATION = StationId.parse("25/08230/08230-01")
ACK = f"{STATION.prefix}/ack"
ASRUN = f"{STATION.prefix}/telemetry/asrun"
DEADLINE_S = 10.0


def key(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


STATION_KEY = key(1)  # DEFAULT_STATIONS[0] is enrolled with key(1)


def asrun(seq: int, signer: Ed25519PrivateKey = STATION_KEY) -> bytes:
    record = AsRun(
        slot="morning", stream="25@25", playlist_version=1, media="news", sha256="ab" * 32,
        scheduled_at=datetime(2026, 11, 22, 23, 0, tzinfo=UTC),
        started_at=datetime(2026, 11, 22, 23, 0, 5, tzinfo=UTC),
        ended_at=datetime(2026, 11, 22, 23, 10, 5, tzinfo=UTC), played_s=600.0,
        outcome="complete", reason=None, zones=("all",), volume=80, relay_ok=True,
        amp_power_ok=True, output_level_db=-12.0, clock_trusted=True,
    )  # fmt: skip
    return signed_asrun(STATION, seq, 1, record, signer)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {DEADLINE_S} s")
        time.sleep(0.02)


def receipt(message: MQTTMessage) -> dict[str, Any]:
    marks: dict[str, Any] = json.loads(message.payload)
    return marks


@dataclass
class Running:
    collector: Collector
    db_path: Path

    def stored_seqs(self, kind: str) -> list[int]:
        # A second connection: the collector's own belongs to its worker thread.
        with Registry(self.db_path) as reader:
            return [r.seq for r in reader.reports(kind, [STATION.path])]

    def refusal_codes(self) -> list[str]:
        with Registry(self.db_path) as reader:
            return [r.code for r in reader.refusals()]


def enroll_defaults(broker: MosquittoBroker, db_path: Path) -> None:
    with Registry(db_path) as registry:
        for n, cn in enumerate(DEFAULT_STATIONS, start=1):
            cert, _ = broker.client_credentials(cn)
            signing = dsse.public_raw(key(n)).hex()
            registry.add_station(StationId.parse(cn), cert.read_bytes(), signing)


@contextmanager
def collecting(
    broker: MosquittoBroker, db_path: Path, cn: str = "province-25", **options: Any
) -> Iterator[Running]:
    cert, private = broker.client_credentials(cn)
    tls = TlsFiles(ca=broker.ca_path, cert=cert, key=private)
    with Registry(db_path) as registry:
        # No persistent session: the broker is shared by the test session, and a queue kept
        # for "province-25" would hand the next test's collector this test's reports.
        collector = Collector(
            registry, broker.host, broker.port, tls, "25", session_expiry_s=0, client_id=cn,
            **options,
        )  # fmt: skip
        collector.start()
        try:
            assert collector.wait_ready(DEADLINE_S), broker.log_text()[-2000:]
            yield Running(collector, db_path)
        finally:
            collector.stop()


@pytest.fixture
def running(mqtt_broker: MosquittoBroker, tmp_path: Path) -> Iterator[Running]:
    enroll_defaults(mqtt_broker, tmp_path / "registry.db")
    with collecting(mqtt_broker, tmp_path / "registry.db") as started:
        yield started


def test_receipts_stop_at_a_gap_until_it_is_filled(
    running: Running, mqtt_connect: Callable[[str], Recorder]
) -> None:
    station = mqtt_connect(STATION.path)
    station.subscribe(ACK)
    for seq in (0, 1, 1, 3):
        assert not station.publish(ASRUN, asrun(seq)).is_failure
    wait_until(lambda: running.collector.stats().received == 4, "4 messages handled")

    stats = running.collector.stats()
    assert (stats.stored, stats.duplicates, stats.refused) == (3, 1, 0)
    station.wait_for(lambda m: m.topic == ACK and receipt(m) == {"asrun": 1}, "saying asrun 1")
    assert running.stored_seqs("asrun") == [0, 1, 3]
    # seq 3 is stored but the gap at 2 holds the watermark: no receipt may say more than 1.
    assert stats.watermarks == {STATION.path: {"asrun": 1}}
    assert all(receipt(m)["asrun"] <= 1 for m in station.messages if m.topic == ACK)

    assert not station.publish(ASRUN, asrun(2)).is_failure
    station.wait_for(lambda m: m.topic == ACK and receipt(m) == {"asrun": 3}, "saying asrun 3")
    assert running.stored_seqs("asrun") == [0, 1, 2, 3]


def test_forged_asrun_is_refused_and_not_stored(
    running: Running, mqtt_connect: Callable[[str], Recorder]
) -> None:
    station = mqtt_connect(STATION.path)
    station.subscribe(ACK)
    assert not station.publish(ASRUN, asrun(0)).is_failure
    # Same station, next seq, but signed by a key that is not the one enrolled for it.
    assert not station.publish(ASRUN, asrun(1, signer=key(77))).is_failure
    wait_until(lambda: running.collector.stats().received == 2, "2 messages handled")

    assert running.collector.stats().refused_codes == {"bad-signature": 1}
    assert running.refusal_codes() == ["bad-signature"]
    assert running.stored_seqs("asrun") == [0]
    station.wait_for(lambda m: m.topic == ACK and receipt(m) == {"asrun": 0}, "saying asrun 0")


def test_garbage_never_stops_the_worker_and_state_is_recorded(
    running: Running, mqtt_connect: Callable[[str], Recorder]
) -> None:
    station = mqtt_connect(STATION.path)
    station.subscribe(ACK)
    heartbeat = f"{STATION.prefix}/telemetry/heartbeat"
    assert not station.publish(heartbeat, b"\x00not json").is_failure
    # The broker's ACL names the three report kinds: a deeper topic never reaches a collector
    # (the intake's own bad-topic check is tested in tests/unit/test_collector_store.py).
    assert station.publish(f"{ASRUN}/deeper", asrun(0)).is_failure
    assert not station.publish(heartbeat, b'{"kind": "heartbeat", "seq": 0, "seq": 1}').is_failure
    health = Health(
        uptime_s=1.0, state="idle", streams={}, keyring=1, volume=80, agent_version="test",
        cache={}, clock={}, link={}, outbox={}, hw={},
    )  # fmt: skip
    good = to_bytes(heartbeat_body(STATION, 0, 1, datetime.now(UTC), health))
    assert not station.publish(heartbeat, good).is_failure
    birth = to_bytes(birth_body(STATION, 1, datetime.now(UTC), health))
    # Retained like a real birth; mqtt_connect clears it when the test ends.
    assert not station.publish(f"{STATION.prefix}/state", birth, retain=True).is_failure

    station.wait_for(lambda m: m.topic == ACK and receipt(m) == {"heartbeat": 0}, "for heartbeat")
    wait_until(lambda: running.collector.stats().states == 1, "the birth recorded")
    stats = running.collector.stats()
    assert stats.refused_codes == {"bad-json": 2}
    assert stats.errors == 0
    with Registry(running.db_path) as reader:
        state = reader.station_state(STATION.path)
    assert state is not None and state.online and state.body == birth


def health() -> Health:
    return Health(
        uptime_s=1.0, state="idle", streams={}, keyring=1, volume=80, agent_version="test",
        cache={}, clock={}, link={}, outbox={}, hw={},
    )  # fmt: skip


def heartbeat(seq: int) -> bytes:
    return to_bytes(heartbeat_body(STATION, seq, 1, datetime.now(UTC), health()))


HEARTBEAT = f"{STATION.prefix}/telemetry/heartbeat"


def test_a_reported_loss_lets_the_watermark_pass_the_lost_range(
    running: Running, mqtt_connect: Callable[[str], Recorder]
) -> None:
    station = mqtt_connect(STATION.path)
    station.subscribe(ACK)
    dropped = event_body(
        STATION, 0, 1, datetime.now(UTC), "outbox", "reports-dropped", "4 heartbeats dropped",
        {"report_kind": "heartbeat", "first_seq": 1, "last_seq": 4, "count": 4, "bytes": 4000},
    )  # fmt: skip
    for topic, payload in (
        (HEARTBEAT, heartbeat(0)),
        (HEARTBEAT, heartbeat(5)),
        (f"{STATION.prefix}/telemetry/event", to_bytes(dropped)),
    ):
        assert not station.publish(topic, payload).is_failure
    station.wait_for(
        lambda m: m.topic == ACK and receipt(m) == {"event": 0, "heartbeat": 5}, "past the loss"
    )
    with Registry(running.db_path) as reader:
        assert reader.lost_ranges(STATION.path) == [("heartbeat", 1, 4)]
        assert reader.gaps(STATION.path) == {}


def test_a_lasting_gap_gets_a_resync_the_station_accepts(
    mqtt_broker: MosquittoBroker,
    tmp_path: Path,
    mqtt_connect: Callable[[str], Recorder],
    fake_clock: FakeClock,
) -> None:
    enroll_defaults(mqtt_broker, tmp_path / "registry.db")
    key_file = tmp_path / "maintenance.key"
    keyfiles.save_private(key_file, trust.test_key("maintenance"))
    station = mqtt_connect(STATION.path)
    station.subscribe(f"{STATION.prefix}/cmd")
    station.subscribe(ACK)
    with collecting(
        mqtt_broker, tmp_path / "registry.db",
        resync_signer=FileSigner(key_file), gap_grace_s=0.3, now=fake_clock.now,
    ) as running:  # fmt: skip
        for seq in (0, 2, 3):  # 1 went missing
            assert not station.publish(ASRUN, asrun(seq)).is_failure
        command = station.wait_for(lambda m: m.topic == f"{STATION.prefix}/cmd", "a resync")
        # The real station's trust core takes it: maintenance role, this station, in time.
        agent = make_station(tmp_path / "agent", fake_clock)
        try:
            verdict = agent.ingest(bytes(command.payload), command.topic)
        finally:
            agent.store.close()
        assert isinstance(verdict, Accepted), verdict
        assert verdict.message.action == "resync"  # type: ignore[union-attr]
        assert running.collector.stats().resyncs == 1

        assert not station.publish(ASRUN, asrun(1)).is_failure  # what the resync brings
        station.wait_for(lambda m: m.topic == ACK and receipt(m) == {"asrun": 3}, "gap closed")
        time.sleep(1.0)  # several gap checks: a closed gap asks nothing more
        commands = [m for m in list(station.messages) if m.topic == f"{STATION.prefix}/cmd"]
        assert len(commands) == 1 and running.collector.stats().resyncs == 1


def test_two_collectors_share_the_stream_and_store_every_report_once(tmp_path: Path) -> None:
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("mosquitto binary not found (install the Debian package: make sysdeps)")
    operators = (("province-25", "25"), ("province-25.collector-2", "25"))
    db_path = tmp_path / "registry.db"
    with MosquittoBroker(tmp_path / "broker", operators=operators, executable=executable) as broker:
        enroll_defaults(broker, db_path)
        with (
            collecting(broker, db_path) as first,
            collecting(broker, db_path, cn="province-25.collector-2") as second,
        ):
            client = connect_client(broker, STATION.path)
            try:
                station = Recorder(client)
                station.subscribe(ACK)
                for seq in range(200):
                    client.publish(HEARTBEAT, heartbeat(seq), qos=1)
                station.wait_for(
                    lambda m: m.topic == ACK and receipt(m) == {"heartbeat": 199}, "all receipted"
                )
            finally:
                close_client(client)
            one, two = first.collector.stats(), second.collector.stats()
        # Each took a share (round-robin), together every report exactly once.
        assert one.stored > 0 and two.stored > 0
        assert one.stored + two.stored == 200 and one.duplicates + two.duplicates == 0
        assert first.stored_seqs("heartbeat") == list(range(200))
