"""HTTT nguồn export: pings and play logs under deployed systems' field names.

A real registry file holding heartbeats, births and Wills, and signed as-runs fed through the
collector's intake. Monday 2026-11-16, Vietnam time (+07:00), in the past so that the real CLI
(run as a subprocess) is happy with it.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.core import dsse
from agent.core.targets import StationId
from province.httt_export import PING_FIELDS, PLAY_FIELDS, Field, pings, plays, record, to_csv
from province.registry import Registry, received_at_text
from tests.unit.test_coverage import Reports, key, publish, slot

VN = timezone(timedelta(hours=7))
A1, B1 = StationId.parse("25/08230/08230-01"), StationId.parse("25/08231/08231-01")
DAY = datetime(2026, 11, 16, tzinfo=VN)
WINDOW = (DAY, DAY + timedelta(days=1))
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "httt-export.md"
HOSTILE = "=cmd|' /C calc'!A0\x1b[2J"


def at(hour: int, minute: int = 0, day: int = 16) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=VN)


def heartbeat(
    registry: Registry, station: StationId, seq: int, ts: str, received: datetime, **extra: object
) -> None:
    body = {"kind": "heartbeat", "schema": 1, "station": station.path, "seq": seq, "session": 1,
            "ts": ts, "state": "idle", "volume": 80, "agent_version": "0.1.0",
            "link": {"connected": True}, **extra}  # fmt: skip
    registry.store_report(
        station.path, "heartbeat", seq, 1, json.dumps(body).encode(), None,
        received_at_text(received),
    )  # fmt: skip


def make_scene(home: Path) -> Path:
    path = home / "registry.db"
    with Registry(path) as registry:
        registry.set_meta("province", "25")
        for station in (A1, B1):
            registry.add_station(station, b"cert", dsse.public_raw(key(station)).hex())
        media = {"news": {"url": "https://media.example.vn/n.mp3", "sha256": "ab" * 32,
                          "bytes": 10, "duration_s": 600.0, "title": "Bản tin sáng"}}  # fmt: skip
        publish(registry, media=media, slots=[slot("morning", "06:00")])
        heartbeat(registry, A1, 0, at(5, 59).isoformat(), at(5, 59))
        heartbeat(registry, A1, 1, at(6, 4).isoformat(), at(6, 4), state="scheduled", volume=90)
        # Untrusted clock: its ts says 1970; it is placed when it was received.
        heartbeat(registry, A1, 2, "1970-01-01T00:00:00Z", at(7), clock={"trusted": False},
                  link={"connected": False})  # fmt: skip
        heartbeat(registry, A1, 3, at(0, 0, day=18).isoformat(), at(0, 0, day=18))  # outside
        for online, when in ((True, at(5)), (False, at(8))):
            body = json.dumps({"online": online, "station": B1.path, "agent_version": "0.1.0"})
            registry.set_station_state(B1.path, online, body.encode(), received_at_text(when))
        reports = Reports(registry)
        reports.asrun(A1, "25@25", "morning", at(6), "failed", reason="media-missing")
        reports.asrun(A1, "25@25", "morning", at(6), "complete")  # its last word
        reports.asrun(B1, "25@25", "morning", at(6), "partial", reason=HOSTILE,
                      clock_trusted=False)  # fmt: skip
        reports.asrun(B1, "25@25", "morning", at(6, day=17), "complete")  # outside the window
    return path


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(make_scene(tmp_path)) as reg:
        yield reg


def test_pings_from_heartbeats_births_and_wills(registry: Registry) -> None:
    found = [record(PING_FIELDS, p) for p in pings(registry, *WINDOW)]
    assert [(r["CumLoaID"], r["LoaiBanGhi"], r["ThoiDiem"]) for r in found] == [
        (A1.path, "heartbeat", "2026-11-16T05:59:00+07:00"),
        (A1.path, "heartbeat", "2026-11-16T06:04:00+07:00"),
        (A1.path, "heartbeat", "2026-11-16T07:00:00+07:00"),
        (B1.path, "birth", "2026-11-16T05:00:00+07:00"),
        (B1.path, "will", "2026-11-16T08:00:00+07:00"),
    ]
    first, playing, untrusted, birth, will = found
    assert first == {
        "NguonID": "25", "DichID": "08230", "CumLoaID": A1.path, "TenThietBi": "08230-01",
        "TrangThaiHoatDong": 2, "TrangThaiKetNoi": 1, "AmLuong": 80,
        "ThoiDiem": "2026-11-16T05:59:00+07:00", "PhienBanUngDung": "0.1.0",
        "LoaiBanGhi": "heartbeat",
    }  # fmt: skip
    assert (playing["TrangThaiHoatDong"], playing["AmLuong"]) == (0, 90)
    assert untrusted["TrangThaiKetNoi"] == 0
    assert (birth["TrangThaiKetNoi"], birth["TrangThaiHoatDong"], birth["AmLuong"]) == (
        1,
        None,
        None,
    )
    assert will["TrangThaiKetNoi"] == 0


def test_play_logs_are_each_stations_last_word(registry: Registry) -> None:
    found = [record(PLAY_FIELDS, p) for p in plays(registry, *WINDOW)]
    assert len(found) == 2
    a1, b1 = found
    assert a1 == {
        "NguonID": "25", "DichID": "08230", "CumLoaID": A1.path, "TenThietBi": "08230-01",
        "BanTinID": "news", "LichPhatID": "25@25/morning", "TieuDe": "Bản tin sáng",
        "ThoiDiemBatDau": None, "ThoiDiemKetThuc": None, "ThoiLuong": 0, "AmLuong": 80,
        "KetQua": "complete", "ThoiDiemDuKien": "2026-11-16T06:00:00+07:00", "LyDo": None,
        "DongHoTinCay": True,
    }  # fmt: skip
    assert (b1["KetQua"], b1["DongHoTinCay"]) == ("partial", False)
    assert b1["LyDo"] == "=cmd|' /C calc'!A0\ufffd[2J"  # no escape survives; CSV guards the '='


def test_csv_guards_formulas_and_keeps_vietnamese(registry: Registry) -> None:
    text = to_csv(PLAY_FIELDS, plays(registry, *WINDOW))
    header, a1, b1 = csv.reader(io.StringIO(text))
    assert header == [f.name for f in PLAY_FIELDS]
    assert a1[header.index("TieuDe")] == "Bản tin sáng"
    assert a1[header.index("ThoiDiemBatDau")] == "" and a1[header.index("DongHoTinCay")] == "true"
    assert b1[header.index("LyDo")].startswith("'=cmd")


def test_the_mapping_is_a_table_one_line_changes() -> None:
    class Source:
        station = A1

    renamed = (Field("CumLoaId", "as another system spells it", lambda s: s.station.path),)
    assert record(renamed, Source()) == {"CumLoaId": A1.path}
    names = [f.name for f in PING_FIELDS] + [f.name for f in PLAY_FIELDS]
    assert "CumLoaID" in names and "TrangThaiHoatDong" in names and "BanTinID" in names


def test_docs_name_every_field_and_the_caveat() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for f in (*PING_FIELDS, *PLAY_FIELDS):
        assert f"`{f.name}`" in text, f.name
    for reference in ("39/2020", "1273/2021", "2455/2023", "have not yet been checked"):
        assert reference in text


def test_export_cli_writes_json_and_csv(tmp_path: Path) -> None:
    make_scene(tmp_path / "home")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "province.cli", "export", "--home", str(tmp_path / "home"),
         "--from", WINDOW[0].isoformat(), "--to", WINDOW[1].isoformat(), "--out", str(out)],
        capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "exported 5 pings and 2 play logs" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "pings.csv", "pings.json", "play-logs.csv", "play-logs.json",
    ]  # fmt: skip
    raw = (out / "play-logs.json").read_bytes()
    assert "Bản tin sáng".encode() in raw  # UTF-8 as it is
    logs = json.loads(raw)
    assert [r["CumLoaID"] for r in logs] == [A1.path, B1.path]
    assert json.loads((out / "pings.json").read_text())[0]["ThoiDiem"] == (
        "2026-11-16T05:59:00+07:00"
    )
    rows = list(csv.DictReader(io.StringIO((out / "pings.csv").read_text())))
    assert [r["LoaiBanGhi"] for r in rows] == ["heartbeat"] * 3 + ["birth", "will"]

    bad = subprocess.run(
        [sys.executable, "-m", "province.cli", "export", "--home", str(tmp_path / "home"),
         "--from", WINDOW[1].isoformat(), "--to", WINDOW[0].isoformat(), "--out", str(out)],
        capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert bad.returncode == 1 and "--from must be before --to" in bad.stderr
