"""The province side and the station probes of the crash-point suite (tests/e2e/test_crash_points).

``Province`` is one real mosquitto (mutual TLS, the generated ACL), one collector storing into
a SQLite registry (so receipts flow back to the stations), a desk client that publishes retained
envelopes, and a media server on loopback; one per test module. ``CrashStation`` is a
provisioned ``loa-agent run`` (LOA_HAL=sim) that can be started with crash points armed
(``LOA_FAULT``), and read from outside: its outbox, its trust database, its cache, what the
registry stored of it. Everything here waits on facts with deadlines; nothing sleeps to assert.

The link faults (tests/e2e/test_fault_link) use the same province from outside: the broker
SIGKILLed and restarted on its port (``kill_broker``/``restart_broker``), collectors stopped,
started and added on the shared subscription (``restart_collector``/``add_collector``), a
station enrolled behind a proxy (``enrol(..., broker_url=...)``) and with every play kept in a
file of its own (``plays``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent import faults
from agent.core.targets import StationId
from agent.link import TlsFiles
from agent.outbox import KINDS
from hal.audio import FRAME_BYTES, SAMPLE_RATE
from province.collector import Collector
from province.registry import Registry
from tests.harness.audio import analyse_pcm, make_tone
from tests.harness.broker import MosquittoBroker, Recorder, close_client, connect_client
from tests.harness.media_server import MediaServer
from tests.harness.paced_card import plays as paced_plays
from tests.harness.station_proc import StationProcess, provision_station
from tests.harness.trust import body_bytes, envelope, keyring_body, playlist_body

BIN = Path(sys.executable).parent
HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
COLLECTOR, DESK = "province-25", "province-25.desk"
OPERATORS = ((COLLECTOR, "25"), (DESK, "25"))
CRASH_LINE = re.compile(r"^loa fault: crash at (\S+) \(pass (\d+)\)$", re.M)
_HASH_NAME = re.compile(r"[0-9a-f]{64}")


def wait(condition: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll a fact another process makes true, with a deadline (TimeoutError)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.1f} s")
        time.sleep(0.02)


def whole_second(earliest: datetime) -> datetime:
    """The first whole second after ``earliest``: slot starts are written HH:MM:SS."""
    return earliest.replace(microsecond=0) + timedelta(seconds=1)


def sleep_until(moment: datetime) -> None:
    """A planned instant (scheduling, not a wait for a fact)."""
    left = (moment - datetime.now(UTC)).total_seconds()
    if left > 0:
        time.sleep(left)


@dataclass
class Tone:
    name: str
    hz: float
    seconds: float
    entry: dict[str, Any]  # the playlist's media entry

    @property
    def sha256(self) -> str:
        return str(self.entry["sha256"])


@dataclass
class Province:
    tmp: Path
    broker: MosquittoBroker
    registry: Registry  # the test's own connection
    collector: Collector
    collector_registry: Registry
    media: MediaServer
    desk: Recorder
    _tones: int = 0
    # Collectors beside ``collector`` on the shared subscription, by CN.
    others: dict[str, tuple[Collector, Registry]] = field(default_factory=dict)
    _gone_duplicates: int = 0  # counted by collectors stopped since
    broker_kills: int = 0
    collector_restarts: int = 0

    def enrol(
        self,
        path: str,
        *,
        heartbeat_s: float = 1.0,
        broker_url: str | None = None,
        plays_to_files: bool = False,
    ) -> CrashStation:
        """A provisioned station (not started). ``broker_url``: reach the broker through
        something else (a proxy); ``plays_to_files``: every opening of the card is kept in a
        file of its own (ALSA ``file`` plugin, ``truncate false``), see ``CrashStation.plays``."""
        directory = self.tmp / path.replace("/", "_")
        proc = provision_station(
            directory, self.broker, path, reports=f"heartbeat_s = {heartbeat_s:g}\n",
            broker_url=broker_url,
        )  # fmt: skip
        if plays_to_files:
            home = directory / "home"
            (home / ".asoundrc").write_text(
                'pcm.!default {\n type file\n slave.pcm "null"\n'
                f' file "{home / "speaker.raw"}"\n format "raw"\n truncate false\n}}\n'
            )
        keys = directory / "keys"
        self.registry.add_station(
            StationId.parse(path), (keys / "station.crt").read_bytes(),
            (keys / "station.pub").read_text().strip(),
        )  # fmt: skip
        return CrashStation(self, proc)

    def tone(self, hz: float, seconds: float) -> Tone:
        """A new MP3 tone (its own bytes, so its own hash) served by the media server."""
        self._tones += 1
        name = f"tone-{self._tones:03d}"
        path = self.tmp / f"{name}.mp3"
        make_tone(path, hz, seconds, amplitude=0.5)
        data = path.read_bytes()
        entry = {
            "url": self.media.add(f"/{name}.mp3", data),
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "duration_s": seconds, "title": name, "category": "news",
        }  # fmt: skip
        return Tone(name, hz, seconds, entry)

    def publish(self, topic: str, data: bytes) -> None:
        reason = self.desk.publish(topic, data, retain=True)
        if reason.is_failure:
            raise RuntimeError(f"{topic} refused: {reason}")

    def clear(self, topic: str) -> None:
        self.desk.publish(topic, b"", retain=True)

    def record_playlist(self, topic: str, doc: dict[str, Any], signed: bytes) -> None:
        """What the province's ``publish`` keeps of a playlist: coverage reads it from here."""
        self.registry.record_published(
            topic, "playlist", "25", str(doc["target"]), f"v{doc['version']}", body_bytes(doc),
            signed,
        )  # fmt: skip

    def duplicates(self) -> int:
        """Copies of stored reports the collectors received again, over every collector this
        province has run (stopped ones included)."""
        running = [self.collector, *(c for c, _ in self.others.values())]
        return self._gone_duplicates + sum(c.stats().duplicates for c in running)

    # -- faults of the province side -------------------------------------------------------

    def kill_broker(self) -> None:
        """SIGKILL the broker (no clean goodbye to anyone; ``persistence false``, so retained
        messages and queued sessions go with it, as at a province broker that crashed)."""
        self.broker.kill()
        self.broker_kills += 1

    def restart_broker(self, timeout: float = 10.0) -> None:
        """The broker back on its port; connects a new desk (the desk's retained set carried
        over, cleared at close) and waits until every collector has connected again (its
        SUBSCRIBE follows from its own callback: a report may still beat it, as in the field)."""
        self.broker.start(timeout, same_port=True)
        retained = set(self.desk.retained)
        close_client(self.desk.client)
        self.desk = Recorder(connect_client(self.broker, DESK))
        self.desk.retained = retained
        for collector in [self.collector, *(c for c, _ in self.others.values())]:

            def back(c: Collector = collector) -> bool:
                return c.stats().connected

            wait(back, "a collector back on the broker", timeout + 30)

    def restart_collector(self, away_s: float = 0.0) -> None:
        """Stop the main collector (it stores what it holds and sends the receipts it owes),
        leave it away for the planned ``away_s`` (the broker queues its persistent session's
        share meanwhile), and start a new one with the same identity, so the same session."""
        self._gone_duplicates += self.collector.stats().duplicates
        self.collector.stop()
        self.collector_registry.close()
        time.sleep(away_s)  # a planned absence, not a wait for a fact
        self.collector, self.collector_registry = start_collector(self.broker, self.db_path,
                                                                  COLLECTOR)  # fmt: skip
        self.collector_restarts += 1

    def add_collector(self, cn: str) -> None:
        """One more collector on the shared subscription (its CN among the operators)."""
        self.others[cn] = start_collector(self.broker, self.db_path, cn)

    def stop_collector(self, cn: str) -> None:
        collector, registry = self.others.pop(cn)
        self._gone_duplicates += collector.stats().duplicates
        collector.stop()
        registry.close()

    @property
    def db_path(self) -> Path:
        return self.tmp / "province" / "registry.db"

    def close(self) -> None:
        self.desk.clear_retained()
        close_client(self.desk.client)
        for cn in list(self.others):
            self.stop_collector(cn)
        self.collector.stop()
        self.collector_registry.close()
        self.registry.close()


def start_collector(broker: MosquittoBroker, db_path: Path, cn: str) -> tuple[Collector, Registry]:
    """A running, subscribed collector as ``cn`` with a registry connection of its own."""
    cert, key = broker.client_credentials(cn)
    registry = Registry(db_path)
    collector = Collector(
        registry, broker.host, broker.port, TlsFiles(broker.ca_path, cert, key), "25",
        client_id=cn,
    )  # fmt: skip
    collector.start()
    if not collector.wait_ready(10):
        collector.stop()
        registry.close()
        raise RuntimeError(f"the collector {cn} did not subscribe\n{broker.log_text()}")
    return collector, registry


def open_province(
    tmp: Path, stations: Sequence[str], executable: str,
    operators: Sequence[tuple[str, str]] = OPERATORS,
) -> Province:  # fmt: skip
    broker = MosquittoBroker(
        tmp / "broker", stations=tuple(stations), operators=operators, executable=executable
    )
    broker.start()
    try:
        db_path = tmp / "province" / "registry.db"
        registry = Registry(db_path)
        registry.set_meta("province", "25")
        collector, collector_registry = start_collector(broker, db_path, COLLECTOR)
        media = MediaServer()
        media.__enter__()
        desk = Recorder(connect_client(broker, DESK))
    except BaseException:
        broker.stop()
        raise
    province = Province(tmp, broker, registry, collector, collector_registry, media, desk)
    return province


def close_province(province: Province) -> None:
    try:
        province.close()
    finally:
        province.media.__exit__(None, None, None)
        province.broker.stop()


@dataclass
class Slot:
    id: str
    start: datetime  # UTC, whole second
    tone: Tone

    def body(self) -> dict[str, Any]:
        local = self.start.astimezone(HANOI)
        return {
            "id": self.id, "start": local.strftime("%H:%M:%S"),
            "dates": [local.date().isoformat()], "items": [self.tone.name],
            "zones": ["all"], "volume": 100, "priority": 50,
        }  # fmt: skip

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.tone.seconds)


def playlist_envelope(target: str, version: int, slots: Sequence[Slot]) -> bytes:
    return envelope("playlist", playlist_doc(target, version, slots), "playlist")


def playlist_doc(target: str, version: int, slots: Sequence[Slot]) -> dict[str, Any]:
    """The playlist's body (``body_bytes`` of it is what the registry records)."""
    now = datetime.now(UTC).astimezone(HANOI)
    return playlist_body(
        version=version, target=target,
        media={s.tone.name: s.tone.entry for s in slots},
        slots=[s.body() for s in slots],
        issued_at=(now - timedelta(minutes=1)).isoformat(timespec="seconds"),
        valid_from=(now - timedelta(days=1)).isoformat(timespec="seconds"),
    )  # fmt: skip


def keyring_envelope(version: int) -> bytes:
    return envelope("keyring", keyring_body(version), "root1", "root2")


@dataclass(frozen=True)
class Play:
    file: str
    freq_hz: float | None
    seconds: float
    written: datetime  # UTC, the file's last write

    def is_tone(self, tone: Tone) -> bool:
        return self.freq_hz is not None and abs(self.freq_hz - tone.hz) < tone.hz / 50


@dataclass
class CrashStation:
    province: Province
    proc: StationProcess
    kills: int = 0
    restarts: int = 0
    crashes: list[tuple[str, int, datetime]] = field(default_factory=list)  # point, pass, when
    env: dict[str, str] = field(default_factory=dict)  # more environment for every start

    @property
    def path(self) -> str:
        return self.proc.station.path

    @property
    def directory(self) -> Path:
        return self.proc.directory

    def start(self, fault: str | None = None) -> None:
        """``loa-agent run``, with ``LOA_FAULT=fault`` or with no fault at all."""
        env = dict(os.environ, HOME=str(self.directory / "home"), LOA_HAL="sim",
                   LOA_CLOCK_TRUST="system", PYTHONUNBUFFERED="1")  # fmt: skip
        env.pop(faults.ENV, None)
        env.update(self.env)
        if fault is not None:
            env[faults.ENV] = fault
        if self.proc.process is not None:
            self.restarts += 1
        with self.proc.log.open("ab") as log:
            log.write(f"--- start {datetime.now(UTC).isoformat()} fault={fault}\n".encode())
            log.flush()
            self.proc.process = subprocess.Popen(
                [str(BIN / "loa-agent"), "run", "--config", str(self.directory / "station.toml")],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def running(self) -> bool:
        return self.proc.process is not None and self.proc.process.poll() is None

    def wait_crash(self, point: str, timeout: float) -> datetime:
        """Wait for the armed point to kill the agent; returns when it died (as seen here)."""
        process = self.proc.process
        assert process is not None
        try:
            wait(lambda: process.poll() is not None, f"the crash at {point}", timeout)
        except TimeoutError:
            raise TimeoutError(f"{point} never killed the agent\n{self.tail()}") from None
        died = datetime.now(UTC)
        seen = CRASH_LINE.findall(self.proc.log_text())
        if process.returncode != -signal.SIGKILL or len(seen) != self.kills + 1:
            raise RuntimeError(f"not killed by {point} (rc {process.returncode})\n{self.tail()}")
        name, passes = seen[-1]
        if name != point:
            raise RuntimeError(f"killed at {name}, armed {point}")
        self.kills += 1
        self.crashes.append((point, int(passes), died))
        return died

    def stop(self, timeout: float = 20.0) -> int:
        process = self.proc.process
        assert process is not None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return process.wait(timeout)

    def tail(self, chars: int = 4000) -> str:
        return self.proc.log_text()[-chars:]

    # -- the station's own files, read from outside ---------------------------------------------

    def _query(self, db: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        path = self.directory / "state" / db
        if not path.exists():
            return []
        conn = sqlite3.connect(path, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()

    def produced(self, kind: str) -> int:
        rows = self._query("outbox.db", "SELECT next_seq FROM counter WHERE kind = ?", (kind,))
        return int(rows[0][0]) if rows else 0

    def unsent(self, kind: str) -> set[int]:
        rows = self._query("outbox.db", "SELECT seq FROM report WHERE kind = ?", (kind,))
        return {int(s) for (s,) in rows}

    def on_air(self) -> set[str]:
        return {str(k) for (k,) in self._query("outbox.db", "SELECT key FROM on_air")}

    def booked(self) -> dict[str, str]:
        rows = self._query("outbox.db", "SELECT key, outcome FROM occurrence")
        return {str(k): str(o) for k, o in rows}

    def versions(self) -> tuple[int, int]:
        """(the playlist version held for this station's own stream, the keyring version)."""
        playlist = self._query(
            "trust.db", "SELECT version FROM playlist WHERE target = ?", (self.path,)
        )
        keyring = self._query("trust.db", "SELECT MAX(version) FROM keyring")
        return (int(playlist[0][0]) if playlist else 0, int(keyring[0][0] or 0) if keyring else 0)

    def cache_problems(self) -> list[str]:
        """Files under a hash name whose bytes do not hash to it; partial files left over."""
        root = self.directory / "cache"
        problems = []
        for entry in sorted(root.iterdir()) if root.is_dir() else []:
            if _HASH_NAME.fullmatch(entry.name):
                if hashlib.sha256(entry.read_bytes()).hexdigest() != entry.name:
                    problems.append(f"{entry.name}: content does not match its name")
            elif entry.name.startswith(".partial-"):
                problems.append(f"{entry.name}: a partial file left behind")
        return problems

    def plays(self) -> list[Play]:
        """What each opening of the card was handed (station enrolled with ``plays_to_files``),
        in the order the card was opened: the tone's frequency, its length, when the file was
        last written (an unpaced sink takes a play at once, so about when it started)."""
        found = []
        for path in paced_plays(self.directory / "home" / "speaker.raw"):
            pcm = path.read_bytes()
            if len(pcm) < FRAME_BYTES * SAMPLE_RATE // 100:
                continue  # the card opened and (almost) nothing written
            report = analyse_pcm(pcm)
            written = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            found.append(Play(path.name, report.freq_hz, report.seconds, written))
        return found

    def cached(self, sha256: str) -> bool:
        return (self.directory / "cache" / sha256).exists()

    def ingest(self, data: bytes, name: str) -> tuple[int, str]:
        """``loa-agent ingest`` of an envelope file: (exit status, its stdout line)."""
        path = self.directory / name
        path.write_bytes(data)
        env = dict(os.environ, LOA_HAL="sim", LOA_CLOCK_TRUST="system")
        env.pop(faults.ENV, None)
        done = subprocess.run(
            [str(BIN / "loa-agent"), "ingest", "--config", str(self.directory / "station.toml"),
             str(path)],
            env=env, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        return done.returncode, done.stdout.decode().strip()

    # -- what the registry stored ----------------------------------------------------------------

    def stored(self, kind: str) -> list[int]:
        return [r.seq for r in self.province.registry.reports(kind, [self.path])]

    def asruns(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.province.registry.reports("asrun", [self.path])]

    def online(self) -> bool:
        state = self.province.registry.station_state(self.path)
        return state is not None and state.online

    def session(self) -> int:
        """The session counter of the last birth the registry stored (0: none yet): it grows
        with every connect, so a new value says the station is back on the broker."""
        state = self.province.registry.station_state(self.path)
        if state is None or not state.online:
            return 0
        return int(json.loads(state.body).get("session", 0))

    def settled(self) -> bool:
        """No hole left in the registry: every kind's watermark is its highest stored seq."""
        registry = self.province.registry
        marks = registry.watermarks(self.path)
        return not registry.gaps(self.path) and all(
            marks.get(k, -1) == (self.stored(k) or [-1])[-1] for k in KINDS
        )
