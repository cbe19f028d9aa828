"""Unit tests of agent.core.targets: station ids, audiences, who signs as whom (PROTOCOL s1, s4)."""

from __future__ import annotations

import pytest

from agent.core.targets import TOPIC_WORDS, StationId, is_within, may_sign, province_of


# -- StationId -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("province", "commune", "name"),
    [
        ("25", "08230", "08230-01"),
        ("01", "00001", "a"),
        ("99", "99999", "x" * 32),
        ("25", "08230", "0"),
        ("25", "08230", "-"),
        ("25", "08230", "loa-tower-2"),
        ("25", "08230", "times"),  # a topic word as a prefix is only a name
        ("25", "08230", "acks"),
    ],
)
def test_station_id_accepts(province: str, commune: str, name: str) -> None:
    station = StationId(province, commune, name)
    assert station.path == f"{province}/{commune}/{name}"
    assert StationId.parse(station.path) == station


@pytest.mark.parametrize("word", sorted(TOPIC_WORDS))
def test_station_id_refuses_topic_words(word: str) -> None:
    with pytest.raises(ValueError, match="not a topic word"):
        StationId("25", "08230", word)


def test_topic_words_are_the_protocols() -> None:
    assert {"playlist", "keyring", "cmd", "state", "telemetry", "ack", "time"} == TOPIC_WORDS


@pytest.mark.parametrize(
    ("province", "commune", "name", "field"),
    [
        ("2", "08230", "08230-01", "province"),
        ("025", "08230", "08230-01", "province"),
        ("", "08230", "08230-01", "province"),
        ("ab", "08230", "08230-01", "province"),
        ("٢٥", "08230", "08230-01", "province"),  # Arabic-Indic digits
        ("25\n", "08230", "08230-01", "province"),
        ("25", "8230", "08230-01", "commune"),
        ("25", "082300", "08230-01", "commune"),
        ("25", "", "08230-01", "commune"),
        ("25", "0823a", "08230-01", "commune"),
        ("25", "０８２３０", "08230-01", "commune"),  # fullwidth digits
        ("25", "08230", "", "station"),
        ("25", "08230", "x" * 33, "station"),
        ("25", "08230", "08230_01", "station"),
        ("25", "08230", "Station-1", "station"),
        ("25", "08230", "08230 01", "station"),
        ("25", "08230", "08230/01", "station"),
        ("25", "08230", "+", "station"),
        ("25", "08230", "#", "station"),
        ("25", "08230", "trạm", "station"),
        ("25", "08230", "08230-01\n", "station"),
    ],
)
def test_station_id_refuses(province: str, commune: str, name: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} must"):
        StationId(province, commune, name)


@pytest.mark.parametrize(
    "path",
    ["25/08230", "25", "", "25/08230/08230-01/x", "25//08230-01", "/25/08230/08230-01"],
)
def test_station_id_parse_refuses_wrong_shapes(path: str) -> None:
    with pytest.raises(ValueError, match=r"must|PROVINCE/COMMUNE/STATION"):
        StationId.parse(path)


def test_station_id_parse_refuses_three_parts_with_bad_fields() -> None:
    with pytest.raises(ValueError, match="commune must be 5 digits"):
        StationId.parse("25/0823/08230-01")


def test_station_id_is_frozen() -> None:
    station = StationId("25", "08230", "08230-01")
    with pytest.raises(AttributeError):
        station.name = "08230-02"  # type: ignore[misc]


def test_audience_and_prefix() -> None:
    station = StationId("25", "08230", "08230-03")
    assert station.audience == ("25", "25/08230", "25/08230/08230-03")
    assert station.prefix == "loa/v1/25/08230/08230-03"


# -- is_within / province_of -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "scope", "expected"),
    [
        ("25", "25", True),
        ("25/08230", "25", True),
        ("25/08230/08230-01", "25", True),
        ("25/08230", "25/08230", True),
        ("25/08230/08230-01", "25/08230", True),
        ("25", "25/08230", False),
        ("26/08230", "25", False),
        ("250/08230", "25", False),  # a prefix is not containment
        ("25/082301", "25/08230", False),
        ("25/08231/08231-01", "25/08230", False),
        ("2", "25", False),
    ],
)
def test_is_within(target: str, scope: str, expected: bool) -> None:
    assert is_within(target, scope) is expected


@pytest.mark.parametrize(
    ("target", "province"),
    [("25", "25"), ("25/08230", "25"), ("25/08230/08230-01", "25")],
)
def test_province_of(target: str, province: str) -> None:
    assert province_of(target) == province


# -- may_sign --------------------------------------------------------------------------------------
PROVINCE_KEY = ("25",)
COMMUNE_KEY = ("25/08230",)
STATION_SCOPE = ("25/08230/08230-01",)

_STATION = "25/08230/08230-01"
_COMMUNE = "25/08230"
_OTHER_COMMUNE = "25/08231"
_OTHER_STATION = "25/08231/08231-01"


@pytest.mark.parametrize(
    ("scope", "issuer", "target", "expected"),
    [
        # a province key signs as the province for any target in the province
        (PROVINCE_KEY, "25", "25", True),
        (PROVINCE_KEY, "25", _COMMUNE, True),
        (PROVINCE_KEY, "25", _STATION, True),
        (PROVINCE_KEY, "25", _OTHER_COMMUNE, True),
        (PROVINCE_KEY, "25", _OTHER_STATION, True),
        # ... but not for another province
        (PROVINCE_KEY, "25", "26", False),
        (PROVINCE_KEY, "25", "26/08230", False),
        (PROVINCE_KEY, "25", "26/08230/08230-01", False),
        (PROVINCE_KEY, "26", "26", False),
        # ... and not as a commune (nor as a station)
        (PROVINCE_KEY, "08230", _COMMUNE, False),
        (PROVINCE_KEY, "08230", _STATION, False),
        (PROVINCE_KEY, "08230-01", _STATION, False),
        # a commune key signs only as its commune, for targets inside it
        (COMMUNE_KEY, "08230", _COMMUNE, True),
        (COMMUNE_KEY, "08230", _STATION, True),
        (COMMUNE_KEY, "08230", "25/08230/08230-99", True),
        # ... never as the province
        (COMMUNE_KEY, "25", "25", False),
        (COMMUNE_KEY, "25", _COMMUNE, False),
        (COMMUNE_KEY, "25", _STATION, False),
        # ... never for the province as a whole
        (COMMUNE_KEY, "08230", "25", False),
        # ... never for another commune, as itself or as that commune
        (COMMUNE_KEY, "08230", _OTHER_COMMUNE, False),
        (COMMUNE_KEY, "08230", _OTHER_STATION, False),
        (COMMUNE_KEY, "08231", _OTHER_COMMUNE, False),
        (COMMUNE_KEY, "08231", _OTHER_STATION, False),
        (COMMUNE_KEY, "08230", "25/082301", False),
        # ... nor in another province with the same commune code
        (COMMUNE_KEY, "08230", "26/08230", False),
        (COMMUNE_KEY, "08230", "26/08230/08230-01", False),
        # ... nor as a station
        (COMMUNE_KEY, "08230-01", _STATION, False),
        # a station-level scope never signs, as anyone, for anything
        (STATION_SCOPE, "08230-01", _STATION, False),
        (STATION_SCOPE, "08230", _STATION, False),
        (STATION_SCOPE, "08230", _COMMUNE, False),
        (STATION_SCOPE, "25", _STATION, False),
        (STATION_SCOPE, "25", "25", False),
        # an empty scope signs nothing
        ((), "25", "25", False),
        ((), "08230", _COMMUNE, False),
        # several entries: each counts on its own
        (("25/08230", "25/08231"), "08231", _OTHER_STATION, True),
        (("25/08230", "25/08231"), "08230", _OTHER_STATION, False),
        (("25/08230/08230-01", "25/08230"), "08230", _STATION, True),
        (("26", "25/08230"), "26", _STATION, False),
        (("26", "25/08230"), "26", "26/00001", True),
    ],
)
def test_may_sign(scope: tuple[str, ...], issuer: str, target: str, expected: bool) -> None:
    assert may_sign(scope, issuer, target) is expected
