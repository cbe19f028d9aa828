"""Link faults (issue 13, part "link"): the broker SIGKILLed and restarted, the 4G link cut for
a compressed hour of slots, collectors restarted; nothing lost, nothing counted twice, the
schedule on air throughout.

Every part is real (tests/harness/crash.py's province: mosquitto with mutual TLS and the ACL, a
collector storing into a SQLite registry, a media server; a provisioned ``loa-agent run``,
LOA_HAL=sim, each play kept in a file of its own by ALSA's ``file`` plugin, reaching the broker
through tests/harness/tcp_proxy.py). One station serves the module (its start-up is paid once:
the file has 40 s in CI); each scenario publishes its own playlist version and slots, and counts
only what happened in its own window: the seqs the station allocated from the scenario's start
to its check, its own occurrences, the plays written since it began. What is proved is read from
outside: the registry (every seq the window allocated is stored, the stored seqs of each kind
run 0..N, one as-run per occurrence, coverage's ``complete`` count), the station's outbox and
trust database read as files, the card's files (which tone sounded, when). Each scenario records
its counts (tests/harness/reliability.py) before it asserts its bar.

1. Broker killed during playlist delivery: the held version is replaced by one with a new
   medium, and the broker is SIGKILLed while the station downloads it (the media server holds
   the answer halfway); the broker comes back on its port as one restored from an old snapshot
   would: the stale version first, then the desk publishes the new one again. The station never
   goes back (trust.db read at every poll), refuses the stale one (``rollback``) and plays the
   new version's slots, never the old medium.
2. Broker killed during telemetry: heartbeats every second, a slot's events and as-run flowing;
   the broker is SIGKILLed in the middle of a slot (long mode: five times) and restarted.
3. The link cut (the proxy closes every connection and refuses new ones) for a whole schedule
   (CI: 6 slots 1 s apart; long: 60 slots 2 s apart): every slot's own tone reaches the card
   while the link is down, and once it is back every report is stored exactly once.
4. Collectors restarted mid-telemetry: two collectors on the shared subscription; the first is
   stopped and started again, then the second (long mode: four rounds).

Faults come at planned instants (``sleep_until``); everything else waits on facts with
deadlines. ``LOA_RELIABILITY_LONG=1`` runs the long mode. In CI the station's reconnect jitter
is seeded (``LOA_LINK_SEED``), so the wall time does not hang on a draw.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.link import SEED_ENV
from agent.outbox import KINDS
from province.coverage import coverage
from province.mosquitto import find_mosquitto
from province.registry import StoredReport
from tests.harness.crash import (
    COLLECTOR,
    DESK,
    CrashStation,
    Province,
    Slot,
    Tone,
    close_province,
    open_province,
    playlist_doc,
    sleep_until,
    wait,
    whole_second,
)
from tests.harness.reliability import Scenario, record
from tests.harness.tcp_proxy import TcpProxy
from tests.harness.trust import envelope

pytestmark = pytest.mark.integration

LONG = os.environ.get("LOA_RELIABILITY_LONG") == "1"
COMMAND = "LOA_RELIABILITY_LONG=1 .venv/bin/pytest -q tests/e2e/test_fault_link.py"
COLLECTOR_2 = "province-25.collector-2"
OPERATORS = ((COLLECTOR, "25"), (COLLECTOR_2, "25"), (DESK, "25"))
STATION = "25/08230/08230-60"
TONE_S = 0.4
# Whole seconds (slot starts are written HH:MM:SS). In CI one: a tone, the amplifier's 0.2 s
# hold and the next slot's 0.2 s warm-up fit in it.
SPACING_S = 2 if LONG else 1
HEARTBEAT_S = 1.0  # the shortest the agent takes: telemetry flowing all the time
LEAD_S = 2.0  # from a playlist to its first slot: a few small media fetched
# From the first playlist to the new version's first slot: the old medium fetched, the new
# one's fetch held and failed, the broker down and back, the fetch retried (0-5 s after its
# failure: the agent's own backoff).
LEAD_DELIVERY_S = 8
# A play's card file is last written within this of its slot's start (an unpaced sink takes the
# play at once; the agent opens the card at the start after a 0.2 s warm-up).
ON_TIME_S = 1.0
OUTAGE_S = 1.0  # a broker or collector away this long (planned), then back
SETTLE_S = 30.0  # for every report a window allocated to be stored
# A report stored later than this after it was made (or after the fault that held it ended) is
# late: with a collector listening, a receipt comes within a second.
LATE_S = 5.0
# CI: the reconnect jitter a fixed sequence, so the file's wall time is the same every run (the
# wait after the cut is whatever the agent's backoff gives: up to 16 s after a 7 s cut). Long
# mode: the system's random source, as in the field.
LINK_SEED = "1"
BAR = {"reports_lost": 0, "reports_not_stored": 0, "reports_late": 0, "duplicates_counted": 0,
       "crashes": 0, "audio_start_errors": 0, "foreign_plays": 0}  # fmt: skip


@dataclass
class Rig:
    """The module's province, the proxy in front of its broker, the one running station."""

    province: Province
    proxy: TcpProxy
    st: CrashStation
    version: int = 0

    def topic(self) -> str:
        return f"loa/v1/{self.st.path}/playlist/25"

    def publish(self, slots: Sequence[Slot]) -> tuple[int, bytes]:
        """The next version, signed, retained on the station's stream and recorded where
        coverage finds it: (its version, its envelope)."""
        self.version += 1
        doc = playlist_doc(self.st.path, self.version, slots)
        signed = envelope("playlist", doc, "playlist")
        self.province.publish(self.topic(), signed)
        self.province.record_playlist(self.topic(), doc, signed)
        return self.version, signed

    def schedule(self, prefix: str, count: int, base_hz: float, lead_s: float) -> list[Slot]:
        """``count`` slots SPACING_S apart, the first ``lead_s`` after the tones are made, each
        with a tone of its own: 4.5 % apart, more than twice the 2 % a play is matched within,
        so no play fits two slots."""
        tones = [self.province.tone(round(base_hz * 1.045**n), TONE_S) for n in range(count)]
        first = whole_second(datetime.now(UTC) + timedelta(seconds=lead_s))
        return [
            Slot(f"{prefix}{n:02d}", first + timedelta(seconds=SPACING_S * n), tone)
            for n, tone in enumerate(tones)
        ]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("mosquitto binary not found (install the Debian package: make sysdeps)")
    province = open_province(tmp_path_factory.mktemp("link"), [STATION], executable, OPERATORS)
    proxy = TcpProxy((province.broker.host, province.broker.port)).start()
    made: Rig | None = None
    try:
        st = province.enrol(
            STATION, heartbeat_s=HEARTBEAT_S, plays_to_files=True,
            broker_url=f"mqtts://{proxy.host}:{proxy.port}",
        )  # fmt: skip
        if not LONG:
            st.env[SEED_ENV] = LINK_SEED
        st.start()
        wait(lambda: st.online() or not st.running(), "the station online", 30)
        assert st.running(), st.tail()
        made = Rig(province, proxy, st)
        yield made
    finally:
        status = None
        if made is not None and made.st.running():
            status = made.st.stop()
        proxy.stop()
        if made is not None:
            province.clear(made.topic())
        close_province(province)
    assert status in (0, None), f"the agent's exit status {status}"


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# -- what is read from outside, per scenario -------------------------------------------------------


@dataclass
class Window:
    """One scenario's stretch of the station's life: what it counts is its own."""

    rig: Rig
    scenario: Scenario
    began: float = field(default_factory=time.monotonic)
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    first_seq: dict[str, int] = field(default_factory=dict)  # per kind, at the start
    duplicates: int = 0  # the collectors' count at the start
    back: datetime | None = None  # when the last fault ended: the station seen back on the
    # broker (its new birth stored), or the collectors back
    counts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.first_seq = {kind: self.rig.st.produced(kind) for kind in KINDS}
        self.duplicates = self.rig.province.duplicates()

    def produced(self) -> int:
        st = self.rig.st
        return sum(st.produced(kind) - self.first_seq[kind] for kind in KINDS)

    def check_reports(self) -> None:
        """Every seq allocated up to now is stored (waited for); per kind the stored seqs run
        0..N; what is not stored is still in the outbox (else lost)."""
        st = self.rig.st
        upto = {kind: st.produced(kind) for kind in KINDS}

        def stored_all() -> bool:
            return all(set(range(upto[k])) <= set(st.stored(k)) for k in KINDS)

        try:
            wait(stored_all, "every report of the window stored", SETTLE_S)
        except TimeoutError as exc:
            self.problems.append(str(exc))
        produced = stored = lost = not_stored = 0
        lags = []
        for kind in KINDS:
            seqs = st.stored(kind)
            for r in self.rig.province.registry.reports(kind, [st.path]):
                if r.seq >= self.first_seq[kind]:
                    lags.append(self._lag(r))
                    if lags[-1] > LATE_S:
                        self.problems.append(f"{kind} {r.seq} stored {lags[-1]:.1f} s late")
            if seqs != list(range(len(seqs))):
                self.problems.append(f"{kind}: the stored seqs are not 0..N: {seqs}")
            mine = set(range(self.first_seq[kind], upto[kind]))
            missing = mine - set(seqs)
            gone = missing - st.unsent(kind)
            if gone:
                self.problems.append(f"{kind}: lost seqs {sorted(gone)}")
            produced, stored = produced + len(mine), stored + len(mine & set(seqs))
            lost, not_stored = lost + len(gone), not_stored + len(missing)
        self.counts.update(
            reports_produced=produced, reports_stored=stored, reports_lost=lost,
            reports_not_stored=not_stored,
            duplicates_dropped=self.rig.province.duplicates() - self.duplicates,
            report_lag_max_s=round(max([0.0, *lags]), 1),
            reports_late=sum(1 for lag in lags if lag > LATE_S),
        )  # fmt: skip

    def _lag(self, report: StoredReport) -> float:
        """Seconds from when a report could first be stored (made, or the fault over) to when
        the registry stored it."""
        doc = json.loads(report.body)
        made = _utc(doc.get("ts") or doc.get("ended_at") or doc["scheduled_at"])
        ready = max(made, self.back) if self.back is not None else made
        return (datetime.fromisoformat(report.received_at) - ready).total_seconds()

    def check_asruns(self, slots: Sequence[Slot]) -> None:
        """One as-run per occurrence in the registry, and coverage (the KPI) counting each
        occurrence once."""
        docs = [d for d in self.rig.st.asruns() if _utc(d["scheduled_at"]) >= self.since]
        per = Counter((d["slot"], _utc(d["scheduled_at"])) for d in docs)
        wanted = {(s.id, s.start) for s in slots}
        if set(per) - wanted:
            self.problems.append(f"as-runs of no occurrence: {sorted(set(per) - wanted)}")
        if wanted - set(per):
            self.problems.append(f"occurrences without an as-run: {sorted(wanted - set(per))}")
        since = min(s.start for s in slots) - timedelta(seconds=1)
        until = max(s.start for s in slots) + timedelta(seconds=1)
        rows = [
            row
            for row in coverage(self.rig.province.registry, since, until, datetime.now(UTC))
            if any(o.station == self.rig.st.path for o in row.stations)
        ]
        complete = {(d["slot"], d["scheduled_at"]) for d in docs if d["outcome"] == "complete"}
        kpi_complete = sum(row.complete for row in rows)
        if kpi_complete != len(complete):
            self.problems.append(f"coverage counts {kpi_complete} complete, as-runs {complete}")
        self.counts.update(
            occurrences=len(wanted), asruns_stored=len(docs), kpi_rows=len(rows),
            kpi_complete=kpi_complete,
            outcomes=dict(Counter(str(d["outcome"]) for d in docs)),
            duplicates_counted=sum(n - 1 for n in per.values())
            + sum(max(0, row.complete - row.expected) for row in rows)
            + max(0, len(rows) - len(wanted)),
        )  # fmt: skip

    def check_card(self, slots: Sequence[Slot], foreign: Sequence[Tone] = ()) -> None:
        """Which slots' tones reached the card in full, and on time, from the card's files
        written in this window; ``foreign``: tones that must never sound (a superseded
        version's)."""
        plays = [p for p in self.rig.st.plays() if p.written >= self.since]
        on_air = late = 0
        for s in slots:
            mine = [p for p in plays if p.is_tone(s.tone) and p.seconds >= s.tone.seconds - 0.05]
            if not mine:
                heard = [p for p in plays if p.is_tone(s.tone)]
                self.problems.append(f"{s.id} ({s.tone.hz:g} Hz at {s.start:%H:%M:%S}) not on "
                                     f"the card in full: {heard}")  # fmt: skip
                continue
            on_air += 1
            if not any(abs((p.written - s.start).total_seconds()) <= ON_TIME_S for p in mine):
                self.problems.append(f"{s.id} late on the card: {mine}")
                late += 1
        strays = [p for p in plays if not any(p.is_tone(s.tone) for s in slots)]
        wrong = [p for p in plays if any(p.is_tone(t) for t in foreign)]
        if strays or wrong:
            self.problems.append(f"sounds that are no current slot's tone: {strays + wrong}")
        self.counts.update(
            slots_due=len(slots), slots_on_air=on_air, audio_start_errors=late,
            plays=len(plays), foreign_plays=len(strays) + len(wrong),
        )  # fmt: skip

    def finish(self, tmp_path: Path, bar: dict[str, int]) -> None:
        """Record first (a failing run leaves its counts too), then assert the bar."""
        crashed = not self.rig.st.running()
        if crashed:
            self.problems.append(f"the agent died\n{self.rig.st.tail()}")
        self.scenario.counts.update(self.counts, crashes=int(crashed), problems=self.problems)
        self.scenario.bar = {**BAR, **bar}
        record(self.scenario, COMMAND, time.monotonic() - self.began, tmp_path)
        assert self.scenario.misses() == {}, (self.scenario.misses(), self.problems)
        assert self.problems == []


def rejections(st: CrashStation, since: datetime) -> dict[str, int]:
    """Section 8 codes of the envelope events the registry stored for the station."""
    codes: Counter[str] = Counter()
    for report in st.province.registry.reports("event", [st.path]):
        doc = json.loads(report.body)
        refused = doc.get("event") == "envelope" and doc.get("code") not in ("accepted", None)
        if refused and _utc(doc["ts"]) >= since:
            codes[str(doc["code"])] += 1
    return dict(codes)


def all_reported(st: CrashStation, slots: Sequence[Slot]) -> Callable[[], bool]:
    def done() -> bool:
        stored = {(d["slot"], _utc(d["scheduled_at"])) for d in st.asruns()}
        return all((s.id, s.start) in stored for s in slots)

    return done


def wait_reported(st: CrashStation, slots: Sequence[Slot]) -> None:
    left = max(0.0, (slots[-1].end - datetime.now(UTC)).total_seconds()) + SETTLE_S
    wait(all_reported(st, slots), "an as-run of every slot in the registry", left)


def bounce_broker(province: Province, st: CrashStation, at: datetime) -> datetime:
    """At the planned instant: SIGKILL the broker, restart it OUTAGE_S later, and wait for the
    station's next birth in the registry (it is back, and has resent what it held)."""
    sleep_until(at)
    session = st.session()
    province.kill_broker()
    sleep_until(at + timedelta(seconds=OUTAGE_S))
    province.restart_broker()
    wait(lambda: st.session() > session, "the station back on the broker", 30)
    return datetime.now(UTC)


# -- 1. the broker killed during playlist delivery ------------------------------------------------


def test_broker_killed_during_playlist_delivery(rig: Rig, tmp_path: Path) -> None:
    province, st = rig.province, rig.st
    w = Window(rig, Scenario(
        part="link", name="broker killed during playlist delivery",
        how="The held version replaced by one with a new medium; the broker SIGKILLed while "
        "the station downloads it, back on its port serving the stale version first (an old "
        "snapshot), then the new one again. trust.db read at every poll, the card's files, "
        "the registry.",
    ))  # fmt: skip
    seen: list[int] = []

    def holds(version: int) -> bool:
        seen.append(st.versions()[0])
        return seen[-1] == version

    try:
        # The same occurrences in both versions, each version with its own medium: the card
        # tells which version played them.
        old, new = province.tone(500.0, TONE_S), province.tone(800.0, TONE_S)
        first = whole_second(datetime.now(UTC) + timedelta(seconds=LEAD_DELIVERY_S))
        starts = [first + timedelta(seconds=SPACING_S * n) for n in range(2)]
        was, stale = rig.publish([Slot(f"d{n:02d}", t, old) for n, t in enumerate(starts)])
        wait(lambda: holds(was) and st.cached(old.sha256), "the old version held, cached", 20)
        # The new medium is held halfway by the media server while the broker dies.
        path = "/" + str(new.entry["url"]).rsplit("/", 1)[1]
        data = (province.tmp / f"{new.name}.mp3").read_bytes()
        province.media.add(path, data, stall_after=len(data) // 2, stall_s=0.3, ranges=True)
        slots = [Slot(f"d{n:02d}", t, new) for n, t in enumerate(starts)]
        now, current = rig.publish(slots)
        wait(lambda: province.media.hits(path) >= 1, "the station fetching the new medium", 20)
        session = st.session()
        province.kill_broker()
        province.media.add(path, data, ranges=True)  # the next attempt gets it all
        wait(lambda: holds(now), "the new version held while the broker is down", 10)
        province.restart_broker()
        wait(lambda: st.session() > session, "the station back on the broker", 30)
        w.back = datetime.now(UTC)
        province.publish(rig.topic(), stale)  # as a broker restored from an old snapshot
        province.publish(rig.topic(), current)  # the desk publishes again
        wait_reported(st, slots)
        holds(now)
        w.check_reports()
        w.check_asruns(slots)
        w.check_card(slots, foreign=[old])
        codes = rejections(st, w.since)
        w.counts.update(
            broker_kills=1, restarts=0, rejections=codes, version_held=st.versions()[0],
            went_back=sum(1 for a, b in itertools.pairwise(seen) if b < a),
            versions_read=len(seen),
        )  # fmt: skip
        if codes.get("rollback", 0) < 1:
            w.problems.append(f"the stale version was not refused with rollback: {codes}")
    finally:
        w.finish(tmp_path, {"went_back": 0, "version_held": rig.version, "slots_on_air": 2})


# -- 2. the broker killed during telemetry -------------------------------------------------------


def test_broker_killed_during_telemetry(rig: Rig, tmp_path: Path) -> None:
    province, st = rig.province, rig.st
    kills, count = (5, 15) if LONG else (1, 2)
    w = Window(rig, Scenario(
        part="link", name="broker killed during telemetry",
        how=f"Heartbeats every {HEARTBEAT_S:g} s, a slot's events and as-run flowing; the "
        f"broker SIGKILLed in the middle of a slot ({kills}x), back on its port {OUTAGE_S:g} s "
        "later. The registry (seqs per kind, as-runs per occurrence, coverage), the card.",
    ))  # fmt: skip
    kills_before = province.broker_kills
    try:
        slots = rig.schedule("t", count, 420.0, LEAD_S)
        rig.publish(slots)
        for k in range(kills):
            w.back = bounce_broker(province, st, slots[k * count // kills].start + timedelta(
                seconds=TONE_S / 2))  # fmt: skip
        wait_reported(st, slots)
        w.check_reports()
        w.check_asruns(slots)
        w.check_card(slots)
        w.counts.update(broker_kills=province.broker_kills - kills_before, restarts=0)
    finally:
        w.finish(tmp_path, {"slots_on_air": count})


# -- 3. the link cut for a compressed hour of slots ------------------------------------------------


def test_link_cut_for_a_schedule(rig: Rig, tmp_path: Path) -> None:
    st, proxy = rig.st, rig.proxy
    count = 60 if LONG else 6
    w = Window(rig, Scenario(
        part="link", name="link cut for a whole schedule",
        how=f"The proxy between the station and the broker closes every connection and "
        f"refuses new ones from 1 s before the first of {count} slots {SPACING_S} s apart "
        "until after the last. Each slot's own tone read from the card's files written while "
        "the link was down; the registry once it is back.",
    ))  # fmt: skip
    try:
        # Two seconds more than the others: the cut begins a second before the first slot, and
        # every tone must be cached by then, on a loaded machine too.
        slots = rig.schedule("c", count, 440.0, LEAD_S + 2.0 + count * 0.05)
        first = slots[0].start
        rig.publish(slots)
        wait(lambda: all(st.cached(s.tone.sha256) for s in slots), "every tone cached",
             (first - datetime.now(UTC)).total_seconds() - 1)  # fmt: skip
        sleep_until(first - timedelta(seconds=1))
        proxy.cut()
        cut_at, session = datetime.now(UTC), st.session()
        sleep_until(slots[-1].end + timedelta(seconds=0.5))
        during = [p for p in st.plays() if p.written >= cut_at]
        proxy.restore()
        restored, restored_at = time.monotonic(), datetime.now(UTC)
        wait(lambda: st.session() > session, "the station back after the cut", 180)
        back_s = time.monotonic() - restored
        w.back = datetime.now(UTC)  # the reconnect's backoff is the design: lag counts from here
        wait_reported(st, slots)
        w.check_reports()
        w.check_asruns(slots)
        w.check_card(slots)
        w.counts.update(
            restarts=0, cut_s=round((restored_at - cut_at).total_seconds(), 1),
            slots_on_air_during_cut=sum(
                1 for s in slots if any(p.is_tone(s.tone) for p in during)),
            reconnect_after_restore_s=round(back_s, 1),
        )  # fmt: skip
    finally:
        if proxy.refusing:
            proxy.restore()
        w.finish(tmp_path, {"slots_on_air": count, "slots_on_air_during_cut": count})


# -- 4. collectors restarted mid-telemetry -----------------------------------------------------


def test_collectors_restarted_mid_telemetry(rig: Rig, tmp_path: Path) -> None:
    province, st = rig.province, rig.st
    rounds, count = (4, 12) if LONG else (1, 2)
    w = Window(rig, Scenario(
        part="link", name="collectors restarted mid-telemetry",
        how=f"Two collectors on the shared subscription; in the middle of a slot the first is "
        f"stopped and started again {OUTAGE_S:g} s later, then the second ({rounds}x each), "
        f"while heartbeats flow every {HEARTBEAT_S:g} s. The registry, the card's files.",
    ))  # fmt: skip
    restarts_before = province.collector_restarts
    try:
        province.add_collector(COLLECTOR_2)
        slots = rig.schedule("r", count, 460.0, LEAD_S)
        rig.publish(slots)
        away = 0
        for k in range(rounds):
            sleep_until(slots[k * count // rounds].start + timedelta(seconds=TONE_S / 2))
            before = w.produced()
            province.restart_collector(away_s=OUTAGE_S)
            province.stop_collector(COLLECTOR_2)
            time.sleep(OUTAGE_S)  # planned: the second collector's absence
            province.add_collector(COLLECTOR_2)
            w.back = datetime.now(UTC)
            away += w.produced() - before
        wait_reported(st, slots)
        w.check_reports()
        w.check_asruns(slots)
        w.check_card(slots)
        w.counts.update(
            collector_restarts=province.collector_restarts - restarts_before + rounds,
            reports_produced_while_a_collector_was_away=away, restarts=0,
        )  # fmt: skip
    finally:
        if COLLECTOR_2 in province.others:
            province.stop_collector(COLLECTOR_2)
        w.finish(tmp_path, {"slots_on_air": count})
