"""Link faults (issue 13, part "link"): the broker SIGKILLed and restarted, the 4G link cut for
a compressed hour of slots, collectors restarted; nothing lost, nothing counted twice, the
schedule on air throughout.

Every part is real (tests/harness/crash.py's province: mosquitto with mutual TLS and the ACL, a
collector storing into a SQLite registry, a media server; provisioned ``loa-agent run``
processes, LOA_HAL=sim, each play kept in a file of its own by ALSA's ``file`` plugin). What is
proved is read from outside: the registry (per kind the stored seqs run 0..N, one as-run per
occurrence, coverage's ``complete`` count), the station's outbox and trust database read as
files (every seq it allocated is stored or still waiting in it), the card's files (which tone
sounded, when). Each scenario records its counts (tests/harness/reliability.py) before it
asserts its bar.

1. Broker killed during playlist delivery: v1 held; v2 (a new medium) published, and the broker
   SIGKILLed while the station downloads v2's medium (the media server holds the answer
   halfway); the broker comes back on its port as a broker restored from an old snapshot would:
   retained v1 first, then the desk publishes v2 again. The station stays on v2 (trust.db
   polled all along), refuses v1 (``rollback``), and plays v2's slots, never v1's.
2. Broker killed during telemetry: heartbeats every 0.3 s and as-runs flowing; the broker is
   SIGKILLed in the middle of a slot (and, in long mode, several more times) and restarted.
3. The link cut (tests/harness/tcp_proxy.py: connections closed, new ones refused) for a whole
   schedule (CI: 6 slots 2 s apart; long: 60 slots): every slot's own tone reaches the card
   while the link is down, and once it is back every report is stored exactly once.
4. Collectors restarted mid-telemetry: two collectors on the shared subscription; the first is
   stopped and started again, then the second (long mode: more rounds).

Faults come at planned instants (``sleep_until``); everything else waits on facts with
deadlines. ``LOA_RELIABILITY_LONG=1`` runs the long mode.
"""

from __future__ import annotations

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

from agent.outbox import KINDS
from province.coverage import coverage
from province.mosquitto import find_mosquitto
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
)
from tests.harness.reliability import Scenario, record
from tests.harness.tcp_proxy import TcpProxy
from tests.harness.trust import envelope

pytestmark = pytest.mark.integration

LONG = os.environ.get("LOA_RELIABILITY_LONG") == "1"
COMMAND = "LOA_RELIABILITY_LONG=1 .venv/bin/pytest -q tests/e2e/test_fault_link.py"
COLLECTOR_2 = "province-25.collector-2"
OPERATORS = ((COLLECTOR, "25"), (COLLECTOR_2, "25"), (DESK, "25"))
STATIONS = {
    "delivery": "25/08230/08230-60",
    "telemetry": "25/08230/08230-61",
    "cut": "25/08230/08230-62",
    "collectors": "25/08230/08230-63",
}
TONE_S = 0.5
SPACING_S = 2  # whole seconds: slot starts are written HH:MM:SS
HEARTBEAT_S = 0.3  # telemetry flowing all the time
# A play's card file is last written within this of its slot's start (an unpaced sink takes the
# play at once; the agent opens the card at the start after a 0.2 s warm-up).
ON_TIME_S = 1.5
# From the first playlist to v2's first slot: v1 fetched, v2's fetch held, the broker down and
# back, the station reconnected (0.5-2 s), the fetch retried (0-5 s after its failure).
LEAD_DELIVERY_S = 14
BAR = {"reports_lost": 0, "duplicates_counted": 0, "crashes": 0}


@pytest.fixture(scope="module")
def province(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Province]:
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("mosquitto binary not found (install the Debian package: make sysdeps)")
    made = open_province(
        tmp_path_factory.mktemp("link"), list(STATIONS.values()), executable, OPERATORS
    )
    try:
        yield made
    finally:
        close_province(made)


def whole_second(earliest: datetime) -> datetime:
    return earliest.replace(microsecond=0) + timedelta(seconds=1)


def playlist_topic(st: CrashStation) -> str:
    return f"loa/v1/{st.path}/playlist/25"


def publish(province: Province, st: CrashStation, version: int, slots: Sequence[Slot]) -> bytes:
    """Signed, retained on the station's stream, and recorded where coverage finds it."""
    doc = playlist_doc(st.path, version, slots)
    signed = envelope("playlist", doc, "playlist")
    province.publish(playlist_topic(st), signed)
    province.record_playlist(playlist_topic(st), doc, signed)
    return signed


def schedule(province: Province, first: datetime, count: int, base_hz: float) -> list[Slot]:
    """``count`` slots SPACING_S apart from ``first``, each with a tone of its own."""
    return [
        Slot(f"s{n:02d}", first + timedelta(seconds=SPACING_S * n),
             province.tone(base_hz + 40.0 * n, TONE_S))
        for n in range(count)
    ]  # fmt: skip


# -- what is read from outside -------------------------------------------------------------------


@dataclass
class Outcome:
    """Counts read from the registry, the outbox and the card; ``counts`` is what is recorded."""

    counts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def settle(st: CrashStation) -> int:
    """Stop the agent cleanly (its exit status); wait until the registry has no hole left."""
    status = st.stop()
    wait(st.settled, "the registry's watermarks to reach every stored report", 30)
    return status


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def reports_outcome(st: CrashStation, dup_before: int, out: Outcome) -> None:
    """Per kind: stored seqs 0..N, every allocated seq stored or still in the outbox."""
    produced = stored = lost = unsent = 0
    per_kind = {}
    for kind in KINDS:
        seqs, made, waiting = st.stored(kind), st.produced(kind), st.unsent(kind)
        missing = set(range(made)) - set(seqs) - waiting
        if seqs != list(range(len(seqs))):
            out.problems.append(f"{kind}: stored seqs are not 0..N: {seqs}")
        if missing:
            out.problems.append(f"{kind}: lost seqs {sorted(missing)}")
        produced, stored, lost, unsent = (
            produced + made, stored + len(seqs), lost + len(missing), unsent + len(waiting)
        )  # fmt: skip
        per_kind[kind] = len(seqs)
    out.counts.update(
        reports_produced=produced, reports_stored=stored, reports_lost=lost,
        reports_unsent=unsent, stored_by_kind=per_kind,
        duplicates_dropped=st.province.duplicates() - dup_before,
    )  # fmt: skip


def asruns_outcome(st: CrashStation, slots: Sequence[Slot], out: Outcome) -> None:
    """One as-run per occurrence in the registry, and coverage (the KPI) counting each once."""
    docs = st.asruns()
    per = Counter((d["slot"], _utc(d["scheduled_at"])) for d in docs)
    wanted = {(s.id, s.start) for s in slots}
    extra = sum(n - 1 for n in per.values() if n > 1)
    strays = set(per) - wanted
    missing = wanted - set(per)
    if strays:
        out.problems.append(f"as-runs of no occurrence: {sorted(strays)}")
    if missing:
        out.problems.append(f"occurrences without an as-run: {sorted(missing)}")
    rows = [
        row
        for row in coverage(
            st.province.registry,
            min(s.start for s in slots) - timedelta(seconds=1),
            max(s.start for s in slots) + timedelta(seconds=1),
            datetime.now(UTC),
        )  # fmt: skip
        if any(o.station == st.path for o in row.stations)
    ]
    kpi_complete = sum(row.complete for row in rows)
    complete = sum(1 for d in docs if d["outcome"] == "complete")
    over_counted = sum(max(0, row.complete - row.expected) for row in rows)
    out.counts.update(
        occurrences=len(wanted), asruns_stored=len(docs), kpi_rows=len(rows),
        kpi_complete=kpi_complete, asruns_complete=complete,
        outcomes=dict(Counter(str(d["outcome"]) for d in docs)),
        duplicates_counted=extra + over_counted + max(0, len(rows) - len(wanted)),
    )  # fmt: skip
    if kpi_complete != len({(d["slot"], d["scheduled_at"]) for d in docs
                            if d["outcome"] == "complete"}):  # fmt: skip
        out.problems.append(f"coverage counts {kpi_complete} complete, the as-runs say otherwise")


def card_outcome(
    st: CrashStation, slots: Sequence[Slot], out: Outcome, foreign: Sequence[Tone] = ()
) -> None:
    """Which slots' tones reached the card, in full and on time (read from the card's files);
    ``foreign``: tones that must never sound (a superseded playlist's)."""
    plays = st.plays()
    on_air = late = 0
    for s in slots:
        mine = [p for p in plays if p.is_tone(s.tone) and p.seconds >= s.tone.seconds - 0.05]
        if not mine:
            continue
        on_air += 1
        if not any(
            abs((p.written - s.start).total_seconds()) <= ON_TIME_S for p in mine
        ):  # fmt: skip
            late += 1
    strangers = [p for p in plays if not any(p.is_tone(s.tone) for s in slots)]
    wrong = [p for p in plays if any(p.is_tone(t) for t in foreign)]
    out.counts.update(
        slots_due=len(slots), slots_on_air=on_air, audio_start_errors=late,
        plays=len(plays), foreign_plays=len(wrong) + len(strangers),
    )  # fmt: skip
    if strangers or wrong:
        out.problems.append(f"sounds that are no current slot's tone: {strangers + wrong}")


def rejections(st: CrashStation) -> dict[str, int]:
    """Section 8 codes of the envelope events the registry stored for the station."""
    docs = [json.loads(r.body) for r in st.province.registry.reports("event", [st.path])]
    return dict(
        Counter(
            str(d["code"])
            for d in docs
            if d.get("event") == "envelope" and d.get("code") not in ("accepted", None)
        )
    )


def finish(
    scenario: Scenario, out: Outcome, began: float, tmp_path: Path, bar: dict[str, int]
) -> None:
    """Record first (a failing run leaves its counts too), then assert the bar."""
    scenario.counts.update(out.counts)
    scenario.counts["problems"] = out.problems
    scenario.bar = bar
    record(scenario, COMMAND, time.monotonic() - began, tmp_path)
    assert scenario.misses() == {}, (scenario.misses(), out.problems)
    assert out.problems == []


def all_reported(st: CrashStation, slots: Sequence[Slot]) -> Callable[[], bool]:
    def done() -> bool:
        stored = {(d["slot"], _utc(d["scheduled_at"])) for d in st.asruns()}
        return all((s.id, s.start) in stored for s in slots)

    return done


def crashed(st: CrashStation, status: int | None) -> int:
    """Agent exits nobody asked for: a dead process before the clean stop, or a bad status."""
    return 0 if status == 0 else 1


# -- 1. the broker killed during playlist delivery ------------------------------------------------


def test_broker_killed_during_playlist_delivery(province: Province, tmp_path: Path) -> None:
    began = time.monotonic()
    st = province.enrol(STATIONS["delivery"], plays_to_files=True)
    out = Outcome()
    dup_before = province.duplicates()
    seen_versions: list[int] = []

    def holds(version: int) -> bool:
        held = st.versions()[0]
        seen_versions.append(held)
        return held == version

    scenario = Scenario(
        part="link", name="broker killed during playlist delivery",
        how="v1 held; v2 (a new medium) published and the broker SIGKILLed while the station "
        "downloads it; back on its port serving the stale v1 first (an old snapshot), then v2 "
        "again. trust.db read at every poll of the waits, the card's files, the registry.",
    )  # fmt: skip
    status: int | None = None
    try:
        st.start()
        wait(st.online, "the station online", 30)
        # The same occurrences in both versions, each with its own medium: the card tells
        # which version played them.
        old, new = province.tone(500.0, TONE_S), province.tone(800.0, TONE_S)
        first = whole_second(datetime.now(UTC) + timedelta(seconds=LEAD_DELIVERY_S))
        starts = [first + timedelta(seconds=SPACING_S * n) for n in range(2)]
        v1 = publish(province, st, 1, [Slot(f"s{n:02d}", t, old) for n, t in enumerate(starts)])
        wait(lambda: holds(1) and st.cached(old.sha256), "v1 held, its medium cached", 20)
        # v2's medium is held halfway by the media server while the broker dies.
        path = "/" + str(new.entry["url"]).rsplit("/", 1)[1]
        data = (province.tmp / f"{new.name}.mp3").read_bytes()
        province.media.add(path, data, stall_after=len(data) // 2, stall_s=1.0, ranges=True)
        slots = [Slot(f"s{n:02d}", t, new) for n, t in enumerate(starts)]
        v2 = publish(province, st, 2, slots)
        wait(lambda: province.media.hits(path) >= 1, "the station fetching v2's medium", 20)
        session = st.session()
        province.kill_broker()
        province.media.add(path, data, ranges=True)  # the next attempt gets it all
        wait(lambda: holds(2), "v2 held while the broker is down", 10)
        province.restart_broker()
        wait(lambda: st.session() > session, "the station back on the broker", 30)
        province.publish(playlist_topic(st), v1)  # as a broker restored from an old snapshot
        province.publish(playlist_topic(st), v2)  # the desk publishes again
        left = (slots[-1].end - datetime.now(UTC)).total_seconds() + 20
        wait(all_reported(st, slots), "an as-run of each of v2's slots", left)
        seen_versions.append(st.versions()[0])
        status = settle(st)
        reports_outcome(st, dup_before, out)
        asruns_outcome(st, slots, out)
        card_outcome(st, slots, out, foreign=[old])
        back = [v for a, v in zip(seen_versions, seen_versions[1:], strict=False) if v < a]
        codes = rejections(st)
        out.counts.update(
            broker_kills=1, restarts=0, crashes=crashed(st, status), rejections=codes,
            version_held=st.versions()[0], went_back=len(back), versions_polled=len(seen_versions),
        )  # fmt: skip
        if codes.get("rollback", 0) < 1:
            out.problems.append(f"the stale v1 was not refused with rollback: {codes}")
    finally:
        if st.running():
            st.stop()
        province.clear(playlist_topic(st))
    finish(scenario, out, began, tmp_path,
           {**BAR, "went_back": 0, "version_held": 2, "audio_start_errors": 0,
            "slots_on_air": 2, "foreign_plays": 0})  # fmt: skip
