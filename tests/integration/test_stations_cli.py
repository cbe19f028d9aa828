"""``loa-province stations``: enrolled stations with their live state, as a table and as JSON.

A real registry file, filled the way the collector fills it (births and Wills, heartbeats,
events, with the times it received them), relative to the real clock because the command judges
ages against it. The command runs as a subprocess, output piped.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.core.targets import StationId
from province import pki
from province.cli_stations import age, render_stations
from province.registry import Registry, received_at_text

A1, A2 = StationId.parse("25/08230/08230-01"), StationId.parse("25/08230/08230-02")
B1 = StationId.parse("25/08231/08231-01")
ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "\x1b[2J<b>pwned</b>"


class Scene:
    def __init__(self, registry: Registry, now: datetime) -> None:
        self.registry, self.now = registry, now
        self.seq: dict[tuple[str, str], int] = {}

    def report(self, station: StationId, kind: str, ago: timedelta, **fields: Any) -> None:
        seq = self.seq.get((station.path, kind), 0)
        self.seq[(station.path, kind)] = seq + 1
        when = self.now - ago
        body = {"kind": kind, "schema": 1, "station": station.path, "seq": seq, "session": 1,
                "ts": when.isoformat(), **fields}  # fmt: skip
        self.registry.store_report(
            station.path, kind, seq, 1, json.dumps(body).encode(), None, received_at_text(when)
        )

    def event(self, station: StationId, code: str, ago: timedelta) -> None:
        self.report(station, "event", ago, event="hw", code=code, detail="")

    def state(self, station: StationId, online: bool, ago: timedelta) -> None:
        body = json.dumps({"online": online, "station": station.path}).encode()
        self.registry.set_station_state(
            station.path, online, body, received_at_text(self.now - ago)
        )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    now = datetime.now(UTC)
    ca_cert, ca_key = pki.create_ca("test CA", days=30)
    cert = pki.sign_csr(pki.make_csr(pki.make_key(), A1.path), ca_cert, ca_key, days=10)
    with Registry(tmp_path / "registry.db") as registry:
        registry.set_meta("province", "25")
        registry.add_station(A1, cert, "01" * 32)
        registry.add_station(A2, b"not a certificate", "02" * 32)
        registry.add_station(B1, b"not a certificate", "03" * 32)
        scene = Scene(registry, now)
        minute, hour, day = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
        scene.state(A1, True, 2 * minute)
        scene.report(A1, "heartbeat", 10 * minute, state="idle")
        scene.report(
            A1, "heartbeat", minute, state="scheduled", alerts=["clock-untrusted"],
            outbox={"heartbeat": 0, "asrun": 2, "event": 5}, clock={"trusted": True},
            agent_version="0.1.0",
        )  # fmt: skip
        scene.event(A1, "amp-power-lost", 5 * hour)
        scene.event(A1, "amp-power-restored", 4 * hour)  # cleared
        scene.event(A1, "speaker-line-fault", 3 * day)  # old, but never restored: it stands
        scene.event(A1, "media-unreachable", 3 * day)  # old: not recent
        scene.event(A1, "media-unreachable", 2 * hour)
        scene.event(A1, "media-unreachable", hour)
        scene.event(A1, "cached", hour)  # not a fault
        scene.state(A2, True, 3 * hour)
        scene.report(A2, "heartbeat", 2 * hour, state=HOSTILE, alerts=[HOSTILE])
        scene.state(A2, False, hour)
    return tmp_path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "province.cli", "stations", *args],
        capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
    )  # fmt: skip


def test_stations_json_has_the_live_state(home: Path) -> None:
    done = run("--home", str(home), "--json")
    assert done.returncode == 0, done.stderr
    doc = {s["station"]: s for s in json.loads(done.stdout)}
    assert list(doc) == [A1.path, A2.path, B1.path]
    a1, a2, b1 = doc[A1.path], doc[A2.path], doc[B1.path]
    assert (a1["online"], a1["playing"], a1["clock_trusted"]) == (True, "scheduled", True)
    assert 55 <= a1["heartbeat_age_s"] < 120
    assert a1["outbox"] == {"asrun": 2, "event": 5, "heartbeat": 0}
    assert a1["outbox_total"] == 7
    assert a1["alerts"] == ["clock-untrusted"]
    assert a1["faults"] == ["speaker-line-fault", "media-unreachable ×2"]
    assert a1["commune"] == "25/08230" and a1["certificate_until"] != "?"
    assert a1["signing_key"] and a1["enrolled_at"]
    # A2 went offline an hour ago (its Will); what it wrote comes back cleaned of escapes.
    assert a2["online"] is False and 7100 < a2["heartbeat_age_s"] < 7400
    assert a2["playing"] == "\ufffd[2J<b>pwned</b>" and a2["alerts"] == [a2["playing"]]
    assert a2["certificate_until"] == "?"
    # B1 never said anything.
    assert (b1["online"], b1["last_heartbeat"], b1["playing"], b1["faults"]) == (
        None, None, None, []
    )  # fmt: skip

    # A longer --recent window reaches the old media fault too.
    wide = {s["station"]: s for s in json.loads(run("--home", str(home), "--json",
                                                    "--recent", "96").stdout)}  # fmt: skip
    assert wide[A1.path]["faults"] == ["speaker-line-fault", "media-unreachable ×3"]


def test_stations_table_piped_is_plain(home: Path) -> None:
    done = run("--home", str(home))
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    lines = done.stdout.splitlines()
    assert lines[0].split()[:6] == ["station", "online", "last", "heartbeat", "playing", "outbox"]
    a1 = next(ln for ln in lines if ln.startswith(A1.path))
    assert re.match(r"\S+ +online +(6\d|[78]\d) s ago ", a1)  # a minute and a bit
    assert "scheduled" in a1 and "7 (asrun 2, event 5)" in a1
    assert "speaker-line-fault; media-unreachable ×2; alert: clock-untrusted" in a1
    a2 = next(ln for ln in lines if ln.startswith(A2.path))
    assert a2.split()[1:5] == ["offline", "2", "h", "ago"]
    b1 = next(ln for ln in lines if ln.startswith(B1.path))
    assert b1.split()[1:3] == ["?", "never"]


def test_stations_refuses_a_missing_home(tmp_path: Path) -> None:
    done = run("--home", str(tmp_path / "nowhere"))
    assert done.returncode == 1
    assert "ca init" in done.stderr
    assert not (tmp_path / "nowhere").exists()


def test_colour_marks_online_and_offline_only_when_asked(home: Path) -> None:
    from province.cli_stations import live_state

    with Registry(home / "registry.db") as registry:
        stations = live_state(registry, datetime.now(UTC), timedelta(hours=24))
    plain = render_stations(stations)
    coloured = render_stations(stations, color=True)
    assert "\x1b" not in plain
    assert "\x1b[32monline " in coloured and "\x1b[31moffline\x1b[0m" in coloured
    for code in ("\x1b[32m", "\x1b[31m", "\x1b[0m"):
        coloured = coloured.replace(code, "")
    assert coloured == plain


def test_ages_read_like_a_person_says_them() -> None:
    assert [age(s) for s in (None, -5, 45, 600, 5 * 3600, 3 * 86400)] == [
        "never", "clock ahead", "45 s ago", "10 min ago", "5 h ago", "3 d ago",
    ]  # fmt: skip
