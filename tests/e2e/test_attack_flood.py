"""An MQTT flood against a station on air (issue 13, part "attacks").

A real ``loa-agent run`` (LOA_HAL=sim) plays a schedule of short tones, each slot its own
frequency, into a paced sound card: a private PulseAudio null sink whose monitor capture stamps
every sample with the instant the sink consumed it (``tests/harness/sink_clock.py``, the
start-accuracy benchmark's method). The province is real: mosquitto with mutual TLS and the
generated ACL, a collector storing into a SQLite registry, a media server on loopback.

The first slots play undisturbed: the baseline. Then a flooder process (``tests/harness/
flooder.py``) holding a stolen province-operator certificate (the only kind of identity the ACL
lets publish on a station's topics) publishes thousands of bogus messages a second on the
station's down topics for as long as the remaining slots last: random bytes, broken JSON,
validly shaped envelopes with bad signatures, replays of the accepted playlist, retained junk,
envelopes over the 3 MiB cap. It aims above what the trust core verifies a second on this
machine, so the flood outruns the agent. A station and another province's operator try the same
topics and are refused by the broker (a failed PUBACK, and mosquitto's "Denied PUBLISH").
After the flood the desk publishes playlist v2; its arrival in the station's trust database
(read from outside) proves every flood message delivered before it has been dealt with.

Measured from outside and recorded (``tests/harness/reliability.py``) before any assertion:

- the flood rate the broker received (mosquitto's own log), and what it delivered to the station;
- every slot's start error at the sink, flooded against the baseline of the same run (bar:
  ``TOLERANCE_S`` beyond the baseline's worst slot, see there);
- the agent's RSS from ``/proc`` every 50 ms, peak during and after the flood against the peak
  before it (bar ``RSS_BAR_MIB``); the broker's, where a backlog now waits (no bar);
- crashes, and ``accepted_unsigned``: the trust database may hold only the desk's playlist
  (v1 or v2) and keyring v1 (no flood envelope got in, none changed a version); ``drained``:
  v2 was applied after the flood;
- verdicts: every message the broker delivered to the station is counted in the station's
  reports (single events plus the flood gate's ``rejections-suppressed`` counts), rejections by
  code; the events the flood made the station produce stay under the gate's bound; the agent's
  log lines.

``LOA_RELIABILITY_LONG=1`` floods for a minute over twenty slots. It does not meet the bar yet:
every slot still starts on time, but the broker's backlog for the station outgrows its queue
(371,985 flood messages received, 350,009 sent on), playlist v2 published after the flood was
not applied within 180 s, and the agent's peak RSS lands at about the bar (+20.2 MiB).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.core.flood import PER_WINDOW
from agent.link import TlsFiles
from province.collector import Collector
from province.mosquitto import find_mosquitto
from province.registry import Registry
from tests.harness.broker import MosquittoBroker, Recorder, close_client, connect_client
from tests.harness.crash import (
    COLLECTOR,
    DESK,
    CrashStation,
    Province,
    Slot,
    close_province,
    playlist_envelope,
    sleep_until,
    wait,
    whole_second,
)
from tests.harness.media_server import MediaServer
from tests.harness.reliability import Scenario, record
from tests.harness.sink_clock import SinkClock, point_station_at, sink_clock

pytestmark = pytest.mark.integration

LONG = os.environ.get("LOA_RELIABILITY_LONG") == "1"
COMMAND = "LOA_RELIABILITY_LONG=1 .venv/bin/pytest -q tests/e2e/test_attack_flood.py"
STATION = "25/08230/08230-01"
OTHER_STATION = "25/08230/08230-02"
THIEF = "province-25.laptop"  # an operator certificate, stolen: it may publish anywhere in 25
FOREIGN = "province-26.desk"  # another province's operator: no right on province 25's topics
OPERATORS = ((COLLECTOR, "25"), (DESK, "25"), (THIEF, "25"), (FOREIGN, "26"))
PREFIX = f"loa/v1/{STATION}"
PLAYLIST_TOPIC = f"{PREFIX}/playlist/25"
# The down topics the flood hits (PROTOCOL.md section 2): the station's own, its commune's and
# its province's playlists, the three command topics, and a keyring version.
FLOOD_TOPICS = [
    PLAYLIST_TOPIC, f"{PREFIX}/cmd", "loa/v1/25/08230/cmd", "loa/v1/25/cmd",
    "loa/v1/25/playlist/25", "loa/v1/25/08230/playlist/25", "loa/v1/25/keyring/2",
]  # fmt: skip
# Messages a second the flooder aims at: about twice what the agent verified a second here
# (some 3,400), so the flood outruns it; 12,000 was measured too (docs/reliability.md).
RATE = float(os.environ.get("LOA_FLOOD_RATE", "6000"))
BASELINE_SLOTS = 5 if LONG else 3
FLOOD_SLOTS = 20 if LONG else 3
SPACING_S = 3 if LONG else 2
TONE_S = 0.4
# Start accuracy. bench/start_accuracy.py measures the pre-roll path at p99 1.6 ms, the method
# good to about 2 ms (docs/benchmarks.md), with the player alone on a quiet machine; the project
# has no tolerance of its own beyond that. Here the whole agent, the broker, the flooder and
# other engineers' tests share 2 cores, so the bar is relative: a flooded slot's |error| may be
# at most the baseline's worst slot of the same run plus 20 ms (ten times the method's error,
# and far below what a listener hears as late). What the flood broke was of another order:
# timers queued behind the backlog, slots about a second late or never on air.
TOLERANCE_S = 0.020
# The agent idles at about 50 MiB (bench/footprint.py), ~70 MiB here once it has played. 20 MiB
# is room for the envelopes the inbox may hold (8 MiB: two at the 3 MiB cap), paho's buffer for
# the one being read and the allocator's slack; an unbounded inbox passed it within seconds of
# falling behind (+73 MiB in 8 s at 6,000 messages a second, +185 MiB in 9 s at 12,000).
RSS_BAR_MIB = 20.0
LEGIT_PLAYLISTS = {("25", STATION, 1), ("25", STATION, 2)}
HEARTBEAT_S = 300.0
REJECTION_WINDOW_S = 1.0  # the flood gate's "minute", shortened so its summaries come in time
WATCH_S = 5.0  # the station's watch tick, which sends the gate's summaries (agent/station.py)
SENT_TO = re.compile(
    rb"Sending PUBLISH to (\S+) \(d\d, q\d, r\d, m\d+, '([^']*)',.*\((\d+) bytes\)\)"
)


def open_rig(tmp: Path, executable: str) -> Province:
    """tests/harness/crash.py's province (its ``open_province``, whose ACL has no room for
    more operators), with the thief's certificate and a foreign province's desk in the ACL."""
    broker = MosquittoBroker(
        tmp / "broker", stations=(STATION, OTHER_STATION), operators=OPERATORS,
        executable=executable,
    )  # fmt: skip
    broker.start()
    try:
        db_path = tmp / "province" / "registry.db"
        registry = Registry(db_path)
        registry.set_meta("province", "25")
        cert, key = broker.client_credentials(COLLECTOR)
        collector_registry = Registry(db_path)
        collector = Collector(
            collector_registry, broker.host, broker.port,
            TlsFiles(broker.ca_path, cert, key), "25", client_id=COLLECTOR,
        )  # fmt: skip
        collector.start()
        if not collector.wait_ready(10):
            raise RuntimeError(f"the collector did not subscribe\n{broker.log_text()}")
        media = MediaServer()
        media.__enter__()
        desk = Recorder(connect_client(broker, DESK))
    except BaseException:
        broker.stop()
        raise
    return Province(tmp, broker, registry, collector, collector_registry, media, desk)


@pytest.fixture
def province(tmp_path: Path) -> Iterator[Province]:
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("mosquitto binary not found (install the Debian package: make sysdeps)")
    made = open_rig(tmp_path / "province-rig", executable)
    try:
        yield made
    finally:
        close_province(made)


@pytest.fixture
def clock(tmp_path: Path) -> Iterator[SinkClock]:
    with sink_clock(tmp_path / "pulse") as made:
        yield made


# -- reading the processes from outside ---------------------------------------------------------


@dataclass
class RssSampler:
    """VmRSS of one process from /proc every ``period_s``, with the monotonic instant."""

    pid: int
    period_s: float = 0.05
    samples: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, KiB)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name=f"rss-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        path = Path(f"/proc/{self.pid}/status")
        while not self._stop.wait(self.period_s):
            try:
                text = path.read_text()
            except OSError:
                return  # the process is gone
            for line in text.splitlines():
                if line.startswith("VmRSS:"):
                    self.samples.append((time.monotonic(), int(line.split()[1])))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def peak_mib(self, since: float, until: float = math.inf) -> float:
        values = [kib for at, kib in self.samples if since <= at < until]
        return round(max(values) / 1024, 1) if values else 0.0


def pid_of_broker(broker: MosquittoBroker) -> int:
    """The mosquitto process running this broker's configuration, found in /proc."""
    conf = str(broker.conf_path).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if conf in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise RuntimeError("the broker's process is not in /proc")


def trust_rows(station: CrashStation) -> tuple[list[tuple[str, str, int]], list[int]]:
    """(issuer, target, version) of every stored playlist, and the stored keyring versions."""
    conn = sqlite3.connect(station.directory / "state" / "trust.db", timeout=10)
    try:
        playlists = conn.execute("SELECT issuer, target, version FROM playlist").fetchall()
        keyrings = [int(v) for (v,) in conn.execute("SELECT version FROM keyring")]
    finally:
        conn.close()
    return sorted((str(i), str(t), int(v)) for i, t, v in playlists), sorted(keyrings)


def has_playlist(station: CrashStation, version: int) -> bool:
    return ("25", STATION, version) in trust_rows(station)[0]


def events(station: CrashStation) -> list[dict[str, Any]]:
    rows = station.province.registry.reports("event", [station.path])
    return [json.loads(r.body) for r in rows]


@dataclass
class Verdicts:
    """The station's envelope verdicts as reported: by code, single events and summaries."""

    by_code: dict[str, int]
    total: int

    @classmethod
    def of(cls, reported: list[dict[str, Any]]) -> Verdicts:
        by_code: dict[str, int] = {}
        for e in reported:
            if e.get("event") != "envelope":
                continue
            if e["code"] == "rejections-suppressed":
                code, n = str(e["rejected_code"]), int(e["count"])
            else:
                code, n = str(e["code"]), 1
            by_code[code] = by_code.get(code, 0) + n
        return cls(dict(sorted(by_code.items())), sum(by_code.values()))

    def rejections(self) -> dict[str, int]:
        """Rejections only: replays of what is held are verdicts ``accepted`` (one by one up to
        the gate's limit, then counted as ``accepted-noop``)."""
        return {c: n for c, n in self.by_code.items() if c not in {"accepted", "accepted-noop"}}


def broker_log(broker: MosquittoBroker) -> dict[str, int]:
    """From mosquitto's log (log_type all): what it received from the thief, what it denied,
    and the messages with a payload it sent the station on its down topics (its receipts on
    ``.../ack`` are not envelopes; an empty retained message clears a topic and is ignored)."""
    counts = {"received_from_thief": 0, "denied": 0, "envelopes_to_station": 0}
    thief = b"Received PUBLISH from " + THIEF.encode() + b" "
    with broker.log_path.open("rb") as log:
        for line in log:
            if thief in line:
                counts["received_from_thief"] += 1
            elif b"Denied PUBLISH from" in line:
                counts["denied"] += 1
            elif (found := SENT_TO.search(line)) is not None:
                client, topic, size = found.groups()
                if client == STATION.encode() and int(size) > 0 and not topic.endswith(b"/ack"):
                    counts["envelopes_to_station"] += 1
    return counts


def refused_identities(province: Province) -> dict[str, str]:
    """A station and another province's operator publish on the station's down topics: the
    broker must refuse each (a PUBACK with a failure reason). Attempt -> the broker's answer."""
    answers: dict[str, str] = {}
    for cn in (OTHER_STATION, FOREIGN):
        client = Recorder(connect_client(province.broker, cn))
        try:
            for topic in (f"{PREFIX}/cmd", PLAYLIST_TOPIC, "loa/v1/25/keyring/2"):
                reason = client.publish(topic, b'{"payloadType": "x"}')
                answers[f"{cn} -> {topic}"] = str(reason) if reason.is_failure else "accepted"
        finally:
            close_client(client.client)
    return answers


def start_flooder(
    province: Province, tmp_path: Path, envelope: bytes, until: datetime
) -> tuple[subprocess.Popen[bytes], Path]:
    cert, key = province.broker.client_credentials(THIEF)
    (tmp_path / "v1.json").write_bytes(envelope)
    out = tmp_path / "flood.json"
    spec = {
        "host": province.broker.host, "port": province.broker.port,
        "ca": str(province.broker.ca_path), "cert": str(cert), "key": str(key), "cn": THIEF,
        "seconds": max(1.0, (until - datetime.now(UTC)).total_seconds()), "rate": RATE,
        "seed": 13, "envelope": str(tmp_path / "v1.json"), "topics": FLOOD_TOPICS,
        "junk_prefix": f"{PREFIX}/playlist", "out": str(out),
    }  # fmt: skip
    spec_path = tmp_path / "flood-spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.Popen([sys.executable, "-m", "tests.harness.flooder", str(spec_path)])
    return proc, out


def schedule(province: Province) -> tuple[list[Slot], list[Slot]]:
    """The baseline's slots, then (after a gap the flood starts in) the flooded ones."""
    n = BASELINE_SLOTS + FLOOD_SLOTS
    tones = [province.tone(500.0 + 90 * k, TONE_S) for k in range(n)]
    first = whole_second(datetime.now(UTC) + timedelta(seconds=3))
    starts = [
        first + timedelta(seconds=SPACING_S * k + 2 * (k >= BASELINE_SLOTS)) for k in range(n)
    ]
    slots = [
        Slot(f"s{k:02d}", start, tone)
        for k, (start, tone) in enumerate(zip(starts, tones, strict=True))
    ]
    return slots[:BASELINE_SLOTS], slots[BASELINE_SLOTS:]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


# -- the test -----------------------------------------------------------------------------------


def test_a_flood_outrunning_the_agent_loses_no_slot(
    province: Province, clock: SinkClock, tmp_path: Path
) -> None:
    began = time.monotonic()
    # The product's heartbeat (300 s), which also sets when unacknowledged reports are sent
    # again (3 heartbeats): with a 1 s heartbeat the resends piled up in paho's queue while the
    # receipts waited behind the flood at the broker (+10 MiB in the long run, see the report).
    st = province.enrol(STATION, heartbeat_s=HEARTBEAT_S)
    toml = st.directory / "station.toml"  # [reports] is the file's last section
    toml.write_text(toml.read_text() + f"rejection_window_s = {REJECTION_WINDOW_S:g}\n")
    point_station_at(st.directory / "home", clock.socket)
    samplers: list[RssSampler] = []
    flooder: subprocess.Popen[bytes] | None = None
    counts: dict[str, Any] = {}
    try:
        st.start()
        wait(st.online, "the station online", 30)
        assert st.proc.process is not None
        agent_rss = RssSampler(st.proc.process.pid).start()
        broker_rss = RssSampler(pid_of_broker(province.broker)).start()
        samplers += [agent_rss, broker_rss]
        baseline, flooded = schedule(province)
        slots = baseline + flooded
        v1 = playlist_envelope(st.path, 1, slots)
        province.publish(PLAYLIST_TOPIC, v1)
        wait(lambda: all(st.cached(s.tone.sha256) for s in slots), "the tones cached", 20)
        wait(lambda: has_playlist(st, 1), "playlist v1 applied", 10)
        refused = refused_identities(province)
        # The flood: from just after the baseline's last tone to just after the last flooded one.
        flood_from = baseline[-1].end + timedelta(seconds=0.3)
        flood_until = flooded[-1].end + timedelta(seconds=0.3)
        sleep_until(flood_from)
        flood_mono = time.monotonic()
        flooder, flood_out = start_flooder(province, tmp_path, v1, flood_until)
        if flooder.wait((flood_until - datetime.now(UTC)).total_seconds() + 30) != 0:
            raise RuntimeError("the flooder failed")
        flood_end = time.monotonic()
        sent = json.loads(flood_out.read_text())
        # Playlist v2 behind the flood: applied once everything ahead of it was verified.
        province.publish(PLAYLIST_TOPIC, playlist_envelope(st.path, 2, slots))
        lag_s: float | None = None
        try:
            wait(lambda: has_playlist(st, 2), "playlist v2 applied after the flood", 180)
            lag_s = round(time.monotonic() - flood_end, 2)
        except TimeoutError:
            pass
        drained = time.monotonic()
        broker = broker_log(province.broker)
        # The gate's summaries go at the first watch tick after its windows end; a shortfall
        # is recorded as verdicts_missing.
        with contextlib.suppress(TimeoutError):
            wait(
                lambda: Verdicts.of(events(st)).total >= broker["envelopes_to_station"],
                "every delivered message counted in the station's reports",
                REJECTION_WINDOW_S + WATCH_S + 10,
            )
        crashed = not st.running()
        verdicts = Verdicts.of(events(st))
        errors_base = [clock.start_error_s(s.start) for s in baseline]
        errors_flood = [clock.start_error_s(s.start) for s in flooded]
        playlists, keyrings = trust_rows(st)
        since_flood = [e for e in events(st) if datetime.fromisoformat(e["ts"]) >= flood_from]
        windows = math.ceil((drained - flood_mono) / REJECTION_WINDOW_S) + 1
        codes = len(verdicts.by_code)
        heard = [abs(e) for e in errors_base if e is not None]
        worst_base = max(heard) if len(heard) == len(baseline) else None
        late = [
            e for e in errors_flood
            if e is None or worst_base is None or abs(e) > worst_base + TOLERANCE_S
        ]  # fmt: skip
        counts = {
            "flood_sent": sent["total"],
            "flood_sent_by_kind": sent["sent"],
            "flood_seconds": sent["seconds"],
            "flood_received_by_broker": broker["received_from_thief"],
            "flood_rate_received_per_s": round(broker["received_from_thief"] / sent["seconds"]),
            "envelopes_delivered_to_station": broker["envelopes_to_station"],
            "verdicts_counted": verdicts.total,
            "verdicts_missing": broker["envelopes_to_station"] - verdicts.total,
            "drain_after_flood_s": lag_s,
            "refused_publishes": sum(1 for v in refused.values() if v != "accepted"),
            "refused_attempts": len(refused),
            "broker_denied_lines": broker["denied"],
            "slots_due": len(slots),
            "slots_on_air": sum(1 for e in errors_base + errors_flood if e is not None),
            "audio_start_errors": len(late),
            "start_error_baseline_ms": [_ms(e) for e in errors_base],
            "start_error_flood_ms": [_ms(e) for e in errors_flood],
            "start_tolerance_ms": round(TOLERANCE_S * 1000),
            # The measuring instrument's own state: how late parec's reads came back.
            "capture_read_delay_p99_ms": clock.capture.read_delay_ms()["read_delay_p99_ms"],
            "rss_before_mib": agent_rss.peak_mib(0, flood_mono),
            "rss_peak_mib": agent_rss.peak_mib(flood_mono),
            "broker_rss_before_mib": broker_rss.peak_mib(0, flood_mono),
            "broker_rss_peak_mib": broker_rss.peak_mib(flood_mono),
            "heartbeat_s": HEARTBEAT_S,
            "events_since_flood": len(since_flood),
            # The journal on an SD card: a line per bogus message would be a flood of its own.
            "agent_log_lines": len(st.proc.log_text().splitlines()),
            # Per code (and accepted-noop) and window: the gate's single events and a summary.
            "event_bound": (codes + 1) * (PER_WINDOW + 1) * windows,
            # Only the desk's v1 or v2 may be held, and keyring v1: any other row or version got
            # in without a valid signature (v2 missing is not that: it is ``drained``).
            "accepted_unsigned": sum(1 for row in playlists if row not in LEGIT_PLAYLISTS)
            + int(keyrings != [1]),
            "playlists_held": [list(row) for row in playlists],
            "crashes": int(crashed),
            "rejections": verdicts.rejections(),
            "replays_accepted_as_held": verdicts.by_code.get("accepted-noop", 0)
            + verdicts.by_code.get("accepted", 0)
            - 2,  # v1 and v2 themselves
        }
    finally:
        if flooder is not None and flooder.poll() is None:
            flooder.kill()
            flooder.wait(10)
        for sampler in samplers:
            sampler.stop()
        stopped = st.stop() if st.running() else None
    counts["rss_growth_mib"] = round(counts["rss_peak_mib"] - counts["rss_before_mib"], 1)
    counts["rss_within_bar"] = int(counts["rss_growth_mib"] <= RSS_BAR_MIB)
    counts["events_within_bound"] = int(counts["events_since_flood"] <= counts["event_bound"])
    counts["drained"] = int(lag_s is not None)
    scenario = Scenario(
        part="attacks",
        name="MQTT flood during a schedule",
        how=(
            "A stolen operator certificate floods a real `loa-agent run`'s down topics with "
            "bogus messages (random bytes, broken JSON, bad signatures, replays, retained junk, "
            "oversize) faster than it can verify them while it plays tones on a paced PulseAudio "
            "sink; start errors read at the sink against a baseline of the same run, RSS from "
            "/proc, rates from mosquitto's log, verdicts from the registry, trust state from "
            "the station's database; a station and a foreign operator are refused by the ACL."
        ),
        counts=counts,
        bar={
            "crashes": 0,
            "accepted_unsigned": 0,
            "audio_start_errors": 0,
            "verdicts_missing": 0,
            "refused_publishes": len(refused),
            "rss_within_bar": 1,
            "events_within_bound": 1,
            "drained": 1,
        },
    )
    record(scenario, COMMAND, time.monotonic() - began, tmp_path)
    assert scenario.misses() == {}, (scenario.misses(), counts)
    assert broker["denied"] >= len(refused), "mosquitto did not log the refusals"
    assert stopped == 0, st.tail()
