"""The real clock, and the kernel's word on whether it is synchronised (PROTOCOL.md section 9).

A Raspberry Pi has no battery-backed clock: after a power cut it boots at the last saved time
until NTP answers. The kernel knows: adjtimex(2) reports ``STA_UNSYNC`` until timesyncd, chrony
or ntpd has disciplined the clock, and returns ``TIME_ERROR`` while unsynchronised.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from datetime import UTC, datetime

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


def kernel_clock_synchronised() -> bool:
    """True when adjtimex says the clock is synchronised; False if it cannot tell."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    timex = _Timex()  # modes = 0: read only
    state = libc.adjtimex(ctypes.byref(timex))
    if state < 0:
        return False
    return state != TIME_ERROR and not timex.status & STA_UNSYNC
