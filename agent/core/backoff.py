"""Exponential back-off with "full jitter": the one rule for every retry loop of the station
(media downloads, broker reconnects), so that stations that lost the same server together do
not come back in step. Pure: the randomness comes from the caller's ``rng``."""

from __future__ import annotations

import math
import random


def full_jitter(
    attempt: int,
    rng: random.Random,
    *,
    base_s: float,
    cap_s: float,
    floor_s: float = 0.0,
    at_least_s: float | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first): uniform in
    ``[min(floor_s, ceiling), ceiling]`` with ``ceiling = min(cap_s, base_s * 2**attempt)``;
    never less than ``at_least_s`` (a server's Retry-After), even past ``cap_s``."""
    if attempt < 0:
        raise ValueError("attempt must not be negative")
    if base_s <= 0 or cap_s <= 0:
        raise ValueError("base_s and cap_s must be positive")
    ceiling = min(cap_s, base_s * math.ldexp(1.0, min(attempt, 1000)))
    delay = rng.uniform(min(floor_s, ceiling), ceiling)
    if at_least_s is not None:
        delay = max(delay, at_least_s)
    return delay
