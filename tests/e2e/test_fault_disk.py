"""A full disk (issue 13, part "disk"): the station's state and cache directories on a tiny
file system (tests/harness/tiny_fs.py: a loop-mounted ext4 image of a few MiB) that the test
fills to the byte, under a real ``loa-agent run`` in the crash-point rig (tests/harness/crash.py:
mosquitto with mutual TLS and the ACL, a collector storing into a SQLite registry, a media
server on loopback). Everything is read from outside: the registry, the card (the ALSA file
sink's capture, watched), the cache directory, the agent's log and exit status.

1. Downloads on a full disk: a new playlist names a medium larger than the room left. Its
   download fails cleanly (no partial file, a ``cache-full`` media event in the registry),
   the agent stays up, the slots of the medium already cached keep sounding (complete
   as-runs, plays on the card); room given back, the medium is fetched and cached (long mode
   only: the retry waits out the fetcher's jittered back-off, up to 20 s).
2. Reports on a full disk: 0 bytes free while slots play and heartbeats flow. The agent stays
   up, the slots sound, every report produced meanwhile is stored by the collector once room
   is back (per kind seqs 0..N, none lost, one as-run per occurrence); any report the station
   had to give up is in a ``reports-unkept`` event, counted.
3. State writes on a full disk: a new playlist arriving while nothing can be written is not
   believed (trust.db keeps the old version, the agent stays up) and the old one plays on; room
   back, the retained playlist is taken.
4. A restart on a full disk: stopped cleanly (SQLite removes the -wal and -shm files), the disk
   filled to 0 bytes, started again: the agent comes up (agent/disk_reserve.py gives up its
   reserve so the databases open) and plays the cached slots.

Long mode (``LOA_RELIABILITY_LONG=1``): the disk stays full longer (more slots and reports
meet it), and the download after room comes back is waited for. Counts go through
tests/harness/reliability.py, recorded before the bar is asserted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.outbox import KINDS
from province.mosquitto import find_mosquitto
from tests.harness.crash import (
    CrashStation,
    Province,
    Slot,
    Tone,
    close_province,
    open_province,
    playlist_envelope,
    wait,
    whole_second,
)
from tests.harness.reliability import Scenario, record
from tests.harness.tiny_fs import TinyFs, tiny_fs

pytestmark = pytest.mark.integration

LONG = bool(os.environ.get("LOA_RELIABILITY_LONG"))
COMMAND = "LOA_RELIABILITY_LONG=1 .venv/bin/pytest -q tests/e2e/test_fault_disk.py"
STATIONS = {
    "downloads": "25/08230/08230-60",
    "reports": "25/08230/08230-61",
    "state": "25/08230/08230-62",
    "restart": "25/08230/08230-63",
}
TONE_S = 1.0
SPACING_S = 2.0  # whole seconds: slot starts are written HH:MM:SS
LEAD_S = 3.0  # playlist to first slot: the medium fetched first
FULL_S = 45.0 if LONG else 5.0  # how long the disk stays full in scenario 2
FS_MIB = 8
HELD = re.compile(r"held in memory until the disk has room")
TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(scope="module")
def province(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Province]:
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("mosquitto binary not found (install the Debian package: make sysdeps)")
    made = open_province(tmp_path_factory.mktemp("disk"), list(STATIONS.values()), executable)
    try:
        yield made
    finally:
        close_province(made)


@contextlib.contextmanager
def station_on(province: Province, name: str, tmp: Path) -> Iterator[tuple[CrashStation, TinyFs]]:
    """A provisioned station whose ``state`` and ``cache`` live on a tiny file system of its
    own (moved there, symlinked back: the paths in station.toml stay as provisioned)."""
    st = province.enrol(STATIONS[name])
    with tiny_fs(tmp / f"{name}-fs", FS_MIB) as fs:
        for sub in ("state", "cache"):
            here = st.directory / sub
            there = fs.root / sub
            if here.exists():
                shutil.copytree(here, there, symlinks=True)
                shutil.rmtree(here)
            else:
                there.mkdir()
            here.symlink_to(there)
        try:
            yield st, fs
        finally:
            fs.free()
            if st.running():
                st.stop()
            province.clear(topic(st))


def topic(st: CrashStation) -> str:
    return f"loa/v1/{st.path}/playlist/25"


@dataclass
class CardWatch:
    """The card from outside: the ALSA file sink's capture, polled; each burst of writes (a
    play) becomes one entry, when it was first seen written and how many bytes it held."""

    path: Path
    plays: list[tuple[datetime, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> CardWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        last_ns, last_seen = 0, 0.0
        while not self._stop.wait(0.01):
            try:
                st = self.path.stat()
            except FileNotFoundError:
                continue
            if st.st_mtime_ns == last_ns:
                continue
            now = time.monotonic()
            if now - last_seen > 0.6 or not self.plays:  # a quiet gap: a new play
                self.plays.append((datetime.now(UTC), st.st_size))
            else:
                self.plays[-1] = (self.plays[-1][0], max(self.plays[-1][1], st.st_size))
            last_ns, last_seen = st.st_mtime_ns, now

    def sounded(self, slot: Slot) -> bool:
        """A play began within the slot's window (pre-roll before, a loaded machine after)."""
        low, high = slot.start - timedelta(seconds=1.0), slot.end + timedelta(seconds=1.5)
        return any(low <= at <= high and size > 0 for at, size in self.plays)


def events(st: CrashStation, code: str) -> list[dict[str, Any]]:
    """The station's events with this code, as the registry stored them."""
    found = []
    for report in st.province.registry.reports("event", [st.path]):
        doc = json.loads(report.body)
        if doc.get("code") == code:
            found.append(doc)
    return found


def slots_of(tone: Tone, first: datetime, count: int, prefix: str = "s") -> list[Slot]:
    return [
        Slot(f"{prefix}{n}", first + timedelta(seconds=SPACING_S * n), tone) for n in range(count)
    ]


def asrun_outcomes(st: CrashStation) -> dict[tuple[str, datetime], list[str]]:
    seen: dict[tuple[str, datetime], list[str]] = {}
    for doc in st.asruns():
        key = (doc["slot"], datetime.fromisoformat(doc["scheduled_at"]).astimezone(UTC))
        seen.setdefault(key, []).append(doc["outcome"])
    return seen


def report_counts(st: CrashStation) -> dict[str, Any]:
    """Per kind and in all: produced (seqs allocated), stored, lost (neither stored nor still
    in the outbox), and whether the stored seqs run 0..N."""
    produced = stored = lost = 0
    holes: dict[str, list[int]] = {}
    for kind in KINDS:
        seqs, made, unsent = st.stored(kind), st.produced(kind), st.unsent(kind)
        produced += made
        stored += len(seqs)
        lost += len(set(range(made)) - set(seqs) - unsent)
        if seqs != list(range(len(seqs))):
            holes[kind] = sorted(set(range(max(seqs) + 1)) - set(seqs))
    return {"reports_produced": produced, "reports_stored": stored, "reports_lost": lost,
            "seq_holes": holes}  # fmt: skip


def settle(condition: Callable[[], bool], what: str, timeout: float) -> bool:
    """``wait`` for a fact the scenario's bar then counts: a timeout is recorded, not raised."""
    try:
        wait(condition, what, timeout)
    except TimeoutError:
        return False
    return True


def playlist_version(st: CrashStation) -> int | None:
    """The playlist version trust.db holds for the station's stream, read-only (a reading
    connection that may write, as CrashStation.versions opens, fails on a full disk with
    'disk I/O error'); None when it cannot be read at all."""
    path = st.directory / "state" / "trust.db"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute(
                "SELECT version FROM playlist WHERE target = ?", (st.path,)
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return int(rows[0][0]) if rows else 0


def made_between(st: CrashStation, since: datetime, until: datetime) -> int:
    """Stored reports the station made in [since, until] by their own time stamp (heartbeats
    and events: ``ts``; as-runs: ``ended_at``)."""
    made = 0
    for kind in KINDS:
        for report in st.province.registry.reports(kind, [st.path]):
            doc = json.loads(report.body)
            stamp = doc.get("ended_at") if kind == "asrun" else doc.get("ts")
            if isinstance(stamp, str) and since <= datetime.fromisoformat(stamp) <= until:
                made += 1
    return made


def believed_versions(st: CrashStation, since: datetime, until: datetime) -> list[int]:
    """The playlist versions the station's heartbeats made in [since, until] said it held for
    its own stream (stored by the collector once room was back)."""
    seen = set()
    for report in st.province.registry.reports("heartbeat", [st.path]):
        doc = json.loads(report.body)
        if since <= datetime.fromisoformat(doc["ts"]) <= until:
            seen |= {v for k, v in doc.get("streams", {}).items() if k.endswith(st.path)}
    return sorted(seen)


def crashed(st: CrashStation) -> int:
    """Agent exits nobody asked for, and tracebacks in its log."""
    died = 0 if st.running() else 1
    return died + st.proc.log_text().count(TRACEBACK)


# -- 1. downloads on a full disk ----------------------------------------------------------------


def test_download_on_a_full_disk_fails_cleanly_and_cached_slots_play(
    province: Province, tmp_path: Path
) -> None:
    began = time.monotonic()
    cached = province.tone(700.0, TONE_S)
    big = province.tone(300.0, 30.0 if LONG else 12.0)  # 320 kb/s: about 40 KB a second
    room = 96 * 1024  # less than the big medium: its download meets ENOSPC part way
    scenario = Scenario(
        part="disk", name="downloads on a full disk",
        how="State and cache on a loop-mounted ext4 of 8 MiB, filled to leave 96 KiB; a new "
        "playlist adds a medium larger than that to slots of a cached one. Read from outside: "
        "the cache directory, the registry's events and as-runs, the card's capture; then the "
        "room is given back (long mode: and the medium must be fetched).",
        bar={"crashes": 0, "partial_files_left": 0, "audio_start_errors": 0,
             "reports_lost": 0, "cache_full_events_missing": 0,
             **({"fetched_after_room": 1} if LONG else {})},
    )  # fmt: skip
    with (
        station_on(province, "downloads", tmp_path) as (st, fs),
        CardWatch(st.proc.capture) as card,
    ):
        dup_before = province.duplicates()
        st.start()
        wait(st.online, "the station online", 30)
        first = whole_second(datetime.now(UTC) + timedelta(seconds=LEAD_S))
        before = slots_of(cached, first, 1, "a")
        province.publish(topic(st), playlist_envelope(st.path, 1, before))
        wait(lambda: st.cached(cached.sha256), "the first medium cached", 20)
        fs.fill_to(room)
        free_at_fill = fs.available()
        first = whole_second(datetime.now(UTC) + timedelta(seconds=2))
        count = 8 if LONG else 2
        during = slots_of(cached, first, count, "b")
        later = Slot("big", first + timedelta(hours=1), big)  # fetched now, played later
        province.publish(topic(st), playlist_envelope(st.path, 2, [*during, later]))
        settle(lambda: bool(events(st, "cache-full")) or not st.running(), "a cache-full event", 30)
        partial_seen = st.cache_problems()
        wait(lambda: datetime.now(UTC) > during[-1].end + timedelta(seconds=1) or
             not st.running(), "the slots over", 60)  # fmt: skip
        problems = st.cache_problems() + partial_seen
        big_cached_full = st.cached(big.sha256)
        free_while_full = fs.available()
        listing = {str(p.relative_to(fs.root)): p.stat().st_size for p in fs.root.rglob("*")
                   if p.is_file()}  # fmt: skip
        fs.free()
        if LONG:  # its retry waits out a jittered back-off (up to 20 s after three failures)
            settle(lambda: st.cached(big.sha256), "the big medium once room is back", 60)
        settle(lambda: all(k in asrun_outcomes(st) for k in [(s.id, s.start) for s in during])
             or not st.running(), "an as-run of every slot", 20)  # fmt: skip
        fetched = int(st.cached(big.sha256) and not st.cache_problems())
        outcomes = asrun_outcomes(st)
        crashes = crashed(st)
        st.stop()
        settle(st.settled, "the registry's watermarks to reach every stored report", 20)
        full_events = [e for e in events(st, "cache-full") if e.get("sha256") == big.sha256]
        on_air = sum(1 for slot in during if card.sounded(slot))
        complete = sum(1 for slot in during if outcomes.get((slot.id, slot.start)) == ["complete"])
        scenario.counts = {
            **report_counts(st), "crashes": crashes, "restarts": 0,
            "slots_due": len(during), "slots_on_air": on_air,
            "asruns_complete": complete, "audio_start_errors": len(during) - min(on_air, complete),
            "partial_files_left": len(problems), "problems": problems,
            "cache_full_events": len(full_events),
            "cache_full_events_missing": 0 if full_events else 1,
            "big_cached_while_full": int(big_cached_full), "fetched_after_room": fetched,
            "free_bytes_at_fill": free_at_fill, "medium_bytes": big.entry["bytes"],
            "free_bytes_after_slots": free_while_full, "listing": listing,
            "fs": fs.kind, "duplicates_dropped": province.duplicates() - dup_before,
        }  # fmt: skip
    record(scenario, COMMAND, time.monotonic() - began, tmp_path)
    assert scenario.misses() == {}, (scenario.counts, st.tail())
    assert not scenario.counts["big_cached_while_full"]


# -- 2. reports on a full disk ------------------------------------------------------------------


def test_reports_on_a_full_disk_are_kept_and_stored_once_room_is_back(
    province: Province, tmp_path: Path
) -> None:
    began = time.monotonic()
    tone = province.tone(800.0, TONE_S)
    scenario = Scenario(
        part="disk", name="reports on a full disk",
        how=f"State and cache on a loop-mounted ext4 of 8 MiB, filled to 0 bytes free for "
        f"{FULL_S:g} s while slots every {SPACING_S:g} s play and heartbeats flow each second; "
        "then room is given back. Read from outside: the registry (seqs, as-runs, events), the "
        "station's outbox file, the card's capture, the agent's log and exit.",
        bar={"crashes": 0, "reports_lost": 0, "duplicates_counted": 0,
             "audio_start_errors": 0},
    )  # fmt: skip
    with station_on(province, "reports", tmp_path) as (st, fs), CardWatch(st.proc.capture) as card:
        dup_before = province.duplicates()
        st.start()
        wait(st.online, "the station online", 30)
        first = whole_second(datetime.now(UTC) + timedelta(seconds=LEAD_S))
        count = 2 + int(FULL_S // SPACING_S)  # one before the fill, the rest while full
        slots = slots_of(tone, first, count)
        province.publish(topic(st), playlist_envelope(st.path, 1, slots))
        wait(lambda: st.cached(tone.sha256), "the medium cached", 20)
        wait(lambda: datetime.now(UTC) > slots[0].end, "the first slot over", 20)
        produced_before = {k: st.produced(k) for k in KINDS}
        fs.fill_to(0)
        full_since = datetime.now(UTC)
        wait(lambda: datetime.now(UTC) > full_since + timedelta(seconds=FULL_S)
             or not st.running(), "the disk full for its time", FULL_S + 5)  # fmt: skip
        refused = len(HELD.findall(st.proc.log_text()))
        produced_full = {k: st.produced(k) for k in KINDS}
        full_until = datetime.now(UTC)
        fs.free()
        wait(lambda: datetime.now(UTC) > slots[-1].end + timedelta(seconds=1)
             or not st.running(), "the last slot over", 60)  # fmt: skip
        keys = [(s.id, s.start) for s in slots]
        settle(lambda: all(k in asrun_outcomes(st) for k in keys) or not st.running(),
             "an as-run of every slot in the registry", 30)  # fmt: skip
        crashes = crashed(st)
        if st.running():
            assert st.stop() == 0, st.tail()
        settle(st.settled, "the registry's watermarks to reach every stored report", 20)
        outcomes = asrun_outcomes(st)
        per = Counter(len(outcomes.get(k, [])) for k in keys)
        during = [
            s for s in slots if full_since <= s.start <= full_since + timedelta(seconds=FULL_S)
        ]
        on_air = sum(1 for s in slots if card.sounded(s))
        complete = sum(1 for k in keys if outcomes.get(k) == ["complete"])
        unkept = sum(int(e.get("count", 0)) for e in events(st, "reports-unkept"))
        scenario.counts = {
            **report_counts(st), "crashes": crashes, "restarts": 0,
            "slots_due": len(slots), "slots_on_air": on_air, "slots_while_full": len(during),
            "asruns_complete": complete,
            "audio_start_errors": len(slots) - min(on_air, complete),
            "duplicates_counted": sum(n - 1 for n in per.elements() if n > 1),
            "asruns_missing": per.get(0, 0),
            "duplicates_dropped": province.duplicates() - dup_before,
            "outbox_full_episodes": refused,  # the outbox began holding reports
            "seqs_allocated_while_full": sum(produced_full[k] - produced_before[k] for k in KINDS),
            "reports_made_while_full": made_between(st, full_since, full_until),
            "reports_unkept": unkept,  # given up in memory, as the station's events count them
            "full_s": FULL_S, "fs": fs.kind,
        }  # fmt: skip
    record(scenario, COMMAND, time.monotonic() - began, tmp_path)
    assert scenario.misses() == {}, (scenario.counts, st.tail())
    assert scenario.counts["seq_holes"] == {}
    # The fault was met: the outbox refused writes while the disk was full, and what was made
    # then reached the registry afterwards.
    assert refused > 0, st.tail()
    assert scenario.counts["reports_made_while_full"] > 0


# -- 3. state writes on a full disk -------------------------------------------------------------


def test_playlist_on_a_full_disk_is_not_believed_and_the_old_one_plays(
    province: Province, tmp_path: Path
) -> None:
    began = time.monotonic()
    old, new = province.tone(500.0, TONE_S), province.tone(650.0, TONE_S)
    scenario = Scenario(
        part="disk", name="playlist acceptance on a full disk",
        how="State on a loop-mounted ext4 of 8 MiB filled to 0 bytes free; a new playlist "
        "version arrives (retained). Read from outside: trust.db's version, the registry's "
        "as-runs and events, the card's capture; then room is given back.",
        bar={"crashes": 0, "believed_unpersisted": 0, "audio_start_errors": 0,
             "new_version_after_room": 1},
    )  # fmt: skip
    dup_before = province.duplicates()
    with station_on(province, "state", tmp_path) as (st, fs), CardWatch(st.proc.capture) as card:
        st.start()
        wait(st.online, "the station online", 30)
        first = whole_second(datetime.now(UTC) + timedelta(seconds=LEAD_S))
        slots = slots_of(old, first, 2)
        province.publish(topic(st), playlist_envelope(st.path, 1, slots))
        wait(lambda: st.cached(old.sha256), "the medium cached", 20)
        fs.fill_to(0)
        full_since = datetime.now(UTC)
        later = whole_second(slots[-1].end + timedelta(seconds=30))
        province.publish(topic(st), playlist_envelope(st.path, 2, [*slots, Slot("n", later, new)]))
        # Its verdict comes within the first slot (the envelope is taken at once); the disk
        # stays full until that slot is over, then the second plays as room comes back.
        wait(lambda: datetime.now(UTC) > slots[0].end + timedelta(seconds=0.5)
             or not st.running(), "the first slot over", 30)  # fmt: skip
        held_version = playlist_version(st)
        crashes_full = crashed(st)
        full_until = datetime.now(UTC)
        fs.free()
        settle(lambda: playlist_version(st) == 2 or not st.running(), "version 2 once room is back",
               20)  # fmt: skip
        keys = [(s.id, s.start) for s in slots]
        settle(lambda: all(k in asrun_outcomes(st) for k in keys) or not st.running(),
             "an as-run of every slot", 30)  # fmt: skip
        after = playlist_version(st)
        crashes = max(crashes_full, crashed(st))
        believed = believed_versions(st, full_since, full_until)
        outcomes = asrun_outcomes(st)
        on_air = sum(1 for s in slots if card.sounded(s))
        complete = sum(1 for k in keys if outcomes.get(k) == ["complete"])
        scenario.counts = {
            "crashes": crashes, "restarts": 0, "slots_due": len(slots), "slots_on_air": on_air,
            "asruns_complete": complete,
            "audio_start_errors": len(slots) - min(on_air, complete),
            "version_held_while_full": held_version,
            "versions_in_heartbeats_while_full": believed,
            "believed_unpersisted": 0 if held_version == 1 and set(believed) <= {1} else 1,
            "new_version_after_room": int(after == 2),
            "state_unwritable_events": len(events(st, "state-unwritable")), "fs": fs.kind,
            "duplicates_dropped": province.duplicates() - dup_before,
        }  # fmt: skip
    record(scenario, COMMAND, time.monotonic() - began, tmp_path)
    assert scenario.misses() == {}, (scenario.counts, st.tail())


# -- 4. a restart on a full disk ----------------------------------------------------------------


def test_restart_on_a_full_disk_comes_up_and_plays_the_cache(
    province: Province, tmp_path: Path
) -> None:
    began = time.monotonic()
    tone = province.tone(450.0, TONE_S)
    scenario = Scenario(
        part="disk", name="restart on a full disk",
        how="The agent stopped cleanly (its databases' -wal and -shm files go with it), the "
        "file system filled to 0 bytes free, the agent started again: it must come up and "
        "play the cached slots; then room is given back. Read from outside: the agent's exit, "
        "the card's capture, the registry's as-runs.",
        bar={"crashes": 0, "audio_start_errors": 0, "reports_lost": 0},
    )  # fmt: skip
    dup_before = province.duplicates()
    with station_on(province, "restart", tmp_path) as (st, fs), CardWatch(st.proc.capture) as card:
        st.start()
        wait(st.online, "the station online", 30)
        first = whole_second(datetime.now(UTC) + timedelta(seconds=LEAD_S + 2))  # stop, fill, start
        slots = slots_of(tone, first, 2)
        province.publish(topic(st), playlist_envelope(st.path, 1, slots))
        wait(lambda: st.cached(tone.sha256), "the medium cached", 20)
        assert st.stop() == 0, st.tail()
        fs.fill_to(0)
        st.start()
        wait(lambda: datetime.now(UTC) > slots[-1].end + timedelta(seconds=1)
             or not st.running(), "the slots over", 30)  # fmt: skip
        crashes = crashed(st)
        fs.free()
        keys = [(s.id, s.start) for s in slots]
        if st.running():
            settle(lambda: all(k in asrun_outcomes(st) for k in keys), "an as-run of every slot",
                   20)  # fmt: skip
            st.stop()
        outcomes = asrun_outcomes(st)
        on_air = sum(1 for s in slots if card.sounded(s))
        complete = sum(1 for k in keys if outcomes.get(k) == ["complete"])
        scenario.counts = {
            **report_counts(st), "crashes": crashes, "restarts": 1,
            "slots_due": len(slots), "slots_on_air": on_air, "asruns_complete": complete,
            "audio_start_errors": len(slots) - min(on_air, complete), "fs": fs.kind,
            "duplicates_dropped": province.duplicates() - dup_before,
        }  # fmt: skip
    record(scenario, COMMAND, time.monotonic() - began, tmp_path)
    assert scenario.misses() == {}, (scenario.counts, st.tail())
