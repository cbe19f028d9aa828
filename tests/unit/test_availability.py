"""Availability: when each station was up, from its stored heartbeats and births and Wills.

Real registry files; heartbeats stored the way the collector stores them. 2026-11-23, all
times Vietnam time (+07:00), which has no daylight saving: hourly buckets are local hours.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from agent.core.targets import StationId
from province.availability import (
    DEFAULT_INTERVAL_S,
    availability,
    bucket_starts,
    default_bucket,
    infer_interval,
)
from province.registry import Registry, received_at_text

VN = timezone(timedelta(hours=7))
A1, A2 = StationId.parse("25/08230/08230-01"), StationId.parse("25/08230/08230-02")
B1 = StationId.parse("25/08231/08231-01")


def at(hour: int, minute: int = 0, second: int = 0, day: int = 23) -> datetime:
    return datetime(2026, 11, day, hour, minute, second, tzinfo=VN)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry.db") as reg:
        for n, station in enumerate((A1, A2, B1)):
            reg.add_station(station, b"cert", f"{n:064x}")
        yield reg


class Beats:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.seq: dict[StationId, int] = {}

    def one(self, station: StationId, ts: str, received: datetime, **extra: Any) -> None:
        seq = self.seq.get(station, 0)
        self.seq[station] = seq + 1
        body = {"kind": "heartbeat", "schema": 1, "station": station.path, "seq": seq,
                "session": 1, "ts": ts, "state": "idle", **extra}  # fmt: skip
        self.registry.store_report(
            station.path, "heartbeat", seq, 1, json.dumps(body).encode(), None,
            received_at_text(received),
        )  # fmt: skip

    def every(self, station: StationId, start: datetime, end: datetime, seconds: int) -> None:
        moment = start
        while moment <= end:
            self.one(station, moment.isoformat(), moment)
            moment += timedelta(seconds=seconds)


def state(registry: Registry, station: StationId, online: bool, when: datetime) -> None:
    body = json.dumps({"online": online, "station": station.path}).encode()
    registry.set_station_state(station.path, online, body, received_at_text(when))


def test_heartbeats_vouch_until_the_next_is_half_an_interval_overdue(registry: Registry) -> None:
    Beats(registry).every(A1, at(6), at(8), 60)
    found = availability(registry, at(6), at(10), at(10))
    a1 = found.stations[A1.path]
    assert (a1.interval_s, a1.interval_inferred, a1.heartbeats) == (60.0, True, 121)
    # Up from 06:00 to 08:00 plus 90 s, of a 4 h window.
    assert a1.fraction == pytest.approx((2 * 3600 + 90) / (4 * 3600))
    assert a1.up_at(at(7)) and not a1.up_at(at(9))
    assert a1.down_since(at(9)) == at(8, 1, 30)
    assert a1.down_since(at(7)) is None
    assert a1.last_heartbeat == at(8)
    # Nothing at all from A2: down throughout, and nothing says since when.
    a2 = found.stations[A2.path]
    assert (a2.fraction, a2.heartbeats, a2.last_heartbeat) == (0.0, 0, None)
    assert (a2.interval_s, a2.interval_inferred) == (DEFAULT_INTERVAL_S, False)
    assert a2.down_since(at(7)) is None


def test_median_gap_shrugs_off_an_outage(registry: Registry) -> None:
    beats = Beats(registry)
    beats.every(A1, at(6), at(6, 10), 120)
    beats.every(A1, at(9), at(9, 10), 120)  # a 2 h 50 min hole in between
    a1 = availability(registry, at(6), at(10), at(10)).stations[A1.path]
    assert a1.interval_s == 120.0
    assert not a1.up_at(at(7))
    assert a1.down_since(at(7)) == at(6, 13)  # 06:10 + 1.5 × 120 s


def test_too_few_heartbeats_assume_the_default_interval() -> None:
    moments = [at(6), at(6, 1), at(6, 2)]  # two gaps: not enough to say
    assert infer_interval(moments) == (DEFAULT_INTERVAL_S, False)
    assert infer_interval([*moments, at(6, 3)]) == (60.0, True)


def test_birth_until_will_counts_as_up(registry: Registry) -> None:
    state(registry, A1, True, at(6))
    state(registry, A1, False, at(7))
    # A birth before the window and no Will since: connected the whole (past) window.
    state(registry, B1, True, at(22, day=22))
    found = availability(registry, at(6), at(10), at(9))
    a1, b1 = found.stations[A1.path], found.stations[B1.path]
    assert a1.connected == ((at(6), at(7)),) and a1.up == a1.connected
    # now (09:00) cuts the window: 3 judged hours.
    assert a1.fraction == pytest.approx(1 / 3)
    assert a1.connected_fraction == pytest.approx(1 / 3)
    assert a1.down_since(at(8)) == at(7)
    assert b1.fraction == 1.0 and b1.heartbeats == 0


def test_heartbeats_and_states_combine(registry: Registry) -> None:
    # Heartbeats 06:00-07:00, then connected 07:30-08:00 without heartbeats (say, they are
    # still in the outbox): up is the union.
    Beats(registry).every(A1, at(6), at(7), 60)
    state(registry, A1, True, at(7, 30))
    state(registry, A1, False, at(8))
    a1 = availability(registry, at(6), at(10), at(10)).stations[A1.path]
    assert a1.up == ((at(6), at(7, 1, 30)), (at(7, 30), at(8)))
    assert a1.connected_fraction == pytest.approx(0.5 / 4)


def test_a_heartbeat_with_an_untrusted_clock_is_placed_when_received(registry: Registry) -> None:
    beats = Beats(registry)
    beats.one(A1, "1970-01-01T00:00:00Z", at(7), clock={"trusted": False})
    beats.one(A1, "not a time", at(8))  # unreadable ts: when received, too
    beats.one(A1, at(9).isoformat(), at(9, 30), clock={"trusted": True})  # delivered late
    a1 = availability(registry, at(6), at(10), at(10)).stations[A1.path]
    assert [start for start, _ in a1.up] == [at(7), at(8), at(9)]
    assert a1.heartbeats == 3


def test_hourly_buckets_on_local_hours(registry: Registry) -> None:
    Beats(registry).every(A1, at(7), at(7, 59), 60)  # up 07:00-08:00:30
    hour = timedelta(hours=1)
    found = availability(registry, at(6, 30), at(10), at(9, 30), bucket=hour)
    assert found.buckets == (at(6), at(7), at(8), at(9))
    a1 = found.stations[A1.path]
    # 06:30-07:00 judged and down; 07:00-08:00 up; 30 s of 08:00-09:00; 09:00-09:30 down.
    assert a1.buckets == pytest.approx((0.0, 1.0, 30 / 3600, 0.0))
    later = availability(registry, at(6, 30), at(12), at(9, 30), bucket=hour)
    assert later.stations[A1.path].buckets[-1] is None  # 11:00-12:00 is still to come


def test_commune_availability_is_the_mean_of_its_stations(registry: Registry) -> None:
    Beats(registry).every(A1, at(6), at(10), 60)
    found = availability(registry, at(6), at(10), at(10))
    communes = {c.commune: c for c in found.communes()}
    assert set(communes) == {"25/08230", "25/08231"}
    assert communes["25/08230"].stations == 2
    assert communes["25/08230"].fraction == pytest.approx(0.5)
    assert communes["25/08231"].fraction == 0.0
    assert found.bucket == timedelta(minutes=10)  # 4 hours: 24 columns
    assert communes["25/08230"].buckets == pytest.approx((0.5,) * 24)


def test_revoked_stations_are_not_judged(registry: Registry) -> None:
    with registry.db:
        registry.db.execute("UPDATE station SET revoked_at = 'x' WHERE id = ?", (A2.path,))
    assert A2.path not in availability(registry, at(6), at(10), at(10)).stations


def test_bucket_size_grows_with_the_window() -> None:
    assert default_bucket(timedelta(minutes=3)) == timedelta(minutes=1)
    assert default_bucket(timedelta(hours=2)) == timedelta(minutes=10)
    assert default_bucket(timedelta(days=1)) == timedelta(hours=1)
    assert default_bucket(timedelta(days=7)) == timedelta(hours=6)
    assert default_bucket(timedelta(days=30)) == timedelta(days=1)
    six = bucket_starts((at(7, 30), at(20)), timedelta(hours=6), "Asia/Ho_Chi_Minh")
    assert six == (at(6), at(12), at(18))
    tens = bucket_starts((at(7, 34), at(8, 5)), timedelta(minutes=10), "Asia/Ho_Chi_Minh")
    assert tens == (at(7, 30), at(7, 40), at(7, 50), at(8))
    days = bucket_starts((at(7, 30), at(7, day=25)), timedelta(days=1), "Asia/Ho_Chi_Minh")
    assert days == (at(0), at(0, day=24), at(0, day=25))
