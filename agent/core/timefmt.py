"""Wire times: strict RFC 3339 with an explicit offset, and the local times of schedules."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta, timezone

_RFC3339 = re.compile(
    r"\A(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?"
    r"(?:(Z)|([+-])(\d{2}):(\d{2}))\Z",
    re.ASCII,
)
MIN_YEAR, MAX_YEAR = 1970, 8999
_LOCAL_TIME = re.compile(r"\A(\d{2}):(\d{2})(?::(\d{2}))?\Z", re.ASCII)


def parse_rfc3339(text: str) -> datetime:
    """Parse ``2026-11-23T06:00:00+07:00`` into an aware datetime; ValueError otherwise.

    ASCII digits only (Python's ``\\d`` would take any Unicode digit), a real calendar date, and
    an offset within +-23:59. Leap seconds are refused: a Pi's clock never shows one.
    """
    match = _RFC3339.match(text)
    if not match:
        raise ValueError(f"not an RFC 3339 time with offset: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = match.group(7) or ""
    micro = int(fraction.ljust(6, "0")) if fraction else 0
    if match.group(8):
        tz: timezone = UTC
    else:
        off_h, off_m = int(match.group(10)), int(match.group(11))
        if off_h > 23 or off_m > 59:
            raise ValueError(f"offset out of range: {text!r}")
        offset = timedelta(hours=off_h, minutes=off_m)
        tz = timezone(-offset if match.group(9) == "-" else offset)
    moment = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    # Wire times live in a sane range, so that adding a grace period or a skew to one can never
    # overflow (9999-12-31 plus 30 days raises in Python, and the agent must never raise).
    if not MIN_YEAR <= year <= MAX_YEAR:  # checked on the local year: UTC may not exist
        raise ValueError(f"time outside {MIN_YEAR}..{MAX_YEAR}: {text!r}")
    return moment


def parse_local_time(text: str) -> time:
    """Parse a schedule's ``HH:MM`` or ``HH:MM:SS``."""
    match = _LOCAL_TIME.match(text)
    if not match:
        raise ValueError(f"not a local time HH:MM[:SS]: {text!r}")
    return time(int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))


def format_rfc3339(moment: datetime) -> str:
    """Format an aware datetime the way the wire wants it (seconds, explicit offset)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
