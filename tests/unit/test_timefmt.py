"""Unit tests of agent.core.timefmt: strict RFC 3339 wire times and schedule local times."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone

import pytest

from agent.core.timefmt import format_rfc3339, parse_local_time, parse_rfc3339

ICT = timezone(timedelta(hours=7))


# -- parse_rfc3339: accepted -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T06:00:00+07:00", datetime(2026, 11, 23, 6, 0, 0, tzinfo=ICT)),
        ("2026-11-22T23:00:00Z", datetime(2026, 11, 22, 23, 0, 0, tzinfo=UTC)),
        ("2026-11-22T23:00:00+00:00", datetime(2026, 11, 22, 23, 0, 0, tzinfo=UTC)),
        (
            "2026-11-22T18:30:00-04:30",
            datetime(2026, 11, 22, 18, 30, tzinfo=timezone(-timedelta(hours=4, minutes=30))),
        ),
        (
            "2026-01-01T00:00:00+23:59",
            datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59))),
        ),
        (
            "2026-01-01T00:00:00-23:59",
            datetime(2026, 1, 1, tzinfo=timezone(-timedelta(hours=23, minutes=59))),
        ),
        ("2026-11-23T06:00:00.5+07:00", datetime(2026, 11, 23, 6, 0, 0, 500000, tzinfo=ICT)),
        ("2026-11-23T06:00:00.05Z", datetime(2026, 11, 23, 6, 0, 0, 50000, tzinfo=UTC)),
        ("2026-11-23T06:00:00.123456Z", datetime(2026, 11, 23, 6, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-23T06:00:00.000001Z", datetime(2026, 11, 23, 6, 0, 0, 1, tzinfo=UTC)),
        ("2028-02-29T12:00:00+07:00", datetime(2028, 2, 29, 12, tzinfo=ICT)),  # leap year
        ("2000-02-29T00:00:00Z", datetime(2000, 2, 29, tzinfo=UTC)),
        ("2026-12-31T23:59:59Z", datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_parse_rfc3339_accepts(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()
    assert parsed.tzinfo is not None


def test_same_instant_in_different_offsets_compares_equal() -> None:
    assert parse_rfc3339("2026-11-23T06:00:00+07:00") == parse_rfc3339("2026-11-22T23:00:00Z")
    assert parse_rfc3339("2026-11-23T06:00:00+07:00").utcoffset() == timedelta(hours=7)


# -- parse_rfc3339: refusals -----------------------------------------------------------------------
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@pytest.mark.parametrize(
    "text",
    [
        # no offset
        "2026-11-23T06:00:00",
        "2026-11-23T06:00:00.5",
        # lowercase separators
        "2026-11-23t06:00:00Z",
        "2026-11-23T06:00:00z",
        "2026-11-23t06:00:00z",
        # other separators and shapes
        "2026-11-23 06:00:00+07:00",
        "2026-11-23T06:00+07:00",
        "2026-11-23T06:00:00+0700",
        "2026-11-23T06:00:00+07",
        "20261123T060000Z",
        "2026-11-23",
        "26-11-23T06:00:00Z",
        "2026-1-23T06:00:00Z",
        "2026-11-23T6:00:00Z",
        "2026-11-23T06:00:00.Z",
        "2026-11-23T06:00:00.1234567Z",
        "2026-11-23T06:00:00,5Z",
        "2026-11-23T06:00:00Z ",
        " 2026-11-23T06:00:00Z",
        "2026-11-23T06:00:00Z\n",
        "+2026-11-23T06:00:00Z",
        "2026-11-23T06:00:00UTC",
        "",
        # non-ASCII digits
        "2026-11-23T06:00:00+07:00".translate(ARABIC_INDIC),
        "٢٠٢٦-11-23T06:00:00Z",
        "2026-11-23T06:00:00+٠٧:00",
        "2026-11-23T06:00:00Z".translate(FULLWIDTH),
        # offsets out of range
        "2026-11-23T06:00:00+24:00",
        "2026-11-23T06:00:00-24:00",
        "2026-11-23T06:00:00+07:60",
        "2026-11-23T06:00:00+99:99",
    ],
)
def test_parse_rfc3339_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError, match=r"not an RFC 3339 time|offset out of range"):
        parse_rfc3339(text)


@pytest.mark.parametrize(
    "text",
    [
        "2026-13-01T00:00:00Z",  # month 13
        "2026-00-01T00:00:00Z",  # month 0
        "2026-02-30T00:00:00Z",  # Feb 30
        "2026-02-29T00:00:00Z",  # not a leap year
        "2100-02-29T00:00:00Z",  # century, not a leap year
        "2026-04-31T00:00:00Z",  # April has 30 days
        "2026-11-00T00:00:00Z",  # day 0
        "2026-11-32T00:00:00Z",
        "0000-01-01T00:00:00Z",  # year 0
        "2026-11-23T24:00:00Z",  # hour 24
        "2026-11-23T06:60:00Z",
        "2026-12-31T23:59:60Z",  # leap second
        "2016-12-31T23:59:60Z",  # a real leap second, still refused
        "2026-06-30T23:59:60+07:00",
    ],
)
def test_parse_rfc3339_refuses_impossible_dates_and_times(text: str) -> None:
    with pytest.raises(ValueError, match=r"must be in|out of range|year 0"):
        parse_rfc3339(text)


def test_offset_24_00_names_the_offset() -> None:
    with pytest.raises(ValueError, match="offset out of range"):
        parse_rfc3339("2026-11-23T06:00:00+24:00")


# -- format_rfc3339 --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 11, 23, 6, 0, 0, tzinfo=ICT), "2026-11-23T06:00:00+07:00"),
        (datetime(2026, 11, 22, 23, 0, 0, tzinfo=UTC), "2026-11-22T23:00:00Z"),
        (datetime(2026, 11, 22, 23, 0, 0, 999999, tzinfo=UTC), "2026-11-22T23:00:00Z"),
        (
            datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(-timedelta(hours=3, minutes=30))),
            "2026-01-02T03:04:05-03:30",
        ),
    ],
)
def test_format_rfc3339(moment: datetime, expected: str) -> None:
    text = format_rfc3339(moment)
    assert text == expected
    assert parse_rfc3339(text) == moment.replace(microsecond=0)


def test_format_rfc3339_refuses_naive() -> None:
    with pytest.raises(ValueError, match="naive"):
        format_rfc3339(datetime(2026, 11, 23, 6, 0, 0))


# -- parse_local_time ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("06:00", time(6, 0)),
        ("00:00", time(0, 0)),
        ("23:59", time(23, 59)),
        ("06:00:30", time(6, 0, 30)),
        ("23:59:59", time(23, 59, 59)),
        ("17:30:00", time(17, 30)),
    ],
)
def test_parse_local_time_accepts(text: str, expected: time) -> None:
    parsed = parse_local_time(text)
    assert parsed == expected
    assert parsed.tzinfo is None


@pytest.mark.parametrize(
    "text",
    [
        "6:00",
        "06:0",
        "0600",
        "06",
        "06:00:0",
        "06:00:00.5",
        "06:00Z",
        "06:00+07:00",
        " 06:00",
        "06:00 ",
        "06:00\n",
        "06h00",
        "",
        "06:00".translate(ARABIC_INDIC),
        "０６:００",
    ],
)
def test_parse_local_time_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="not a local time"):
        parse_local_time(text)


@pytest.mark.parametrize("text", ["24:00", "25:00", "06:60", "06:00:60", "99:99:99"])
def test_parse_local_time_refuses_out_of_range(text: str) -> None:
    with pytest.raises(ValueError, match="must be in"):
        parse_local_time(text)
