"""The reconnect jitter's random source (agent/link.py ``jitter_rng``): the system's by default,
a fixed sequence with ``$LOA_LINK_SEED`` (the link-fault tests' reproducible timeline), and a
clear error for a seed that is not an integer."""

from __future__ import annotations

import random

import pytest

from agent.link import SEED_ENV, LinkError, jitter_rng, reconnect_delay


def delays(rng: random.Random) -> list[float]:
    return [reconnect_delay(attempt, rng) for attempt in range(6)]


def test_unset_is_the_system_source() -> None:
    assert isinstance(jitter_rng({}), random.SystemRandom)
    assert isinstance(jitter_rng({SEED_ENV: " "}), random.SystemRandom)


def test_a_seed_gives_the_same_delays_every_time() -> None:
    first, again = delays(jitter_rng({SEED_ENV: "7"})), delays(jitter_rng({SEED_ENV: " 7 "}))
    assert first == again
    assert first != delays(jitter_rng({SEED_ENV: "8"}))
    # Still the product's rule: attempt n waits between 0.5 s and 2 s * 2**n.
    assert all(0.5 <= d <= 2.0 * 2**n for n, d in enumerate(first))


def test_a_seed_that_is_no_integer_is_refused() -> None:
    with pytest.raises(LinkError, match="LOA_LINK_SEED must be an integer, got 'x1'"):
        jitter_rng({SEED_ENV: "x1"})
