"""Restarted inside a slot, the station joins at the right offset and reports `partial`;
occurrences that went by while it was down are reported `missed`. An offline station (no
broker) keeps its reports in the outbox, which is where this test reads them."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.outbox import Outbox
from tests.harness.audio import analyse_pcm, make_tone
from tests.harness.clock import FakeClock
from tests.harness.trust import envelope, make_station, playlist_body

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
HANOI = ZoneInfo("Asia/Ho_Chi_Minh")


def asruns(outbox: Path) -> list[dict[str, object]]:
    db = sqlite3.connect(outbox)
    try:
        rows = db.execute("SELECT payload FROM report WHERE kind = 'asrun' ORDER BY seq").fetchall()
    finally:
        db.close()
    return [json.loads(base64.b64decode(json.loads(p)["payload"])) for (p,) in rows]


def test_restart_joins_late_and_reports_missed(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    station = make_station(tmp_path / "station", FakeClock(now))
    config = station.config
    station.store.close()
    tone = tmp_path / "tone.mp3"
    make_tone(tone, 1000, 20.0)
    data = tone.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    config.paths.cache.mkdir(parents=True, exist_ok=True)
    (config.paths.cache / sha).write_bytes(data)  # already cached before the outage

    def slot(slot_id: str, at: datetime) -> dict[str, object]:
        local = at.astimezone(HANOI)
        return {"id": slot_id, "start": local.strftime("%H:%M:%S"),
                "dates": [local.date().isoformat()], "items": ["tone"]}  # fmt: skip

    # Slot starts are whole seconds: the on-now slot began 8 s and a fraction ago.
    on_now = (now - timedelta(seconds=8)).replace(microsecond=0)
    media = {"tone": {"url": "https://media.example.vn/tone.mp3", "sha256": sha,
                      "bytes": len(data), "duration_s": 20.0}}  # fmt: skip
    doc = playlist_body(
        version=1,
        valid_from=(now - timedelta(hours=1)).isoformat(),
        media=media,
        slots=[
            slot("gone-by", now - timedelta(minutes=10)),
            slot("on-now", on_now),
        ],
    )
    signed = tmp_path / "playlist.json"
    signed.write_bytes(envelope("playlist", doc, "playlist"))
    env = dict(os.environ, LOA_CLOCK_TRUST="system", LOA_HAL="sim")
    config_path = tmp_path / "station" / "station.toml"
    assert (
        subprocess.run(
            [str(BIN / "loa-agent"), "ingest", "--config", str(config_path), str(signed)],
            env=env,
            capture_output=True,
            check=False,
            timeout=60,
        ).returncode
        == 0
    )
    # The station was last alive 20 minutes ago: it went down before both occurrences.
    outbox = Outbox(config.paths.outbox)
    outbox.set_alive(now - timedelta(minutes=20))
    outbox.close()
    text = config_path.read_text().replace("[audio]\n", "[audio]\nwarmup_s = 0\nhold_s = 0\n")
    config_path.write_text(text)

    run = [str(BIN / "loa-agent"), "run", "--config", str(config_path)]
    launched = datetime.now(UTC)
    agent = subprocess.Popen(run, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and len(asruns(config.paths.outbox)) < 2:
            time.sleep(0.2)  # polling a file another process writes, with a deadline
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=20)
    records = {r["slot"]: r for r in asruns(config.paths.outbox)}
    assert set(records) == {"gone-by", "on-now"}, err.decode()[-2000:]
    assert records["gone-by"]["outcome"] == "missed"
    assert records["on-now"]["outcome"] == "partial"
    assert records["on-now"]["reason"] == "joined late after a restart"
    # Joined about 8 s in, so about 12 s of the 20 s tone went out (the WAV speaker shows it):
    # at most what was left when the agent was launched, less its start-up (under 3 s, even on
    # a loaded machine).
    left_at_launch = 20.0 - (launched - on_now).total_seconds()
    played = float(records["on-now"]["played_s"])  # type: ignore[arg-type]
    assert left_at_launch - 3.0 < played <= left_at_launch + 0.2, (played, left_at_launch)
    with wave.open(str(config.audio.wav), "rb") as wav:
        report = analyse_pcm(wav.readframes(wav.getnframes()))
    assert abs(report.seconds - played) < 0.2
