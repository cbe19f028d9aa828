"""Devices that fail under a running station (issue 13, part "devices"): the sound card vanishing
mid-play and coming back, the sound card missing at start, and a relay whose sense input stops
following and follows again.

Every part is real: ``loa-agent run`` (LOA_HAL=sim: gpiozero's MockFactory), mosquitto with
mutual TLS and the ACL, a collector storing into a SQLite registry, a media server
(``tests/harness/crash.py``'s province). The sound card is a private PulseAudio null sink (paced
at 48 kHz like a card) reached through PyAudio and ALSA, every opening of it also kept in a file
of its own (``tests/harness/paced_card.py``); it vanishes by SIGKILL of its daemon, as a USB
card pulled out, and comes back on the same socket. The sense input stops following through
``LOA_FAULT=sense-stuck:<file>`` (agent/faults.py): while the file exists the simulated inputs
it names read "absent", as real gpiozero edges.

What is proved is read from outside: the as-runs, events and heartbeats the registry stored,
the station's outbox counters, and what reached the card, play by play (its frequency tells
the slots apart). The test sleeps only until a planned instant; everything else waits on facts.

Default mode: one vanish-and-return cycle, one missing start, one stuck-and-free cycle (the file
takes well under 40 s alone). Long mode (``LOA_RELIABILITY_LONG=1``): four cycles of each fault
that repeats.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent import faults
from agent.outbox import KINDS
from hal.audio import FRAME_BYTES, SAMPLE_RATE
from province.mosquitto import find_mosquitto
from tests.harness.audio import analyse_pcm
from tests.harness.crash import (
    CrashStation,
    Province,
    Slot,
    close_province,
    open_province,
    playlist_envelope,
    sleep_until,
    wait,
    whole_second,
)
from tests.harness.paced_card import VanishingCard, plays, use_paced_card
from tests.harness.reliability import Scenario, record

pytestmark = pytest.mark.integration

LONG = bool(os.environ.get("LOA_RELIABILITY_LONG"))
COMMAND = "LOA_RELIABILITY_LONG=1 .venv/bin/pytest -q tests/e2e/test_fault_devices.py"
CYCLES = 4 if LONG else 1
STATIONS = {"vanish": "25/08230/08230-41", "missing": "25/08230/08230-42",
            "sense": "25/08230/08230-43"}  # fmt: skip
LEAD_S = 4.0  # from the playlist to its first slot: the media fetched and pre-rolled
BYTES_PER_S = SAMPLE_RATE * FRAME_BYTES
SHORT_BY_S = 0.1  # a play that handed the card this much less than its tone was cut short
SENSE_PINS = "[inputs]\namp_power = 6\nspeaker_line = 13\n"


@pytest.fixture(scope="module")
def province(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Province]:
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("mosquitto binary not found (install the Debian package: make sysdeps)")
    made = open_province(tmp_path_factory.mktemp("devices"), list(STATIONS.values()), executable)
    try:
        yield made
    finally:
        close_province(made)


def playlist_topic(station: CrashStation) -> str:
    return f"loa/v1/{station.path}/playlist/25"


# -- what the outside sees ------------------------------------------------------------------------


def capture(st: CrashStation) -> Path:
    return st.directory / "home" / "speaker.raw"


def heard(st: CrashStation, slots: list[Slot]) -> dict[str, list[float]]:
    """Per slot (told apart by its tone's frequency), the seconds each of its plays handed the
    card; a play of no slot's tone is an error."""
    found: dict[str, list[float]] = {s.id: [] for s in slots}
    for path in plays(capture(st)):
        pcm = path.read_bytes()
        if len(pcm) < BYTES_PER_S // 100:
            continue  # the card was opened and (almost) nothing written: the probe, or a failure
        report = analyse_pcm(pcm)
        slot = next((s for s in slots if report.freq_hz and abs(report.freq_hz - s.tone.hz)
                     < s.tone.hz / 50), None)  # fmt: skip
        if slot is None:
            raise RuntimeError(f"{path.name}: a sound that is no slot's tone: {report}")
        found[slot.id].append(report.seconds)
    return found


def sounding(st: CrashStation, slot: Slot, seconds: float) -> bool:
    """The newest play is ``slot``'s tone and has reached the card for ``seconds``."""
    found = plays(capture(st))
    if not found or found[-1].stat().st_size < seconds * BYTES_PER_S:
        return False
    freq = analyse_pcm(found[-1].read_bytes()).freq_hz
    return freq is not None and abs(freq - slot.tone.hz) < slot.tone.hz / 50


def bodies(st: CrashStation, kind: str) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in st.province.registry.reports(kind, [st.path])]


def events(st: CrashStation, *codes: str) -> list[dict[str, Any]]:
    return [e for e in bodies(st, "event") if e.get("code") in codes]


LOST = ("amp-power-lost", "speaker-line-fault")
RESTORED = ("amp-power-restored", "speaker-line-restored")


def after(st: CrashStation, moment: datetime | None, *codes: str) -> list[dict[str, Any]]:
    """Events of ``codes`` stamped at or after ``moment`` (whole seconds, as events are)."""
    return [e for e in events(st, *codes) if moment is not None and ts(e) >= moment]


def asruns(st: CrashStation) -> dict[str, list[dict[str, Any]]]:
    per: dict[str, list[dict[str, Any]]] = {}
    for body in bodies(st, "asrun"):
        per.setdefault(str(body["slot"]), []).append(body)
    return per


def ts(body: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(body["ts"]).replace("Z", "+00:00"))


def report_counts(st: CrashStation) -> dict[str, int]:
    """After a clean stop and a settled registry: every seq the station allocated, per kind,
    is stored or still in its outbox; ``reports_lost`` counts those that are neither."""
    produced = stored = lost = 0
    for kind in KINDS:
        made = st.produced(kind)
        have = set(st.stored(kind))
        produced += made
        stored += len(have)
        lost += len(set(range(made)) - have - st.unsent(kind))
    return {"reports_produced": produced, "reports_stored": stored, "reports_lost": lost}


@dataclass
class Run:
    """One station under a fault: its slots, what it was seen to do, and the counts."""

    province: Province
    st: CrashStation
    slots: list[Slot] = field(default_factory=list)
    exits: int = 0  # the agent found dead while it should have been running

    def schedule(self, slots: list[Slot]) -> None:
        self.slots += slots
        self.province.publish(playlist_topic(self.st),
                              playlist_envelope(self.st.path, 1, self.slots))  # fmt: skip

    def alive(self) -> bool:
        if not self.st.running():
            self.exits += 1
            raise RuntimeError(f"the agent exited\n{self.st.tail()}")
        return True

    def wait(self, condition: Any, what: str, timeout: float) -> None:
        wait(lambda: self.alive() and condition(), what, timeout)

    def finish(self) -> dict[str, Any]:
        """Every slot's as-run stored, the agent stopped cleanly, the registry without a hole;
        the counts every scenario shares."""
        last = max(s.end for s in self.slots)
        left = (last - datetime.now(UTC)).total_seconds() + 15
        self.wait(lambda: all(s.id in asruns(self.st) for s in self.slots),
                  "an as-run of every slot in the registry", left)  # fmt: skip
        status = self.st.stop()
        crashes = self.exits + (0 if status == 0 else 1)
        wait(self.st.settled, "the registry's watermarks to reach every stored report", 20)
        runs = asruns(self.st)
        return {
            **report_counts(self.st),
            "crashes": crashes, "restarts": 0, "exit_status": status,
            "duplicates_counted": sum(len(v) - 1 for v in runs.values() if len(v) > 1),
            "duplicates_dropped": self.province.duplicates(),
            "slots_due": len(self.slots),
            "outcomes": dict(Counter(str(v[0]["outcome"]) for v in runs.values())),
        }  # fmt: skip


def start(province: Province, name: str, card: VanishingCard, extra: str = "",
          fault: str | None = None, heartbeat_s: float = 1.0) -> Run:  # fmt: skip
    st = province.enrol(STATIONS[name], heartbeat_s=heartbeat_s)
    if extra:
        config = st.directory / "station.toml"
        config.write_text(config.read_text() + "\n" + extra)
    use_paced_card(st.directory / "home", card.socket)
    st.start(fault)
    return Run(province, st)


def slot(province: Province, ident: str, at: datetime, hz: float, seconds: float) -> Slot:
    return Slot(ident, at, province.tone(hz, seconds))


# -- 1. the card vanishes mid-play and comes back -------------------------------------------------


def test_card_vanishes_mid_play_and_returns(province: Province, tmp_path: Path) -> None:
    began = time.monotonic()
    card = VanishingCard(tmp_path / "card")
    card.restore()
    run: Run | None = None
    counts: dict[str, Any] = {}
    scenario = Scenario(
        part="devices", name="sound card vanishes mid-play",
        how="A real loa-agent plays tones into a paced PulseAudio null sink through PyAudio; "
        "mid-tone the sink's daemon is SIGKILLed (a card pulled out), a slot falls due while it "
        "is gone, then it comes back before the next slot. Read: the registry's as-runs, events "
        "and heartbeats, and what reached the card play by play.",
        bar={"reports_lost": 0, "duplicates_counted": 0, "crashes": 0,
             "cut_reported_complete": 0, "gone_reported_complete": 0,
             "after_return_not_on_air": 0, "faults_unreported": 0, "heartbeat_gaps": 0},
    )  # fmt: skip
    try:
        run = start(province, "vanish", card)
        st = run.st
        run.wait(st.online, "the station online", 30)
        first = whole_second(datetime.now(UTC) + timedelta(seconds=LEAD_S))
        cycles: list[tuple[Slot, Slot, Slot]] = []
        for k in range(CYCLES):
            at = first + timedelta(seconds=8 * k)
            hz = 500.0 + 300.0 * k
            cycles.append(
                (
                    slot(province, f"cut{k}", at, hz, 2.0),
                    slot(province, f"gone{k}", at + timedelta(seconds=2), hz + 100, 1.0),
                    slot(province, f"back{k}", at + timedelta(seconds=5), hz + 200, 1.0),
                )
            )
        run.schedule([s for cycle in cycles for s in cycle])  # fmt: skip
        outages: list[tuple[datetime, datetime]] = []
        for cut, gone, back in cycles:
            run.wait(lambda c=cut: sounding(st, c, 0.5), f"{cut.id} sounding", 30)
            vanished = datetime.now(UTC)
            card.vanish()
            sleep_until(gone.end + timedelta(seconds=0.3))  # the slot due while it is gone
            card.restore()
            outages.append((vanished, datetime.now(UTC)))
            run.wait(lambda b=back: sounding(st, b, b.tone.seconds - SHORT_BY_S),
                     f"{back.id} on the card", 30)  # fmt: skip
        counts = run.finish()
        runs, plays_of = asruns(st), heard(st, run.slots)
        lost = events(st, "audio-device-lost")
        restored = events(st, "audio-device-restored")
        beats = [ts(b) for b in bodies(st, "heartbeat")]
        cuts = [c for c, _, _ in cycles]
        gones = [g for _, g, _ in cycles]
        backs = [b for _, _, b in cycles]
        counts |= {
            "cycles": CYCLES,
            "slots_on_air": sum(1 for s in run.slots if any(
                p >= s.tone.seconds - SHORT_BY_S for p in plays_of[s.id])),
            "cut_reported_complete": sum(1 for s in cuts
                                         if runs[s.id][0]["outcome"] == "complete"),
            "cut_outcomes": dict(Counter(str(runs[s.id][0]["outcome"]) for s in cuts)),
            "cut_heard_s": [round(sum(plays_of[s.id]), 2) for s in cuts],
            "gone_reported_complete": sum(1 for s in gones
                                          if runs[s.id][0]["outcome"] == "complete"),
            "gone_heard": sum(1 for s in gones if plays_of[s.id]),
            "after_return_not_on_air": sum(1 for s in backs if not (
                runs[s.id][0]["outcome"] == "complete"
                and any(p >= s.tone.seconds - SHORT_BY_S for p in plays_of[s.id]))),
            "device_lost_events": len(lost), "device_restored_events": len(restored),
            "faults_unreported": max(0, CYCLES - len(lost)) + max(0, CYCLES - len(restored)),
            "lost_reason": lost[0]["reason"] if lost else None,
            "cut_reason": runs[cuts[0].id][0]["reason"],
            "heartbeats": len(beats),
            "heartbeat_gaps": sum(1 for a, b in outages
                                  if not any(a <= t <= b for t in beats)),
        }  # fmt: skip
    finally:
        if run is not None and run.st.running():
            run.st.stop()
        if run is not None:
            province.clear(playlist_topic(run.st))
        card.close()
        scenario.counts = counts
        record(scenario, COMMAND, time.monotonic() - began, tmp_path)
    assert scenario.misses() == {}, (scenario.misses(), counts)
    # Honest as-runs: the cut slot sounded, then lost its card; the gone one never sounded.
    assert set(counts["cut_outcomes"]) == {"partial"}, counts
    assert all("audio" in str(runs[s.id][0]["reason"]) for s in cuts + gones), runs
    assert all(runs[s.id][0]["outcome"] == "failed" for s in gones) and counts["gone_heard"] == 0
    assert all(0.4 < h < 2.0 - SHORT_BY_S for h in counts["cut_heard_s"]), counts


# -- 2. no card at start --------------------------------------------------------------------------


def test_card_missing_at_start(province: Province, tmp_path: Path) -> None:
    began = time.monotonic()
    card = VanishingCard(tmp_path / "card")  # not started: there is no card yet
    run: Run | None = None
    counts: dict[str, Any] = {}
    scenario = Scenario(
        part="devices", name="sound card missing at start",
        how="A real loa-agent (heartbeats 60 s apart) starts with its PulseAudio card absent; "
        "once the registry holds its report of the missing card, the card appears and a slot "
        "is scheduled. Read: the registry's events and as-run, and the card's capture.",
        bar={"reports_lost": 0, "duplicates_counted": 0, "crashes": 0,
             "faults_unreported": 0, "after_return_not_on_air": 0},
    )  # fmt: skip
    try:
        # Heartbeats 60 s apart: the report within 20 s must come from the start's own look
        # at the card, not from a heartbeat's.
        started = datetime.now(UTC).replace(microsecond=0)
        run = start(province, "missing", card, heartbeat_s=60.0)
        st = run.st
        run.wait(lambda: bool(events(st, "audio-device-lost")),
                 "the missing card reported in the registry", 20)  # fmt: skip
        card.restore()
        at = whole_second(datetime.now(UTC) + timedelta(seconds=LEAD_S))
        first = slot(province, "first", at, 700.0, 1.0)
        run.schedule([first])
        run.wait(lambda: sounding(st, first, first.tone.seconds - SHORT_BY_S),
                 "the first slot on the card", 30)  # fmt: skip
        counts = run.finish()
        runs, plays_of = asruns(st), heard(st, run.slots)
        lost = events(st, "audio-device-lost")
        restored = events(st, "audio-device-restored")
        counts |= {
            "slots_on_air": sum(1 for p in plays_of["first"] if p >= 1.0 - SHORT_BY_S),
            "after_return_not_on_air": 0 if runs["first"][0]["outcome"] == "complete"
            and counts.get("reports_lost") == 0 and plays_of["first"] else 1,
            "device_lost_events": len(lost), "device_restored_events": len(restored),
            "faults_unreported": (len(lost) != 1) + (len(restored) != 1),
            "lost_reason": lost[0]["reason"] if lost else None,
            "reported_after_start_s": round((ts(lost[0]) - started).total_seconds(), 1)
            if lost else None,
        }  # fmt: skip
    finally:
        if run is not None and run.st.running():
            run.st.stop()
        if run is not None:
            province.clear(playlist_topic(run.st))
        card.close()
        scenario.counts = counts
        record(scenario, COMMAND, time.monotonic() - began, tmp_path)
    assert scenario.misses() == {}, (scenario.misses(), counts)
    assert "audio" in str(counts["lost_reason"]), counts


# -- 3. a sense input that stops following its relay ----------------------------------------------


def test_sense_input_stops_following(province: Province, tmp_path: Path) -> None:
    began = time.monotonic()
    card = VanishingCard(tmp_path / "card")
    card.restore()
    stuck = tmp_path / "sense-stuck"
    run: Run | None = None
    counts: dict[str, Any] = {}
    scenario = Scenario(
        part="devices", name="relay sense input does not follow",
        how="A real loa-agent (LOA_HAL=sim) with amp_power and speaker_line sense inputs; "
        "LOA_FAULT=sense-stuck holds them absent around one slot and lets them follow before "
        "the next. Read: the registry's hw events and as-runs (amp_power_ok), and the card.",
        bar={"reports_lost": 0, "duplicates_counted": 0, "crashes": 0,
             "faults_unreported": 0, "recoveries_unreported": 0, "slots_not_on_air": 0,
             "stuck_reported_ok": 0, "free_reported_not_ok": 0},
    )  # fmt: skip
    try:
        run = start(province, "sense", card, SENSE_PINS,
                    f"{faults.SENSE_STUCK_PREFIX}{stuck}")  # fmt: skip
        st = run.st
        run.wait(st.online, "the station online", 30)
        first = whole_second(datetime.now(UTC) + timedelta(seconds=LEAD_S))
        pairs = [(slot(province, f"stuck{k}", first + timedelta(seconds=6 * k), 550.0 + 200 * k,
                       1.0),
                  slot(province, f"free{k}", first + timedelta(seconds=6 * k + 3),
                       650.0 + 200 * k, 1.0)) for k in range(CYCLES)]  # fmt: skip
        run.schedule([s for pair in pairs for s in pair])
        stuck_at: datetime | None = None
        for held, free in pairs:
            sleep_until(held.start - timedelta(seconds=1.5))
            tmp = stuck.with_suffix(".tmp")
            tmp.write_text("amp_power speaker_line\n")
            tmp.replace(stuck)
            stuck_at = stuck_at or datetime.now(UTC).replace(microsecond=0)
            run.wait(lambda h=held: h.id in asruns(st), f"{held.id}'s as-run", 20)
            stuck.unlink()
            freed = len(after(st, stuck_at, *RESTORED))
            run.wait(lambda n=freed, m=stuck_at: len(after(st, m, *RESTORED)) >= n + 2,
                     "both inputs' recoveries in the registry", 20)  # fmt: skip
            run.wait(lambda f=free: f.id in asruns(st), f"{free.id}'s as-run", 20)
        counts = run.finish()
        runs, plays_of = asruns(st), heard(st, run.slots)
        # The simulation's healthy start is itself an edge (agent/app.py drives the mock pins
        # "present" after their callbacks are set): restored events before the fault are that.
        faults_seen = after(st, stuck_at, *LOST)
        back = after(st, stuck_at, *RESTORED)
        counts |= {
            "cycles": CYCLES,
            "slots_on_air": sum(1 for s in run.slots if any(
                p >= s.tone.seconds - SHORT_BY_S for p in plays_of[s.id])),
            "slots_not_on_air": sum(1 for s in run.slots if not (
                runs[s.id][0]["outcome"] == "complete"
                and any(p >= s.tone.seconds - SHORT_BY_S for p in plays_of[s.id]))),
            "fault_events": len(faults_seen), "restored_events": len(back),
            "faults_unreported": max(0, 2 * CYCLES - len(faults_seen)),
            "recoveries_unreported": max(0, 2 * CYCLES - len(back)),
            "stuck_reported_ok": sum(1 for h, _ in pairs
                                     if runs[h.id][0]["amp_power_ok"] is not False),
            "free_reported_not_ok": sum(1 for _, f in pairs
                                        if runs[f.id][0]["amp_power_ok"] is not True),
            "fault_detail": faults_seen[0]["detail"] if faults_seen else None,
        }  # fmt: skip
    finally:
        if run is not None and run.st.running():
            run.st.stop()
        if run is not None:
            province.clear(playlist_topic(run.st))
        card.close()
        scenario.counts = counts
        record(scenario, COMMAND, time.monotonic() - began, tmp_path)
    assert scenario.misses() == {}, (scenario.misses(), counts)
