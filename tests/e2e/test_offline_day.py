"""Offline first: with the broker and the media server gone, the station keeps playing its
schedule from the cache and keeps its reports; when the broker comes back every as-run reaches
the province's collector, each stored once.

A "day" of slots is compressed into seconds: four slots, four seconds apart, all while offline.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.core.targets import StationId
from agent.link import TlsFiles
from province.collector import Collector
from province.registry import Registry
from tests.harness.audio import make_tone
from tests.harness.broker import MosquittoBroker, Recorder, close_client, connect_client
from tests.harness.media_server import MediaServer
from tests.harness.station_proc import provision_station
from tests.harness.trust import envelope, playlist_body

pytestmark = pytest.mark.integration
STATION = "25/08230/08230-01"
HANOI = ZoneInfo("Asia/Ho_Chi_Minh")


def wait(condition: object, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)  # polling other processes' files and databases, with a deadline


def outbox_asruns(outbox: Path) -> int:
    if not outbox.exists():
        return 0
    db = sqlite3.connect(outbox)
    try:
        return int(db.execute("SELECT COUNT(*) FROM report WHERE kind = 'asrun'").fetchone()[0])
    finally:
        db.close()


def test_a_day_offline_plays_from_the_cache_and_reports_once(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    registry = Registry(tmp_path / "province" / "registry.db")
    registry.set_meta("province", "25")
    proc = provision_station(tmp_path / "station", broker, STATION)
    keys = tmp_path / "station" / "keys"
    registry.add_station(
        StationId.parse(STATION), (keys / "station.crt").read_bytes(),
        (keys / "station.pub").read_text().strip(),
    )  # fmt: skip
    cert, key = broker.client_credentials("province-25")
    tls = TlsFiles(broker.ca_path, cert, key)
    collector = Collector(registry, broker.host, broker.port, tls, "25", session_expiry_s=0)
    collector.start()
    operator: Recorder | None = None
    try:
        assert collector.wait_ready(10)
        tone = tmp_path / "tone.mp3"
        make_tone(tone, 800, 1.0)
        data = tone.read_bytes()
        media_server = MediaServer()
        media = {"tone": {"url": media_server.add("/tone.mp3", data),
                          "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                          "duration_s": 1.0}}  # fmt: skip
        first = datetime.now(UTC) + timedelta(seconds=14)
        slots = []
        for n in range(4):
            local = (first + timedelta(seconds=4 * n)).astimezone(HANOI)
            slots.append({"id": f"slot-{n}", "start": local.strftime("%H:%M:%S"),
                          "dates": [local.date().isoformat()], "items": ["tone"]})  # fmt: skip
        doc = playlist_body(version=1, valid_from="2026-11-01T00:00:00+07:00", media=media,
                            slots=slots)  # fmt: skip
        operator = Recorder(connect_client(broker, "province-25"))
        operator.publish(
            "loa/v1/25/playlist/25", envelope("playlist", doc, "playlist"), retain=True
        )
        proc.start()
        cached = tmp_path / "station" / "cache" / media["tone"]["sha256"]
        wait(cached.exists, "the medium to be cached", 20)

        # Everything goes away: the media server and the broker.
        media_server.close()
        close_client(operator.client)
        operator = None
        broker.stop()
        outbox = tmp_path / "station" / "state" / "outbox.db"
        wait(lambda: outbox_asruns(outbox) >= 4, "four as-runs kept offline", 40)
        assert registry.reports("asrun", [STATION]) == []  # nothing could arrive while offline

        # The broker comes back on its address: the station reconnects and catches up.
        broker.start(same_port=True)
        wait(lambda: len(registry.reports("asrun", [STATION])) >= 4, "the as-runs", 60)
        # The receipts flowed back: the station's outbox let go of every as-run.
        wait(lambda: outbox_asruns(outbox) == 0, "the station to drop acknowledged as-runs", 30)
        records = [json.loads(r.body) for r in registry.reports("asrun", [STATION])]
        assert sorted(r["slot"] for r in records) == [f"slot-{n}" for n in range(4)]
        assert all(r["outcome"] == "complete" for r in records)
        assert len({r["seq"] for r in records}) == 4  # each stored once
    finally:
        if operator is not None:
            close_client(operator.client)
        if proc.process is not None:
            proc.stop()
        collector.stop()
        broker.stop()
        registry.close()
