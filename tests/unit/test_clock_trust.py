"""Clock trust from the kernel's adjtimex reading (PROTOCOL.md section 9), with fake readings."""

from __future__ import annotations

import pytest

from hal.clock import STA_UNSYNC, TIME_ERROR, kernel_clock_synchronised, read_adjtimex

TIME_OK, TIME_INS = 0, 1
STA_PLL = 0x0001


@pytest.mark.parametrize(
    ("reading", "synchronised"),
    [
        ((TIME_OK, STA_PLL), True),  # disciplined by NTP
        ((TIME_INS, 0), True),  # a leap second pending is still synchronised
        ((TIME_OK, STA_UNSYNC), False),  # booted, nobody has set the clock yet
        ((TIME_OK, STA_UNSYNC | STA_PLL), False),
        ((TIME_ERROR, 0), False),  # the kernel says the clock is not trustworthy
        (None, False),  # no adjtimex (not Linux, seccomp): cannot tell, so not trusted
    ],
)
def test_kernel_clock_synchronised(reading: tuple[int, int] | None, synchronised: bool) -> None:
    assert kernel_clock_synchronised(lambda: reading) is synchronised


def test_the_real_reading_has_the_expected_shape() -> None:
    reading = read_adjtimex()
    assert reading is None or (0 <= reading[0] <= 5 and reading[1] >= 0)
