"""The province registry's contract, run against each storage backend.

What the collector, coverage and enrollment rely on: a report stored once per (station, kind,
seq), a watermark that only names stored reports, refusals and station state kept, and the
state history an availability chart reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.core.targets import StationId
from province.registry import Registry, StationState, received_at_text

pytestmark = pytest.mark.integration

ONE = StationId.parse("25/08230/08230-01")
TWO = StationId.parse("25/08230/08230-02")
T0 = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


def at(minutes: float) -> str:
    return received_at_text(T0 + timedelta(minutes=minutes))


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry.db") as reg:
        reg.add_station(ONE, b"cert-1", "11" * 32)
        reg.add_station(TWO, b"cert-2", "22" * 32)
        yield reg


def test_state_history_is_half_open_ordered_and_per_station(registry: Registry) -> None:
    registry.set_station_state(ONE.path, True, b"birth-1", at(10))
    registry.set_station_state(ONE.path, False, b"will-1", at(0))  # arrives late, stored first
    registry.set_station_state(TWO.path, True, b"birth-two", at(5))
    registry.set_station_state(ONE.path, True, b"birth-2", at(20))
    registry.set_station_state(ONE.path, False, b"will-2", at(30))

    assert registry.state_history(ONE.path, at(0), at(30)) == [
        StationState(ONE.path, False, b"will-1", at(0)),
        StationState(ONE.path, True, b"birth-1", at(10)),
        StationState(ONE.path, True, b"birth-2", at(20)),
    ]
    # since is included, until is not
    assert [s.body for s in registry.state_history(ONE.path, at(10), at(20))] == [b"birth-1"]
    assert [s.body for s in registry.state_history(ONE.path, at(30), at(31))] == [b"will-2"]
    assert registry.state_history(ONE.path, at(31), at(99)) == []
    assert registry.state_history(TWO.path, at(0), at(99)) == [
        StationState(TWO.path, True, b"birth-two", at(5))
    ]
    # the current state is still the last one set
    assert registry.station_state(ONE.path) == StationState(ONE.path, False, b"will-2", at(30))


def test_last_report_is_the_highest_seq_even_above_a_gap(registry: Registry) -> None:
    assert registry.last_report(ONE.path, "heartbeat") is None
    registry.store_report(ONE.path, "heartbeat", 0, 1, b"hb-0", None, at(0))
    registry.store_report(ONE.path, "heartbeat", 5, 2, b"hb-5", None, at(1))
    registry.store_report(ONE.path, "heartbeat", 2, 1, b"hb-2", None, at(2))
    registry.store_report(ONE.path, "asrun", 9, 1, b"ar-9", b"env", at(3))
    registry.store_report(TWO.path, "heartbeat", 7, 1, b"two-7", None, at(4))

    last = registry.last_report(ONE.path, "heartbeat")
    assert last is not None
    assert (last.station, last.kind, last.seq, last.session, last.body, last.received_at) == (
        ONE.path, "heartbeat", 5, 2, b"hb-5", at(1),
    )  # fmt: skip
    assert registry.watermarks(ONE.path) == {"heartbeat": 0}  # 1 is missing
    assert registry.last_report(TWO.path, "asrun") is None
