"""The player's playback threads are kept for the next play, not started per play."""

from __future__ import annotations

import threading

import pytest

from agent.player import PlaybackThreads


def live(prefix: str) -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(prefix)}


def test_one_thread_serves_plays_that_follow_each_other() -> None:
    threads = PlaybackThreads("reuse-a")
    ran: list[str] = []
    for n in range(20):
        threads.run(lambda n=n: ran.append(threading.current_thread().name)).join(5)
    assert len(ran) == 20
    assert set(ran) == {"reuse-a 1"}
    threads.close()


def test_overlapping_plays_get_a_second_thread_and_no_more() -> None:
    threads = PlaybackThreads("reuse-b")
    for _ in range(10):
        release = threading.Event()
        old = threads.run(lambda release=release: release.wait(5))  # a play still sounding
        new = threads.run(lambda: None)  # the preempting one primes meanwhile
        new.join(5)
        assert old.is_alive() and not new.is_alive()
        release.set()
        old.join(5)
        assert not old.is_alive()
    assert len(live("reuse-b")) == 2
    threads.close()


def test_an_error_in_a_play_keeps_the_thread(caplog: pytest.LogCaptureFixture) -> None:
    threads = PlaybackThreads("reuse-c")

    def broken() -> None:
        raise ValueError("decoder blew up")

    failed = threads.run(broken)
    failed.join(5)
    assert not failed.is_alive()
    assert "decoder blew up" in caplog.text
    names: list[str] = []
    threads.run(lambda: names.append(threading.current_thread().name)).join(5)
    assert names == ["reuse-c 1"]
    threads.close()


def test_closed_threads_end_and_a_later_play_still_runs() -> None:
    threads = PlaybackThreads("reuse-d")
    threads.run(lambda: None).join(5)
    first = live("reuse-d")
    threads.close()
    for thread in first:
        thread.join(5)
        assert not thread.is_alive()
    done = threads.run(lambda: None)
    done.join(5)
    assert not done.is_alive()
    threads.close()
