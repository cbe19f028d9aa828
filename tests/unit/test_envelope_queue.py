"""agent/envelope_queue.py: bounded (the producer waits, nothing is dropped), one wake-up per
turn, batches in arrival order, and a close that releases a waiting producer."""

from __future__ import annotations

import threading

import pytest

from agent.envelope_queue import EnvelopeQueue


def make(max_messages: int = 3, max_bytes: int = 100) -> tuple[EnvelopeQueue[bytes], list[int]]:
    wakes: list[int] = []
    q: EnvelopeQueue[bytes] = EnvelopeQueue(
        lambda: wakes.append(1), len, max_messages=max_messages, max_bytes=max_bytes
    )
    return q, wakes


def test_one_wake_per_turn_and_batches_in_order() -> None:
    q, wakes = make(max_messages=10)
    for n in range(5):
        assert q.put(bytes([n]))
    assert len(wakes) == 1  # only the first put of a turn wakes the runtime
    batch, more = q.take(2)
    assert batch == [b"\x00", b"\x01"] and more
    q.put(b"\x05")
    assert len(wakes) == 1  # still the runtime's turn: it owes itself a new token
    assert q.take(10) == ([b"\x02", b"\x03", b"\x04", b"\x05"], False)
    q.put(b"x")
    assert len(wakes) == 2


def test_a_full_queue_makes_the_producer_wait_until_a_take() -> None:
    q, _ = make(max_messages=2)
    q.put(b"a")
    q.put(b"b")
    done = threading.Event()

    def produce() -> None:
        q.put(b"c")
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert not done.wait(0.2)  # blocked: nothing dropped, nothing queued beyond the bound
    assert len(q) == 2 and q.waited == 1
    q.take(1)
    assert done.wait(5)
    producer.join(5)
    assert q.take(10) == ([b"b", b"c"], False)


def test_bytes_bound_but_one_large_envelope_gets_into_an_empty_queue() -> None:
    q, _ = make(max_messages=10, max_bytes=100)
    assert q.put(b"x" * 500)  # alone: larger than the bound, still taken
    blocked = threading.Thread(target=q.put, args=(b"y",))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()
    q.close()
    blocked.join(5)
    assert not blocked.is_alive()
    assert q.take() == ([b"x" * 500], False)
    assert not q.put(b"z")  # closed: refused


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        make(max_messages=0)
