"""agent/envelope_bound.py: the producer (paho's thread) waits while the inbox holds the most
envelopes or bytes allowed, nothing is dropped, one large envelope still gets into an empty
inbox, and a close releases a waiting producer."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent.app import build_station
from agent.config import load_config
from agent.envelope_bound import EnvelopeBound
from tests.harness.clock import FakeClock
from tests.harness.trust import make_station


def admit_in_thread(bound: EnvelopeBound, size: int) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(bound.admit(size)))
    thread.start()
    return thread, result


def test_a_full_inbox_makes_the_producer_wait_until_one_is_done() -> None:
    bound = EnvelopeBound(max_messages=2, max_bytes=1000)
    assert bound.admit(10) and bound.admit(10)
    thread, result = admit_in_thread(bound, 10)
    thread.join(0.2)
    assert thread.is_alive() and bound.waited == 1  # waiting: nothing dropped, nothing over
    bound.done(10)
    thread.join(5)
    assert result == [True] and bound.waiting() == (2, 20)


def test_the_byte_bound_but_one_large_envelope_gets_into_an_empty_inbox() -> None:
    bound = EnvelopeBound(max_messages=10, max_bytes=100)
    assert bound.admit(500)  # alone: over the byte bound, still let in
    thread, result = admit_in_thread(bound, 1)
    thread.join(0.2)
    assert thread.is_alive()
    bound.done(500)
    thread.join(5)
    assert result == [True] and bound.waiting() == (1, 1)


def test_close_releases_a_waiting_producer_and_refuses_the_next() -> None:
    bound = EnvelopeBound(max_messages=1)
    bound.admit(1)
    thread, result = admit_in_thread(bound, 1)
    thread.join(0.2)
    bound.close()
    thread.join(5)
    assert result == [False] and not bound.admit(1)


def test_a_message_never_admitted_frees_nothing() -> None:
    bound = EnvelopeBound()
    bound.done(100)  # a test put a Received on the inbox directly
    assert bound.waiting() == (0, 0)


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        EnvelopeBound(max_messages=0)


class RecordingLink:
    def __init__(self) -> None:
        self.resyncs = 0

    def resync(self) -> None:
        self.resyncs += 1


def test_once_a_flood_is_over_the_station_takes_its_retained_state_again(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    """The broker drops what comes behind a flood from a full queue (a real playlist too); the
    station asks for the retained state again once, at the first watch tick without a wait."""
    made = make_station(tmp_path / "s", fake_clock)  # provisioned; the agent's Station below
    made.store.close()
    path = tmp_path / "s" / "station.toml"
    config = load_config(path.read_text(), {"LOA_HAL": "sim"}, path.parent)
    station, cleanup = build_station(config, fake_clock)
    link = RecordingLink()
    station.link = link  # type: ignore[assignment]
    station._resync_after_flood()
    assert link.resyncs == 0  # no flood, nothing asked
    station.envelopes.waited = 5  # the link waited for room: a flood is on
    station._resync_after_flood()
    assert link.resyncs == 0  # waits since the last tick: still flooding
    station._resync_after_flood()
    assert link.resyncs == 1  # a tick without a new wait: over
    station._resync_after_flood()
    assert link.resyncs == 1  # once per flood
    station.envelopes.waited = 9
    station._resync_after_flood()
    station._resync_after_flood()
    assert link.resyncs == 2
    station.link = None
    cleanup()
