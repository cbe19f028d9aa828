"""Live relay on a real ``loa-agent run`` through a real mosquitto (PROTOCOL.md section 6).

The stream is real ffmpeg serving a 660 Hz MP3 over HTTP on loopback
(``ffmpeg -re ... -listen 1 http://127.0.0.1:PORT/live.mp3``), the card a paced PulseAudio null
sink whose every opening is kept as a file, and what sounded is read back by frequency in
0.2 s windows: the test checks what a listener heard. The schedule plays a 440 Hz programme;
the live relay cuts in above it, falls back to it when the source is killed, returns when the
source is back and has flowed for ``stable_s``, and ends at ``live_stop``.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.core.timefmt import format_rfc3339
from agent.schemas import load_schema_set
from tests.harness.audio import make_tone
from tests.harness.broker import MosquittoBroker, Recorder
from tests.harness.media_server import MediaServer
from tests.harness.paced_card import paced_card, use_paced_card
from tests.harness.station_proc import StationProcess, provision_station
from tests.harness.station_watch import events as station_events
from tests.harness.station_watch import heard, reports, runs, wait_until
from tests.harness.trust import envelope, playlist_body

pytestmark = pytest.mark.integration
STATION = "25/08230/08230-01"
PREFIX = f"loa/v1/{STATION}"
COMMUNE_CMD = "loa/v1/25/08230/cmd"
HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
HOLD_S, STABLE_S = 4.0, 3.0
LIVE_CONFIG = f"""
[live]
allowed_hosts = ["127.0.0.1"]
allow_http = true
hold_s = {HOLD_S}
retry_s = 0.5
retry_max_s = 1.0
stable_s = {STABLE_S}
"""


def events(operator: Recorder, code: str | None = None) -> list[dict[str, Any]]:
    return station_events(operator, PREFIX, code)


def asruns(operator: Recorder) -> list[dict[str, Any]]:
    return reports(operator, PREFIX, "asrun")


@pytest.fixture
def operator(mqtt_connect: Any) -> Iterator[Recorder]:
    recorder: Recorder = mqtt_connect("province-25")
    recorder.subscribe(f"{PREFIX}/#")
    yield recorder
    recorder.publish(f"{PREFIX}/state", b"", retain=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveSource:
    """A studio on loopback: ffmpeg serving an endless 660 Hz MP3 to one listener."""

    def __init__(self, freq: int = 660) -> None:
        self.port = free_port()
        self.freq = freq
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/live.mp3"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "quiet", "-re",
             "-f", "lavfi", "-i", f"sine=frequency={self.freq}:sample_rate=48000",
             "-af", "volume=4", "-f", "mp3", "-listen", "1", self.url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # `-listen 1` serves one listener and exits: a probe connection would use it up, so
        # the kernel's socket table says when it listens.
        deadline = time.monotonic() + 10
        while not self.listening():
            assert time.monotonic() < deadline, "the live source did not listen"
            time.sleep(0.05)

    def listening(self) -> bool:
        """Listening, or already serving (the station retries often: it may have connected
        between two looks)."""
        wanted = f"0100007F:{self.port:04X}"
        rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        return any(row[1] == wanted and row[3] in ("0A", "01") for row in rows)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Scene:
    def __init__(self, tmp: Path, broker: MosquittoBroker, operator: Recorder, card: Path) -> None:
        self.operator = operator
        self.server = MediaServer()
        programme = tmp / "programme.mp3"
        make_tone(programme, 440, 60.0, amplitude=0.5)
        self.programme = programme.read_bytes()
        alarm = tmp / "alarm.mp3"
        make_tone(alarm, 1000, 1.0, amplitude=0.5)
        self.alarm = alarm.read_bytes()
        self.proc: StationProcess = provision_station(tmp / "station", broker, STATION)
        use_paced_card(tmp / "station" / "home", card)
        config = tmp / "station" / "station.toml"
        config.write_text(
            config.read_text() + "\n[emergency]\nchime = false\n" + LIVE_CONFIG, encoding="utf-8"
        )
        self.source = LiveSource()

    def start(self) -> None:
        self.proc.start()
        self.operator.wait_for(
            lambda m: m.topic == f"{PREFIX}/state" and json.loads(m.payload).get("online"),
            "birth",
            timeout=20,
        )

    def schedule_programme(self, in_s: float) -> None:
        start = (datetime.now(UTC) + timedelta(seconds=in_s)).astimezone(HANOI)
        media = {"url": self.server.add("/programme.mp3", self.programme),
                 "sha256": hashlib.sha256(self.programme).hexdigest(),
                 "bytes": len(self.programme), "duration_s": 60.0}  # fmt: skip
        doc = playlist_body(
            version=1,
            valid_from="2026-11-01T00:00:00+07:00",
            media={"programme": media},
            slots=[{"id": "programme", "start": start.strftime("%H:%M:%S"),
                    "dates": [start.date().isoformat()], "items": ["programme"],
                    "volume": 100}],
        )  # fmt: skip
        self.operator.publish(
            "loa/v1/25/playlist/25", envelope("playlist", doc, "playlist"), retain=True
        )

    def command(self, cid: str, action: str, signer: str = "command", **fields: Any) -> bytes:
        now = datetime.now(UTC)
        doc: dict[str, Any] = {
            "kind": "command", "schema": 1, "id": cid, "issuer": "25", "target": "25/08230",
            "issued_at": format_rfc3339(now - timedelta(seconds=1)),
            "expires": format_rfc3339(now + timedelta(minutes=10)), "action": action,
        }  # fmt: skip
        doc.update(fields)
        return envelope("command", doc, signer)

    def live_start(self, cid: str, url: str | None = None, **fields: Any) -> None:
        stream = {"url": url or self.source.url, "format": "mp3"}
        self.operator.publish(COMMUNE_CMD, self.command(cid, "live_start", stream=stream,
                                                        volume=100, **fields))  # fmt: skip

    def emergency(self, cid: str) -> None:
        media = {"url": self.server.add("/alarm.mp3", self.alarm),
                 "sha256": hashlib.sha256(self.alarm).hexdigest(), "bytes": len(self.alarm),
                 "duration_s": 1.0}  # fmt: skip
        data = self.command(cid, "emergency", signer="emergency", priority=100, repeat=1,
                            volume=100, media=media)  # fmt: skip
        self.operator.publish(COMMUNE_CMD, data)

    def close(self) -> int:
        code = self.proc.stop()
        self.source.kill()
        self.server.close()
        return code


@pytest.fixture
def scene(tmp_path: Path, mqtt_broker: MosquittoBroker, operator: Recorder) -> Iterator[Scene]:
    with paced_card(tmp_path / "pulse") as card:
        made = Scene(tmp_path, mqtt_broker, operator, card)
        made.start()
        try:
            yield made
        finally:
            assert made.close() == 0, made.proc.log_text()[-3000:]


def heard_runs(scene: Scene, freq: int) -> int:
    return runs(heard(scene.proc.capture), freq)


def test_live_is_heard_falls_back_when_the_source_dies_and_returns_without_flapping(
    scene: Scene, operator: Recorder
) -> None:
    scene.schedule_programme(in_s=4)
    wait_until(lambda: heard_runs(scene, 440) == 1, "the programme on air")
    scene.source.start()
    scene.live_start("live-1")
    wait_until(lambda: heard_runs(scene, 660) == 1, "the live stream heard")
    started = events(operator, "live-started")
    assert [(e["event"], e["id"], e["url"]) for e in started] == [
        ("live", "live-1", scene.source.url)
    ]

    time.sleep(1.5)
    assert heard_runs(scene, 660) == 1  # one unbroken stretch of the stream

    # The studio goes away: the air holds for hold_s, then the schedule comes back.
    killed = time.monotonic()
    scene.source.kill()
    wait_until(lambda: bool(events(operator, "live-fallback")), "the fallback")
    fell_back = time.monotonic() - killed
    assert HOLD_S - 0.5 <= fell_back <= HOLD_S + 3, fell_back
    stalled = events(operator, "live-stalled")
    assert stalled and stalled[0]["id"] == "live-1" and stalled[0]["reason"]
    wait_until(lambda: heard_runs(scene, 440) == 2, "the programme resumed")

    # The studio is back: live again once it has flowed for stable_s, and only once.
    back = time.monotonic()
    scene.source.start()
    wait_until(lambda: bool(events(operator, "live-resumed")), "back to live")
    assert time.monotonic() - back >= STABLE_S
    wait_until(lambda: heard_runs(scene, 660) == 2, "the live stream heard again")
    time.sleep(1.5)
    assert (
        len(events(operator, "live-resumed")) == 1 and len(events(operator, "live-fallback")) == 1
    )

    operator.publish(COMMUNE_CMD, scene.command("live-stop-1", "live_stop", references="live-1"))
    wait_until(lambda: bool(events(operator, "live-stopped")), "the live relay stopped")
    stopped = events(operator, "live-stopped")[0]
    assert stopped["id"] == "live-1" and stopped["reason"] == "stopped by live-stop-1"
    wait_until(lambda: heard_runs(scene, 440) == 3, "the programme resumed after live_stop")

    # One as-run per stretch on air, unverifiable by nature and saying so, schema-valid.
    wait_until(lambda: len([a for a in asruns(operator) if a["slot"] == "live:live-1"]) == 2,
               "two live as-runs")  # fmt: skip
    live_runs = [a for a in asruns(operator) if a["slot"] == "live:live-1"]
    schemas = load_schema_set()
    for record in live_runs:
        schemas.validate("asrun", record)
        assert record["sha256"] == "unverified-live-stream"
        assert record["media"] == scene.source.url and record["played_s"] > 1
    first, second = live_runs
    assert first["outcome"] == "partial" and "fell back to the schedule" in first["reason"]
    assert second["outcome"] == "complete" and second["reason"] == "stopped by live-stop-1"
    # The heartbeat said "live" while it was on.
    states = {json.loads(m.payload).get("state") for m in list(operator.messages)
              if m.topic == f"{PREFIX}/telemetry/heartbeat"}  # fmt: skip
    assert "live" in states


def test_an_emergency_cuts_in_on_live_and_live_resumes_after_it(
    scene: Scene, operator: Recorder
) -> None:
    scene.source.start()
    scene.live_start("live-2")
    wait_until(lambda: heard_runs(scene, 660) == 1, "the live stream heard")
    time.sleep(0.5)
    scene.emergency("e-over-live")
    wait_until(lambda: bool(events(operator, "emergency-ended")), "the emergency over")
    wait_until(lambda: heard_runs(scene, 660) == 2, "live again after the emergency")
    windows = heard(scene.proc.capture)
    first_alarm = next(i for i, w in enumerate(windows) if w and abs(w - 1000) <= 20)
    assert any(w and abs(w - 660) <= 20 for w in windows[:first_alarm])
    assert any(w and abs(w - 660) <= 20 for w in windows[first_alarm:])
    assert not events(operator, "live-fallback")
    operator.publish(COMMUNE_CMD, scene.command("live-stop-2", "live_stop"))  # any live
    wait_until(lambda: bool(events(operator, "live-stopped")), "stopped")
    wait_until(lambda: any(a["slot"] == "live:live-2" for a in asruns(operator)), "its as-run")
    record = next(a for a in asruns(operator) if a["slot"] == "live:live-2")
    assert record["outcome"] == "complete"  # interrupted by the emergency, but one stretch


def test_streams_the_station_may_not_relay_are_refused(scene: Scene, operator: Recorder) -> None:
    scene.source.start()
    scene.live_start("live-far", url="http://127.0.0.2:9/live.mp3")  # not on the allowlist
    scene.live_start("live-creds", url=f"http://user:pw@127.0.0.1:{scene.source.port}/x.mp3")
    operator.publish(COMMUNE_CMD, scene.command("live-stop-none", "live_stop"))
    wait_until(lambda: len(events(operator, "live-refused")) == 3, "three refusals")
    refused = {e["id"]: e["reason"] for e in events(operator, "live-refused")}
    assert "allowlist" in refused["live-far"]
    assert "credentials" in refused["live-creds"]
    assert "no live relay" in refused["live-stop-none"]
    time.sleep(1.0)
    assert not events(operator, "live-started") and heard_runs(scene, 660) == 0
