"""The station reads the collector's receipt strictly (``reports.parse_receipt``): the outbox
deletes on its strength, so ``true`` is not 1 and a receipt with one bad watermark is ignored
whole; a good one deletes what it covers."""

from __future__ import annotations

from pathlib import Path

from agent.app import build_station
from agent.config import load_config
from tests.harness.clock import FakeClock
from tests.harness.trust import make_station


def test_a_receipt_with_a_boolean_watermark_deletes_nothing(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    made = make_station(tmp_path / "s", fake_clock)  # provisioned; the agent's Station below
    made.store.close()
    path = tmp_path / "s" / "station.toml"
    config = load_config(path.read_text(), {"LOA_HAL": "sim"}, path.parent)
    station, cleanup = build_station(config, fake_clock)
    try:
        station._heartbeat()
        station._heartbeat()
        pending = station.outbox.pending_ids()
        assert len(pending) == 2
        station._on_ack(b'{"heartbeat": true}')
        station._on_ack(b'{"heartbeat": 1, "event": -1}')
        assert station.outbox.pending_ids() == pending
        station._on_ack(b'{"heartbeat": 0, "newer-kind": 7}')  # unknown kinds are skipped
        assert len(station.outbox.pending_ids()) == 1
    finally:
        cleanup()
