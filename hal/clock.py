"""The real clock, and the kernel's word on whether it is synchronised (PROTOCOL.md section 9).

A Raspberry Pi has no battery-backed clock: after a power cut it boots at the last saved time
until NTP answers. The kernel knows: adjtimex(2) reports ``STA_UNSYNC`` until timesyncd, chrony
or ntpd has disciplined the clock, and returns ``TIME_ERROR`` while unsynchronised.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache

STA_UNSYNC = 0x0040
TIME_ERROR = 5


class SystemClock:
    """The Clock port on the real clocks of this machine."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _Timex(ctypes.Structure):
    # Only the leading fields are read; they have the same layout on every Linux ABI (the
    # time64 changes on 32-bit ARM come after `status`). The padding covers the rest.
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    )


@cache
def _libc() -> ctypes.CDLL | None:
    # find_library runs a subprocess (ldconfig) on Linux: once per process, not per message.
    name = ctypes.util.find_library("c")
    return None if name is None else ctypes.CDLL(name, use_errno=True)


def read_adjtimex() -> tuple[int, int] | None:
    """(clock state, status bits) from adjtimex(2) in read-only mode; None if unavailable."""
    libc = _libc()
    if libc is None:
        return None
    timex = _Timex()  # modes = 0: read only
    state = int(libc.adjtimex(ctypes.byref(timex)))
    if state < 0:
        return None
    return state, int(timex.status)


def kernel_clock_synchronised(read: Callable[[], tuple[int, int] | None] = read_adjtimex) -> bool:
    """True when the kernel says the clock is synchronised; False when it cannot tell.

    Both signs are required: the state must not be TIME_ERROR and STA_UNSYNC must be clear
    (timesyncd, chrony and ntpd all clear it once they discipline the clock)."""
    reading = read()
    if reading is None:
        return False
    state, status = reading
    return state != TIME_ERROR and not status & STA_UNSYNC
