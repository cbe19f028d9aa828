"""Memory: resident set size of a real ``loa-agent run`` while it plays a 60-minute MP3.

A station is made the way a province makes one (``loa-province keygen/keyring``,
``loa-provision init`` with no broker, so it runs offline), a playlist with one slot playing a
generated 60-minute MP3 is signed (``loa-province sign``) and applied with ``loa-agent ingest``
before the agent starts; the agent fetches the media from a loopback HTTP server and plays it
at the slot's time. ``LOA_HAL=sim``: MockFactory relays and the WAV sink, which is not paced,
so the agent decodes and writes the hour as fast as it can: the worst case for memory (a paced
sound card only slows the same loop down).

RSS is read from ``/proc/<pid>/status`` (``VmRSS``) every 20 ms; ``VmHWM`` (the kernel's own
high-water mark) is read last, so a peak between two samples is not missed. The baseline is
the idle RSS of the same process in the same run: media cached, nothing playing, just before
the slot. ffmpeg, the decoder child, is reported apart.

    .venv/bin/python -m bench.memory_60min
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import RESULTS, child_pids, machine_info, make_tone, status_kb, write_result
from province.demo import Demo, playlist_doc, tune_for_demo

COMMAND = ".venv/bin/python -m bench.memory_60min"
QUICK_MINUTES = 1.0
STATION = ("25", "08230", "08230-01")
BIN = Path(sys.executable).parent
MIB = 1024 * 1024


class Sampler(threading.Thread):
    """VmRSS of the agent (and of its children, summed) every ``period_s``."""

    def __init__(self, pid: int, period_s: float = 0.02) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.period_s = period_s
        self.samples: list[tuple[float, int, int]] = []  # (monotonic, agent kB, children kB)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = status_kb(self.pid, "VmRSS")
            if rss is None:
                return
            kids = sum(status_kb(c, "VmRSS") or 0 for c in child_pids(self.pid))
            self.samples.append((time.monotonic(), rss, kids))
            self._halt.wait(self.period_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def between(self, start: float, end: float) -> list[tuple[float, int, int]]:
        return [s for s in self.samples if start <= s[0] <= end]


@contextmanager
def media_server(directory: Path) -> Iterator[str]:
    handler = partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def outbox_count(db_path: Path, kind: str, like: str = "%") -> int:
    if not db_path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return 0
    try:
        row = db.execute(
            "SELECT COUNT(*) FROM report WHERE kind = ? AND CAST(payload AS TEXT) LIKE ?",
            (kind, like),
        ).fetchone()
        return int(row[0])
    except sqlite3.Error:
        return 0
    finally:
        db.close()


def wait_for(what: str, done: Any, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if proc.poll() is not None:
            raise RuntimeError(f"loa-agent exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="programme length")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--quick", action="store_true", help=f"a {QUICK_MINUTES:g}-minute programme: a smoke run"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes = QUICK_MINUTES
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="loa-bench-memory-"))
    try:
        result = run(tmp, args.minutes)
    finally:
        if args.keep:
            print(f"work directory kept: {tmp}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["command"] = COMMAND + (" --quick" if args.quick else "")
    result["quick"] = args.quick
    if args.minutes != 60:
        result["title"] = result["title"].replace("60-minute", f"{args.minutes:g}-minute")
        result["labels"]["peak_during_play_rss_mb"] = (
            f"peak RSS of the agent while it plays the {args.minutes:g}-minute programme"
        )
    write_result("memory_60min", result, args.results)
    print(
        f"memory: idle RSS {result['idle_rss_mb']:.1f} MiB, peak RSS {result['peak_rss_mb']:.1f}"
        f" MiB (during the play {result['peak_during_play_rss_mb']:.1f} MiB); ffmpeg peak "
        f"{result['ffmpeg_peak_rss_mb']:.1f} MiB; {result['played_audio_s']:.0f} s of audio "
        f"decoded in {result['play_wall_s']:.1f} s"
    )
    return 0


def run(tmp: Path, minutes: float) -> dict[str, Any]:
    media = tmp / "media"
    media.mkdir()
    programme = media / "programme.mp3"
    t = time.monotonic()
    make_tone(programme, 440, minutes * 60, 0.5, mono_64k=True)
    encode_s = time.monotonic() - t

    demo = Demo(tmp, ["/".join(STATION)], say=lambda line: None)
    demo.make_keys()
    station_dir = tmp / "station"
    province, commune, name = STATION
    demo.cli("loa-provision", "init", "--province", province, "--commune", commune,
             "--station", name, "--keyring", tmp / "keyring-v1.json", "--dir", station_dir,
             "--clock", "system", quiet=True)  # fmt: skip
    config = station_dir / "station.toml"
    tune_for_demo(config)  # WAV sink, short warm-up and hold, media over http on loopback
    home = tmp / "home"
    home.mkdir()
    env = dict(
        os.environ, HOME=str(home), LOA_HAL="sim", LOA_CLOCK_TRUST="system", PYTHONUNBUFFERED="1"
    )
    outbox = station_dir / "state" / "outbox.db"
    with media_server(media) as url:
        slot = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=20)
        body = tmp / "playlist.json"
        doc = playlist_doc("25", "25", slot, "chuong-trinh-60", "programme", programme, url)
        body.write_text(json.dumps(doc, ensure_ascii=False))
        signed = tmp / "playlist.signed.json"
        demo.cli("loa-province", "sign", body, "--key", demo.keys / "playlist.key",
                 "--out", signed, "--home", demo.home, quiet=True)  # fmt: skip
        ingest = subprocess.run(
            [str(BIN / "loa-agent"), "ingest", "--config", str(config), str(signed)],
            env=env, capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        if ingest.returncode != 0:
            raise RuntimeError(f"loa-agent ingest failed: {ingest.stdout}{ingest.stderr}")
        log_path = tmp / "agent.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [str(BIN / "loa-agent"), "run", "--config", str(config)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        sampler = Sampler(proc.pid)
        sampler.start()
        try:
            wait_for(
                "the media to be fetched",
                lambda: outbox_count(outbox, "event", "%cached%") > 0,
                slot.timestamp() - time.time() - 3,
                proc,
            )
            slot_mono = time.monotonic() + (slot.timestamp() - time.time())
            time.sleep(max(0.0, slot_mono - 0.3 - time.monotonic()))
            idle_window = sampler.between(slot_mono - 3.3, slot_mono - 0.3)
            wait_for("the as-run record", lambda: outbox_count(outbox, "asrun") > 0, 600, proc)
            played_mono = time.monotonic()
            time.sleep(1.0)
            after_rss = status_kb(proc.pid, "VmRSS")
            hwm = status_kb(proc.pid, "VmHWM")
        finally:
            try:
                sampler.stop()
            finally:  # the agent must not outlive the benchmark, whatever failed
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
    if not idle_window or hwm is None or after_rss is None:
        raise RuntimeError(f"no RSS samples; agent log:\n{log_path.read_text()[-3000:]}")
    during = sampler.between(slot_mono - 0.3, played_mono)
    playing = [s for s in during if s[2] > 0]  # ffmpeg running
    play_wall = (playing[-1][0] - playing[0][0]) if playing else 0.0
    wav_path = station_dir / "state" / "speaker.wav"
    with wave.open(str(wav_path), "rb") as wav:
        audio_s = wav.getnframes() / wav.getframerate()
    if audio_s < minutes * 60 - 1:
        raise RuntimeError(f"the agent played {audio_s:.1f} s of a {minutes * 60:.0f} s programme")
    idle_kb = statistics.median(s[1] for s in idle_window)
    peak_play_kb = max(s[1] for s in during)
    return {
        "benchmark": "memory_60min",
        "title": "Memory: RSS of `loa-agent run` playing a 60-minute MP3 (LOA_HAL=sim, WAV sink)",
        "command": COMMAND,
        "idle_rss_mb": round(idle_kb / 1024, 1),
        "peak_rss_mb": round(max(hwm, peak_play_kb) / 1024, 1),
        "peak_during_play_rss_mb": round(peak_play_kb / 1024, 1),
        "after_play_rss_mb": round(after_rss / 1024, 1),
        "ffmpeg_peak_rss_mb": round(max(s[2] for s in during) / 1024, 1),
        "figures": [
            "peak_rss_mb",
            "peak_during_play_rss_mb",
            "after_play_rss_mb",
            "ffmpeg_peak_rss_mb",
        ],
        "labels": {
            "peak_rss_mb": "peak RSS of the agent over its life (VmHWM)",
            "peak_during_play_rss_mb": "peak RSS of the agent while it plays the hour",
            "after_play_rss_mb": "RSS of the agent 1 s after the play",
            "ffmpeg_peak_rss_mb": "peak RSS of the ffmpeg decoder (child process)",
            "idle_rss_mb": "idle, media cached",
        },
        "baselines": {
            "peak_rss_mb": "idle_rss_mb",
            "peak_during_play_rss_mb": "idle_rss_mb",
            "after_play_rss_mb": "idle_rss_mb",
        },
        "unit": "MiB",
        "played_audio_s": round(audio_s, 1),
        "play_wall_s": round(play_wall, 1),
        "samples": len(sampler.samples),
        "media": {
            "minutes": minutes,
            "format": "MP3 64 kb/s mono 48 kHz, 440 Hz sine",
            "bytes": programme.stat().st_size,
            "encode_s": round(encode_s, 1),
        },
        "method": {
            "rss": "VmRSS from /proc/<pid>/status every 20 ms; VmHWM at the end",
            "idle": "median VmRSS over the 3 s before the slot, media already cached",
            "peak_rss_mb": "max(VmHWM over the process's life, sampled peak during the play)",
        },
        "machine": machine_info(),
    }


if __name__ == "__main__":
    sys.exit(main())
