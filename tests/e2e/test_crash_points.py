"""Deterministic, seeded crash injection (issue 13, first part): the agent SIGKILLed at each
named crash point (agent/faults.py, ``LOA_FAULT=crash:<point>[:<n>]``), restarted, and checked.

Every part is real: ``loa-agent run`` (LOA_HAL=sim), a mosquitto with mutual TLS and the ACL,
a collector storing into a SQLite registry (its receipts flow back and empty the outbox), a
media server on loopback. One province (broker, collector, desk, media server) serves the whole
module; each crash point gets a fresh station of its own (its own id, so its seqs start at 0).

CI mode, one test per point in ``faults.CRASH_POINTS``: the station starts with the point
armed (first pass), gets a playlist of two one-second slots a few seconds ahead (two new media,
so the cache points are passed; a keyring rotation too for ``keyring-stored``), dies at the
point, is restarted without it, plays on, is stopped cleanly, and once the registry has no hole
left the invariants are checked:

- trust: the playlist and keyring versions in trust.db never go back (at the kill, after the
  restart), and ``loa-agent ingest`` of the same envelopes says ``accepted ... v<held>``;
- cache: every file under a hash name hashes to it, no partial file is left over;
- reports: per kind the stored seqs run 0..N without a gap (the registry's unique key is
  (station, kind, seq), so a duplicate is what the collector counted as one), every report the
  outbox held at the kill is stored, and every seq the station allocated is either stored or
  still in its outbox (none lost);
- as-runs: exactly one stored per occurrence of the playlist; an occurrence that had started
  (an on-air mark at the kill, or the one sounding when a ``play-*`` point killed) is
  ``complete`` or ``partial``, never ``missed`` or ``failed``.

Soak mode (``LOA_SOAK_KILLS=100 LOA_SOAK_SEED=1``; skipped unless LOA_SOAK_KILLS is set): one
station, killed that many times in a row; each kill picks a point and a pass n with
``random.Random(seed)`` (n bounded by what one run of the station surely reaches), and each
run is driven so that the point comes (a new playlist version with a new medium for the
playlist and cache points, a keyring rotation for ``keyring-stored``); the slots run all
along. The same invariants are checked once, at the end, after a last clean run.

Counts go to JSON: ``bench/results/reliability.json`` in soak mode, ``<pytest tmp>/
reliability-<point>.json`` in CI mode. Fields:

``mode`` ("ci" | "soak"), ``seed`` (soak; null in CI), ``points`` (the crash points, in order),
``kills`` (SIGKILLs by a crash point), ``restarts`` (agent starts after the first),
``kills_by_point`` ({point: count}), ``crashes`` ([[point, pass n, died at RFC 3339], ...]),
``reports`` ({kind: {"produced": seqs the station allocated, "stored": rows in the registry,
"lost": allocated seqs neither stored nor still in the outbox, "unsent": still in the outbox
at the end}}), ``duplicates`` (copies the collector received of reports it had stored already,
all kinds), ``occurrences`` (slots scheduled and over), ``asruns_per_occurrence``
({"0": n, "1": n, "2": n...}: how many occurrences got that many stored as-runs),
``outcomes`` ({outcome: count}), ``started`` (occurrences known to have started),
``started_missed`` (of those, reported missed or failed), ``elapsed_s`` (wall time of the
test).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent import faults
from agent.outbox import KINDS
from province.mosquitto import find_mosquitto
from tests.harness.crash import (
    CrashStation,
    Province,
    Slot,
    close_province,
    keyring_envelope,
    open_province,
    playlist_envelope,
    sleep_until,
    wait,
    whole_second,
)
from tests.harness.reliability import Scenario, record

pytestmark = pytest.mark.integration

CI_STATIONS = {p: f"25/08230/08230-{10 + i:02d}" for i, p in enumerate(faults.CRASH_POINTS)}
SOAK_STATION = "25/08230/08230-90"
TONE_S = 1.0
LEAD_S = 5.0  # from the playlist to its first slot: its media fetched, after a restart too
SPACING_S = 3.0  # whole seconds: slot starts are written HH:MM:SS
HOLD_S = 0.2  # provision_station's hold time
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "reliability.json"
KEYRING_TOPIC = "loa/v1/25/keyring/{}"
PLAYS = (faults.PLAY_STARTED, faults.PLAY_ENDED)


def playlist_topic(station: CrashStation) -> str:
    return f"loa/v1/{station.path}/playlist/25"


@pytest.fixture(scope="module")
def province(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Province]:
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("mosquitto binary not found (install the Debian package: make sysdeps)")
    stations = [*CI_STATIONS.values(), SOAK_STATION]
    made = open_province(tmp_path_factory.mktemp("crash"), stations, executable)
    try:
        yield made
    finally:
        close_province(made)


# -- what is true after any sequence of crashes ----------------------------------------------------


class Ledger:
    """What the test knows from outside: the slots scheduled, the envelopes published, and
    what each kill left behind (reports the outbox held, on-air marks, trust versions)."""

    def __init__(self, station: CrashStation) -> None:
        self.station = station
        self.slots: list[Slot] = []
        self.playlist: bytes | None = None
        self.keyring: bytes | None = None
        self.started: set[tuple[str, datetime]] = set()
        self.held_at_kill: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.versions_seen: tuple[int, int] = (0, 1)
        self.duplicates_before = station.province.duplicates()
        self.counts: dict[str, Any] | None = None  # what ``check`` counted

    def after_kill(self, point: str, died: datetime) -> None:
        st = self.station
        versions = st.versions()
        assert versions >= self.versions_seen, ("trust state went back", versions)
        self.versions_seen = versions
        for kind in KINDS:
            self.held_at_kill[kind] = max(self.held_at_kill[kind], st.produced(kind))
        by_key = {_key_slot(k) for k in st.on_air()}
        self.started |= {(s.id, s.start) for s in self.slots if (s.id, s.start) in by_key}
        if point in PLAYS:  # the slot sounding when the player's point killed
            for s in self.slots:
                if s.start - timedelta(seconds=0.5) <= died <= s.end + timedelta(seconds=1):
                    self.started.add((s.id, s.start))

    def over(self) -> list[Slot]:
        return [s for s in self.slots if s.end + timedelta(seconds=1) < datetime.now(UTC)]

    def all_reported(self) -> bool:
        stored = {(d["slot"], _utc(d["scheduled_at"])) for d in self.station.asruns()}
        return all((s.id, s.start) in stored for s in self.slots)

    def check(self) -> dict[str, Any]:
        """Every invariant; returns the counts for the JSON file."""
        st = self.station
        # Trust: never back, and the same envelopes again are no change.
        versions = st.versions()
        assert versions >= self.versions_seen, ("trust state went back", versions)
        if self.playlist is not None:
            assert st.ingest(self.playlist, "playlist.json") == (
                0, f"accepted playlist 25 v{versions[0]}"
            )  # fmt: skip
        if self.keyring is not None:
            assert st.ingest(self.keyring, "keyring.json") == (
                0, f"accepted keyring 25 v{versions[1]}"
            )  # fmt: skip
        assert st.versions() == versions
        # Cache: nothing half-written or unverified.
        assert st.cache_problems() == []
        # Reports: no gap, none lost, all the outbox held at a kill delivered.
        reports: dict[str, dict[str, int]] = {}
        for kind in KINDS:
            stored, produced, unsent = st.stored(kind), st.produced(kind), st.unsent(kind)
            lost = set(range(produced)) - set(stored) - unsent
            reports[kind] = {"produced": produced, "stored": len(stored), "lost": len(lost),
                             "unsent": len(unsent)}  # fmt: skip
            assert stored == list(range(len(stored))), (kind, "stored seqs are not 0..N", stored)
            assert not lost, (kind, "lost", sorted(lost))
            assert len(stored) >= self.held_at_kill[kind], (kind, reports[kind])
        # As-runs: one per occurrence; a started one is complete or partial.
        docs = st.asruns()
        per: Counter[tuple[str, datetime]] = Counter(
            (d["slot"], _utc(d["scheduled_at"])) for d in docs
        )
        outcome = {(d["slot"], _utc(d["scheduled_at"])): d["outcome"] for d in docs}
        over = [(s.id, s.start) for s in self.slots]  # the runs waited for every one of them
        assert {k: per[k] for k in over if per[k] != 1} == {}, "occurrences without one as-run"
        assert set(per) <= {(s.id, s.start) for s in self.slots}, "as-runs of no occurrence"
        started_missed = {k: outcome.get(k) for k in self.started
                          if outcome.get(k) not in ("complete", "partial")}  # fmt: skip
        histogram = Counter(str(per[k]) for k in over)
        counts = {
            "kills": st.kills, "restarts": st.restarts,
            "kills_by_point": dict(Counter(p for p, _, _ in st.crashes)),
            "crashes": [[p, n, at.isoformat()] for p, n, at in st.crashes],
            "reports": reports,
            "duplicates": st.province.duplicates() - self.duplicates_before,
            "occurrences": len(over), "asruns_per_occurrence": dict(histogram),
            "outcomes": dict(Counter(outcome.values())), "started": len(self.started),
            "started_missed": len(started_missed),
        }  # fmt: skip
        self.counts = counts
        assert started_missed == {}, ("started, yet reported", started_missed)
        return counts


def _key_slot(key: str) -> tuple[str, datetime]:
    """(slot id, start) of an occurrence key ``issuer@target/slot/start``."""
    _, slot, start = key.rsplit("/", 2)
    return slot, _utc(start)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def settle(st: CrashStation) -> None:
    """Stop the agent cleanly; wait until the registry has no hole left."""
    assert st.stop() == 0, st.tail()
    wait(st.settled, "the registry's watermarks to reach every stored report", 20)


SOAK_COMMAND = (
    "LOA_SOAK_KILLS=100 LOA_SOAK_SEED=1 .venv/bin/pytest -q tests/e2e/test_crash_points.py -k soak"
)


def write_counts(path: Path, counts: dict[str, Any]) -> None:
    """The counts; in soak mode as a result file like the benchmarks' (``bench.report`` lists
    it: what was run, the figures, the machine), so the table says what the suite measured."""
    if counts.get("mode") == "soak":
        from bench.common import machine_info

        reports = counts.get("reports", {})
        counts = {
            "benchmark": "reliability",
            "title": "Seeded SIGKILLs at the named crash points, then restarts: reports and "
            "as-runs afterwards",
            "command": SOAK_COMMAND,
            "quick": False,
            **counts,
            "kills_total": counts.get("kills", 0),
            "reports_lost": sum(int(r.get("lost", 0)) for r in reports.values()),
            "reports_stored": sum(int(r.get("stored", 0)) for r in reports.values()),
            "started_reported_missed": counts.get("started_missed", 0),
            "figures": ["kills_total", "reports_stored", "reports_lost",
                        "started_reported_missed"],
            "labels": {
                "kills_total": "SIGKILLs at seeded crash points, each followed by a restart",
                "reports_stored": "reports stored by the collector (heartbeats, events, as-runs)",
                "reports_lost": "reports produced and never stored (target 0)",
                "started_reported_missed": "occurrences that began to sound but were reported "
                "missed (target 0)",
            },
            "machine": machine_info(),
        }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n")


CI_COMMAND = ".venv/bin/pytest -q tests/e2e/test_crash_points.py -k crash_point_then_restart"


def crash_scenario(point: str, counts: dict[str, Any]) -> Scenario:
    """One CI crash-point run in the suite's common counts (docs/reliability.md)."""
    reports = dict(counts["reports"]).values()
    per = {int(n): k for n, k in dict(counts["asruns_per_occurrence"]).items()}
    return Scenario(
        part="crash",
        name=f"SIGKILL at {point}",
        how=f"SIGKILL once in {faults.CRASH_POINT_DOCS[point].rstrip('.')}; then restarted and "
        "stopped. Read from the registry, the outbox, the trust database and the cache.",
        counts={
            "reports_produced": sum(int(r["produced"]) for r in reports),
            "reports_stored": sum(int(r["stored"]) for r in reports),
            "reports_lost": sum(int(r["lost"]) for r in reports),
            "duplicates_counted": sum((n - 1) * k for n, k in per.items() if n > 1),
            "duplicates_dropped": counts["duplicates"],
            "restarts": counts["restarts"],
            "slots_due": counts["occurrences"],
            "started_reported_missed": counts["started_missed"],
        },
        bar={"reports_lost": 0, "duplicates_counted": 0, "started_reported_missed": 0},
    )


# -- CI: every point once ------------------------------------------------------------------------


@pytest.mark.parametrize("point", faults.CRASH_POINTS)
def test_crash_point_then_restart(province: Province, point: str, tmp_path: Path) -> None:
    began = time.monotonic()
    st = province.enrol(CI_STATIONS[point])
    ledger = Ledger(st)
    topic = playlist_topic(st)
    try:
        st.start(f"crash:{point}")
        wait(lambda: st.online() or not st.running(), "the station online (or dead)", 30)
        if point == faults.KEYRING_STORED:
            ledger.keyring = keyring_envelope(2)
            province.publish(KEYRING_TOPIC.format(2), ledger.keyring)
        first = whole_second(datetime.now(UTC) + timedelta(seconds=LEAD_S))
        tones = [province.tone(600.0, TONE_S), province.tone(900.0, TONE_S)]
        ledger.slots = [
            Slot(f"s{n}", first + timedelta(seconds=SPACING_S * n), tone)
            for n, tone in enumerate(tones)
        ]
        ledger.playlist = playlist_envelope(st.path, 1, ledger.slots)
        province.publish(topic, ledger.playlist)
        died = st.wait_crash(point, 30)
        ledger.after_kill(point, died)
        if point == faults.PLAY_STARTED:
            # Back once the slot is over: what the restart decides then does not hang on how
            # fast the agent starts (a quick one would join the slot late).
            sleep_until(ledger.slots[0].end + timedelta(seconds=HOLD_S + 0.3))
        st.start()
        last = ledger.slots[-1].end
        left = (last - datetime.now(UTC)).total_seconds() + 20
        wait(lambda: ledger.all_reported() and len(ledger.over()) == len(ledger.slots),
             "an as-run of every slot in the registry", left)  # fmt: skip
        settle(st)
        counts = ledger.check()
    finally:
        if st.running():
            st.stop()
        province.clear(topic)
        if ledger.keyring is not None:
            province.clear(KEYRING_TOPIC.format(2))
        if ledger.counts is not None:
            elapsed = round(time.monotonic() - began, 1)
            counts = {**ledger.counts, "mode": "ci", "seed": None, "points": [point],
                      "elapsed_s": elapsed}  # fmt: skip
            write_counts(tmp_path / f"reliability-{point}.json", counts)
            record(crash_scenario(point, counts), CI_COMMAND, elapsed, tmp_path)
    assert counts["kills"] == 1 and counts["restarts"] == 1


# -- soak: a hundred seeded kills in a row -------------------------------------------------------

# The highest pass n a run of the soak station surely reaches, per point.
MAX_PASS = {
    faults.PLAYLIST_ACCEPTED: 1, faults.KEYRING_STORED: 1, faults.CACHE_WRITTEN: 1,
    faults.CACHE_RENAMED: 1, faults.OUTBOX_WRITTEN: 8, faults.OUTBOX_ACKED: 3,
    faults.PLAY_STARTED: 2, faults.PLAY_ENDED: 2,
}  # fmt: skip
NEW_MEDIUM = (faults.PLAYLIST_ACCEPTED, faults.CACHE_WRITTEN, faults.CACHE_RENAMED)


def plan_kills(kills: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    plan = []
    for _ in range(kills):
        point = rng.choice(faults.CRASH_POINTS)
        plan.append((point, rng.randint(1, MAX_PASS[point])))
    return plan


def test_plan_is_seeded_and_covers_every_point() -> None:
    assert plan_kills(100, 1) == plan_kills(100, 1)
    assert {p for p, _ in plan_kills(100, 1)} == set(faults.CRASH_POINTS)
    assert all(1 <= n <= MAX_PASS[p] for p, n in plan_kills(100, 1))


def test_crash_specs_parse() -> None:
    env = {
        faults.ENV: "crash:play-ended:3, crash:cache-written, crash:nowhere, crash:play-started:0"
    }
    assert faults.crashes(env) == {"play-ended": 3, "cache-written": 1}
    assert faults.unknown(env) == {"crash:nowhere", "crash:play-started:0"}
    assert faults.crashes({}) == {}
    assert (
        set(faults.CRASH_POINT_DOCS) == set(faults.CRASH_POINTS) and len(faults.CRASH_POINTS) == 8
    )


class Schedule:
    """The soak station's one stream: slots every SPACING_S, a new playlist version whenever a
    new medium is wanted (earlier slots kept as they were, so no occurrence changes)."""

    def __init__(self, province: Province, station: CrashStation, ledger: Ledger) -> None:
        self.province, self.station, self.ledger = province, station, ledger
        self.version = 0
        self.keyring = 1
        self.tone = province.tone(500.0, TONE_S)

    def extend(self, new_medium: bool, ahead_s: float = 40.0) -> None:
        """Slots until ``ahead_s`` from now; from LEAD_S on they play a new medium if asked."""
        now = datetime.now(UTC)
        if new_medium:
            self.tone = self.province.tone(400.0 + 10.0 * (self.version % 60), TONE_S)
        slots = self.ledger.slots
        cut = now + timedelta(seconds=LEAD_S)
        if new_medium:
            kept = [s for s in slots if s.start < cut]
            tail = [s for s in slots if s.start >= cut]
            slots = kept + [Slot(s.id, s.start, self.tone) for s in tail]
        moment = slots[-1].start if slots else whole_second(now + timedelta(seconds=LEAD_S))
        while moment < now + timedelta(seconds=ahead_s):
            moment += timedelta(seconds=SPACING_S)
            slots.append(Slot(f"s{int(moment.timestamp())}", moment, self.tone))
        self.ledger.slots = slots
        self.version += 1
        self.ledger.playlist = playlist_envelope(self.station.path, self.version, slots)
        self.province.publish(playlist_topic(self.station), self.ledger.playlist)

    def rotate_keyring(self) -> None:
        self.keyring += 1
        self.ledger.keyring = keyring_envelope(self.keyring)
        self.province.publish(KEYRING_TOPIC.format(self.keyring), self.ledger.keyring)


@pytest.mark.skipif(not os.environ.get("LOA_SOAK_KILLS"), reason="soak mode: LOA_SOAK_KILLS=N")
# About 1.7 s a kill was measured (100 in 166 s); the hang guard (pyproject) scales with them.
@pytest.mark.timeout(120 + 10 * int(os.environ.get("LOA_SOAK_KILLS") or 0))
def test_soak_seeded_kills(province: Province) -> None:
    began = time.monotonic()
    kills, seed = int(os.environ["LOA_SOAK_KILLS"]), int(os.environ.get("LOA_SOAK_SEED", "1"))
    st = province.enrol(SOAK_STATION)
    ledger = Ledger(st)
    schedule = Schedule(province, st, ledger)
    plan = plan_kills(kills, seed)
    try:
        schedule.extend(new_medium=True)
        for point, n in plan:
            st.start(f"crash:{point}:{n}")
            wait(lambda: st.online() or not st.running(), "the station online (or dead)", 30)
            if point in NEW_MEDIUM or ledger.slots[-1].start < datetime.now(UTC) + timedelta(
                seconds=20
            ):
                schedule.extend(new_medium=point in NEW_MEDIUM)
            if point == faults.KEYRING_STORED:
                schedule.rotate_keyring()
            died = st.wait_crash(point, 60)
            ledger.after_kill(point, died)
        st.start()
        # The last slot still planned plays; then every slot before it has had its chance.
        horizon = max((s for s in ledger.slots), key=lambda s: s.start)
        left = (horizon.end - datetime.now(UTC)).total_seconds() + 30
        wait(ledger.all_reported, "an as-run of every slot in the registry", left)
        settle(st)
        counts = ledger.check()
    finally:
        if st.running():
            st.stop()
        province.clear(playlist_topic(st))
        for version in range(2, schedule.keyring + 1):
            province.clear(KEYRING_TOPIC.format(version))
        if ledger.counts is not None:
            elapsed = round(time.monotonic() - began, 1)
            counts = {**ledger.counts, "mode": "soak", "seed": seed,
                      "points": list(faults.CRASH_POINTS), "elapsed_s": elapsed}  # fmt: skip
            write_counts(RESULTS, counts)
    assert counts["kills"] == kills
