"""The station's MQTT link against real mosquitto brokers: a broker list tried in turn,
subscriptions renewed after the broker restarts, and reconnect delays that spread a fleet out."""

from __future__ import annotations

import queue
import random
import socket
import statistics
import time
from pathlib import Path

import pytest

from agent.core.targets import StationId
from agent.link import Connected, Disconnected, Link, LinkEvent, Received, TlsFiles, reconnect_delay
from province.mosquitto import find_mosquitto
from tests.harness.broker import MosquittoBroker, Recorder, close_client, connect_client

STATION = StationId.parse("25/08230/08230-01")
WAIT_S = 20.0


def test_first_reconnect_delays_of_a_fleet_are_spread_not_synchronised() -> None:
    rng = random.Random(7)
    first = [reconnect_delay(0, rng) for _ in range(1000)]
    assert all(0.5 <= d <= 2.0 for d in first)
    # A thousand stations losing the broker at once come back over the whole window, not at once.
    assert statistics.pstdev(first) > 0.3
    assert max(first) - min(first) > 1.2


def test_reconnect_delay_grows_and_stops_at_the_cap() -> None:
    rng = random.Random(1)
    ceilings = [max(reconnect_delay(n, rng, cap_s=120.0) for _ in range(300)) for n in range(10)]
    assert ceilings[0] <= 2.0 < ceilings[2] <= 8.0 < ceilings[4] <= 32.0
    assert all(c <= 120.0 for c in ceilings) and ceilings[9] > 100.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _next(events: queue.Queue[LinkEvent], kind: type, timeout: float = WAIT_S) -> LinkEvent:
    """The next event of ``kind`` within ``timeout`` overall (queue.Empty if none): a link
    failing to connect sends other events every second, which must not reset the deadline."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        event = events.get(timeout=left)
        if isinstance(event, kind):
            return event
    raise queue.Empty


@pytest.fixture
def broker(tmp_path: Path) -> MosquittoBroker:
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("mosquitto binary not found (install the Debian package: make sysdeps)")
    return MosquittoBroker(tmp_path / "broker", executable=executable)


def _link(broker: MosquittoBroker, urls: list[str], events: queue.Queue[LinkEvent]) -> Link:
    cert, key = broker.client_credentials(STATION.path)
    return Link(
        STATION,
        urls,
        TlsFiles(broker.ca_path, cert, key),
        events.put,
        will_payload=b'{"online": false}',
        reconnect_base_s=0.5,
        reconnect_cap_s=1.0,
    )


def test_a_dead_broker_in_the_list_is_passed_over_and_a_restart_renews_subscriptions(
    broker: MosquittoBroker,
) -> None:
    events: queue.Queue[LinkEvent] = queue.Queue()
    with broker:
        dead = f"mqtts://127.0.0.1:{_free_port()}"
        live = f"mqtts://127.0.0.1:{broker.port}"
        link = _link(broker, [dead, live], events)
        link.start()
        try:
            assert isinstance(_next(events, Disconnected), Disconnected)  # the dead one first
            _next(events, Connected)
            assert link.broker_index == 1 and link.connected

            broker.stop()
            _next(events, Disconnected)
            broker.start(same_port=True)  # no persistence: the broker forgot the session
            _next(events, Connected)

            operator = connect_client(broker, "province-25")
            try:
                recorder = Recorder(operator)
                recorder.publish(f"{STATION.prefix}/cmd", b"after-restart")
                received = _next(events, Received)
                assert isinstance(received, Received) and received.payload == b"after-restart"
            finally:
                close_client(operator)
            # It stayed with the broker that worked rather than going back to the dead one.
            assert link.broker_index == 1
        finally:
            link.stop()


def test_resync_takes_the_retained_state_again(broker: MosquittoBroker) -> None:
    """After a flood the broker may have dropped a retained playlist from the station's full
    queue: ``resync`` renews the subscriptions with "send retained", and it arrives again."""
    events: queue.Queue[LinkEvent] = queue.Queue()
    topic = f"loa/v1/{STATION.province}/{STATION.commune}/playlist/25"
    with broker:
        operator = connect_client(broker, "province-25")
        link = _link(broker, [f"mqtts://127.0.0.1:{broker.port}"], events)
        try:
            Recorder(operator).publish(topic, b"playlist-v2", retain=True)
            link.start()
            _next(events, Connected)
            first = _next(events, Received)
            assert isinstance(first, Received) and first.payload == b"playlist-v2"
            link.resync()
            again = _next(events, Received)
            assert isinstance(again, Received) and again.topic == topic and again.retained
            with pytest.raises(queue.Empty):
                _next(events, Received, timeout=1.0)  # once per resync, not once per topic
        finally:
            link.stop()
            Recorder(operator).publish(topic, b"", retain=True)
            close_client(operator)
