"""agent/envelope_bound.py: the producer (paho's thread) waits while the inbox holds the most
envelopes or bytes allowed, nothing is dropped, one large envelope still gets into an empty
inbox, and a close releases a waiting producer."""

from __future__ import annotations

import threading

import pytest

from agent.envelope_bound import EnvelopeBound


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
