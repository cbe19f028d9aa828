"""Footprint: memory, CPU and start-up time of one idle station agent.

The real ``loa-agent run`` (``LOA_HAL=sim``: MockFactory relays, PyAudio into an ALSA ``file``
sink to ``null``), provisioned by ``loa-provision``'s own code, connected with its own
certificate to a real mosquitto (mutual TLS, the province's ACL, ``tests.harness.broker``), at
the agent's default heartbeat and keepalive. Before it starts, a signed playlist is applied with
``loa-agent ingest``: one slot twelve hours ahead, its media served on loopback, so the agent
fetches and caches it and then has nothing to do. It runs as systemd runs it: ``NOTIFY_SOCKET``
names a datagram socket this benchmark binds, ``WATCHDOG_USEC`` is the unit's ``WatchdogSec``.

- ``ready_s``: from ``Popen`` to the ``READY=1`` datagram;
- the window starts once the media is cached (the ``cached`` event in the outbox) and lasts 60 s
  (``--quick``: 10 s);
- ``idle_cpu_pct``: (utime + stime) of the agent over the window, from ``/proc/<pid>/stat``, as
  a percentage of one core;
- ``idle_rss_mb``: ``VmRSS`` from ``/proc/<pid>/status`` at the end of the window; the largest
  value sampled (every 0.5 s) and ``VmHWM`` are in the detail.

Baseline, in the same run and over the same window, side by side with the agent: the floor of
any Python MQTT client, a bare ``python -c`` (the same interpreter and paho) that connects one
client with mutual TLS to the same broker at the agent's keepalive and then waits. Its
``ready_s`` is from ``Popen`` to its CONNACK. The interpreter alone is in the detail as a
second, lower reference (``python -c`` sleeping).

Targets: idle RSS <= 50 MB (MiB here), idle CPU <= 1 % of one core.

    .venv/bin/python -m bench.footprint [--quick] [--results DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.config import BrokerConfig, ReportsConfig
from bench.common import (
    CLOCK_TICKS,
    RESULTS,
    ROOT,
    cpu_seconds,
    machine_info,
    make_tone,
    status_kb,
    write_result,
)
from bench.memory_60min import media_server, outbox_count
from province.demo import playlist_doc
from province.mosquitto import find_mosquitto
from tests.harness.broker import MosquittoBroker
from tests.harness.notify import NotifyListener
from tests.harness.station_proc import BIN, provision_station
from tests.harness.trust import STATION, envelope

COMMAND = ".venv/bin/python -m bench.footprint"
TARGET_RSS_MB = 50.0
TARGET_CPU_PCT = 1.0
FLOOR_CN = "bench-floor"  # the baseline client's identity on the broker
SAMPLE_S = 0.5
UNIT = ROOT / "systemd" / "loa-agent.service"

# The floor: one paho client, mutual TLS, idle. Prints "connected" on its CONNACK.
FLOOR_SCRIPT = """
import sys, ssl, threading
import paho.mqtt.client as mqtt
host, port, ca, cert, key, keepalive = sys.argv[1:7]
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-floor",
                     protocol=mqtt.MQTTv5)
client.tls_set(ca_certs=ca, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
client.on_connect = lambda *a: print("connected", flush=True)
client.connect(host, int(port), keepalive=int(keepalive))
client.loop_start()
threading.Event().wait()
"""
INTERPRETER_SCRIPT = "import threading; print('connected', flush=True); threading.Event().wait()"


def unit_watchdog_usec(unit: Path = UNIT) -> int | None:
    """``WatchdogSec=`` of the station's unit, in microseconds (plain seconds only)."""
    found = re.search(r"^WatchdogSec=(\d+)\s*$", unit.read_text(), re.MULTILINE)
    return int(found.group(1)) * 1_000_000 if found else None


class Watched:
    """A process whose CPU time and RSS are read from /proc over a window."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], started: float) -> None:
        self.name = name
        self.proc = proc
        self.started = started
        self.ready: float | None = None
        self.rss_kb: list[int] = []
        self.cpu_start: float | None = None
        self.cpu_end: float | None = None

    def sample(self) -> None:
        rss = status_kb(self.proc.pid, "VmRSS")
        if rss is not None:
            self.rss_kb.append(rss)


def wait_line(proc: subprocess.Popen[bytes], expected: str, timeout_s: float) -> float:
    """Wait for ``expected`` on the process's stdout; the monotonic time it came."""
    assert proc.stdout is not None
    found: list[float] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.decode(errors="replace").strip() == expected:
                found.append(time.monotonic())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not found:
        raise RuntimeError(f"no {expected!r} from {proc.args!r} within {timeout_s:.0f} s")
    return found[0]


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def run(tmp: Path, window_s: float, quick: bool) -> dict[str, Any]:
    executable = find_mosquitto()
    if executable is None:
        raise RuntimeError("mosquitto is not installed (make sysdeps)")
    broker = MosquittoBroker(
        tmp / "broker", stations=[STATION], operators=[("province-25", "25")],
        executable=executable,
    )  # fmt: skip
    broker.start()
    listener = NotifyListener("loa-bench-notify")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        heartbeat_s = ReportsConfig().heartbeat_s
        keepalive_s = BrokerConfig().keepalive_s
        # The product's defaults: provision_station would set a 2 s heartbeat for tests.
        station = provision_station(
            tmp / "station", broker, STATION, reports=f"heartbeat_s = {heartbeat_s}\n"
        )
        config = station.directory / "station.toml"
        media = tmp / "media"
        media.mkdir()
        programme = media / "programme.mp3"
        make_tone(programme, 440, 60, 0.5, mono_64k=True)
        env = dict(
            os.environ, HOME=str(station.directory / "home"), LOA_HAL="sim",
            LOA_CLOCK_TRUST="system", PYTHONUNBUFFERED="1",
        )  # fmt: skip
        env.pop("LOA_FAULT", None)
        with media_server(media) as url:
            slot = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=12)
            doc = playlist_doc("25", "25", slot, "evening", "programme", programme, url)
            signed = tmp / "playlist.signed.json"
            signed.write_bytes(envelope("playlist", doc, "playlist"))
            ingest = subprocess.run(
                [str(BIN / "loa-agent"), "ingest", "--config", str(config), str(signed)],
                env=env, capture_output=True, text=True, check=False, timeout=60,
            )  # fmt: skip
            if ingest.returncode != 0:
                raise RuntimeError(f"loa-agent ingest failed: {ingest.stdout}{ingest.stderr}")

            watchdog = unit_watchdog_usec()
            agent_env = dict(env, NOTIFY_SOCKET=listener.address)
            if watchdog is not None:
                agent_env["WATCHDOG_USEC"] = str(watchdog)
            cert, key = broker.client_credentials(FLOOR_CN)
            floor_args = [broker.host, str(broker.port), str(broker.ca_path), str(cert),
                          str(key), str(keepalive_s)]  # fmt: skip
            with station.log.open("ab") as log:
                started = time.monotonic()
                agent_proc = subprocess.Popen(
                    [str(BIN / "loa-agent"), "run", "--config", str(config)],
                    env=agent_env, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            processes.append(agent_proc)
            agent = Watched("agent", agent_proc, started)
            floors = []
            for name, script, args in (
                ("paho_client", FLOOR_SCRIPT, floor_args),
                ("interpreter", INTERPRETER_SCRIPT, []),
            ):
                began = time.monotonic()
                proc = subprocess.Popen(
                    [sys.executable, "-c", script, *args], env=env, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                processes.append(proc)
                floors.append(Watched(name, proc, began))
            for floor in floors:
                floor.ready = wait_line(floor.proc, "connected", 30)
            outbox = station.directory / "state" / "outbox.db"
            deadline = time.monotonic() + 60
            while agent.ready is None or outbox_count(outbox, "event", "%cached%") == 0:
                if agent_proc.poll() is not None:
                    raise RuntimeError(f"loa-agent exited: {station.log_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"no READY=1 and cached media within 60 s: {station.log_text()[-3000:]}"
                    )
                agent.ready = listener.first("READY")
                time.sleep(0.05)
            time.sleep(1.0)  # the fetch's own tail (fsyncs, its events) is not idle time
            everyone = [agent, *floors]
            window_start = time.monotonic()
            for watched in everyone:
                watched.cpu_start = cpu_seconds(watched.proc.pid)
            while time.monotonic() - window_start < window_s:
                for watched in everyone:
                    watched.sample()
                time.sleep(SAMPLE_S)
            for watched in everyone:
                watched.cpu_end = cpu_seconds(watched.proc.pid)
                watched.sample()
            window = time.monotonic() - window_start
            hwm = status_kb(agent_proc.pid, "VmHWM")
            threads = len(list(Path(f"/proc/{agent_proc.pid}/task").iterdir()))
            exit_code = stop(agent_proc)
    finally:
        for proc in processes:
            stop(proc)
        listener.close()
        broker.stop()
    figures = {w.name: describe(w, window) for w in everyone}
    a, p, i = figures["agent"], figures["paho_client"], figures["interpreter"]
    return {
        "benchmark": "footprint",
        "title": "Footprint of one idle `loa-agent run` (LOA_HAL=sim, connected, nothing due)",
        "command": COMMAND + (" --quick" if quick else ""),
        "quick": quick,
        "idle_rss_mb": a["rss_end_mb"],
        "baseline_idle_rss_mb": p["rss_end_mb"],
        "idle_cpu_pct": a["cpu_pct"],
        "baseline_idle_cpu_pct": p["cpu_pct"],
        "ready_s": a["ready_s"],
        "baseline_ready_s": p["ready_s"],
        "rss_ratio": round(a["rss_end_mb"] / p["rss_end_mb"], 2),
        "figures": ["idle_rss_mb", "idle_cpu_pct", "ready_s", "rss_ratio"],
        "labels": {
            "idle_rss_mb": f"idle agent RSS (VmRSS) at the end of a {window_s:.0f} s window; "
            f"target <= {TARGET_RSS_MB:.0f} MiB",
            "idle_cpu_pct": f"idle agent CPU, % of one core over the window; target <= "
            f"{TARGET_CPU_PCT:g} %",
            "ready_s": "start of `loa-agent run` to READY=1, seconds",
            "rss_ratio": "agent RSS / bare paho client RSS",
            "baseline_idle_rss_mb": "bare python + paho, one idle mutual-TLS MQTT client",
            "baseline_idle_cpu_pct": "bare python + paho, one idle mutual-TLS MQTT client",
            "baseline_ready_s": "bare python + paho: start to CONNACK",
        },
        "baselines": {
            "idle_rss_mb": "baseline_idle_rss_mb",
            "idle_cpu_pct": "baseline_idle_cpu_pct",
            "ready_s": "baseline_ready_s",
        },
        "unit": "MiB",
        "target": {
            "idle_rss_mb_at_most": TARGET_RSS_MB,
            "idle_cpu_pct_at_most": TARGET_CPU_PCT,
            "met": a["rss_end_mb"] <= TARGET_RSS_MB and a["cpu_pct"] <= TARGET_CPU_PCT,
        },
        "detail": {
            "window_s": round(window, 2),
            "agent": {
                **a,
                "vm_hwm_mb": None if hwm is None else round(hwm / 1024, 1),
                "threads": threads,
                "exit_code": exit_code,
            },
            "paho_client": p,
            "interpreter": i,
            "settings": {
                "heartbeat_s": heartbeat_s,
                "keepalive_s": keepalive_s,
                "watchdog_usec": watchdog,
                "sink": "PyAudio -> ALSA file plugin -> null (LOA_HAL=sim, output = device)",
                "playlist": "one slot 12 h ahead, its 60 s MP3 fetched over loopback http and "
                "cached before the window",
            },
            "method": {
                "cpu": "utime+stime from /proc/<pid>/stat at the window's ends, in clock ticks "
                f"of 1/{CLOCK_TICKS} s (a resolution of {100 / CLOCK_TICKS / window:.3f} % over "
                "this window); the agent has no child process while idle",
                "rss": f"VmRSS from /proc/<pid>/status every {SAMPLE_S} s and at the end",
                "ready": "Popen to the READY=1 datagram on NOTIFY_SOCKET (agent) or the "
                "'connected' line after CONNACK (paho client)",
                "side_by_side": "agent and both baselines run at once over the same window",
            },
        },
        "machine": machine_info(),
    }


def describe(watched: Watched, window: float) -> dict[str, Any]:
    if watched.cpu_start is None or watched.cpu_end is None or not watched.rss_kb:
        raise RuntimeError(f"{watched.name} ended during the window")
    ready = None if watched.ready is None else round(watched.ready - watched.started, 3)
    return {
        "rss_end_mb": round(watched.rss_kb[-1] / 1024, 1),
        "rss_max_mb": round(max(watched.rss_kb) / 1024, 1),
        "cpu_s": round(watched.cpu_end - watched.cpu_start, 3),
        "cpu_pct": round(100 * (watched.cpu_end - watched.cpu_start) / window, 3),
        "ready_s": ready,
        "samples": len(watched.rss_kb),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 10 s window instead of 60 s")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="loa-bench-footprint-") as tmp:
        result = run(Path(tmp), 10.0 if args.quick else 60.0, args.quick)
    path = write_result("footprint", result, args.results)
    met = "met" if result["target"]["met"] else "NOT met"
    print(
        f"footprint: idle RSS {result['idle_rss_mb']:.1f} MiB (paho floor "
        f"{result['baseline_idle_rss_mb']:.1f}), CPU {result['idle_cpu_pct']:.3f} % of a core "
        f"(floor {result['baseline_idle_cpu_pct']:.3f} %), READY=1 after "
        f"{result['ready_s']:.2f} s (floor connected after {result['baseline_ready_s']:.2f} s);"
        f" targets {met}"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
