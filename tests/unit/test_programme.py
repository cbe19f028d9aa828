"""The programme with a real Player on fakes: preemption and resume, skips, missing media,
closed slots, catch-up after a restart and overdue occurrences. Results are pumped by hand
from the player's queue, as the runtime's loop would."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.core.models import MediaRef, Playlist
from agent.core.planner import Occurrence, occurrences
from agent.player import Player, PlayItem, PlayResult
from agent.programme import Outcome, Programme
from hal.relays import GpioRelays
from tests.harness.clock import FakeClock
from tests.harness.trust import playlist_body
from tests.unit.test_player import RecordingSink, ScriptedSource

WINDOW = timedelta(minutes=15)


def occ(slot: str, start: str, priority: int = 50, seconds: float = 60, name: str = "a",
        end: str | None = None) -> Occurrence:  # fmt: skip
    slot_doc: dict[str, Any] = {"id": slot, "start": start, "days": ["sun"], "items": [name],
                                "priority": priority}  # fmt: skip
    if end:
        slot_doc["end"] = end
    media = {name: {"url": f"https://m.example.vn/{name}.mp3", "sha256": "ab" * 32,
                    "bytes": 100, "duration_s": seconds}}  # fmt: skip
    doc = playlist_body(media=media, slots=[slot_doc])
    day = datetime(2026, 11, 21, 12, tzinfo=UTC)  # Saturday 19:00 in Hanoi
    return occurrences([Playlist.from_body(doc)], day, day + timedelta(days=2))[0]


class Rig:
    def __init__(
        self, mock_pins: Any, clock: FakeClock, ready: bool = True, hold_s: float = 0
    ) -> None:
        self.results: queue.Queue[PlayResult] = queue.Queue()
        self.reported: list[Outcome] = []
        self.relays = GpioRelays(17, {"north": 27})
        self.sink = RecordingSink()

        def source(path: Path, gain: float, start_s: float) -> ScriptedSource:
            # media named "long…" never ends by itself; others play three chunks
            return ScriptedSource(clock, None if path.name.startswith("long") else 3)

        self.player = Player(self.relays, lambda: self.sink, source, clock, self.results.put,
                             warmup_s=0, hold_s=hold_s)  # fmt: skip
        self.programme = Programme(
            clock, self.player,
            media_ready=lambda m: ready,
            media_path=lambda m: PlayItem(m.name, m.sha256, Path(m.name)),
            volume=lambda o: 80,
            report=self.reported.append,
            resume_window=WINDOW,
        )  # fmt: skip

    def pump(self) -> PlayResult:
        result = self.results.get(timeout=10)
        self.programme.done(result)
        return result

    def outcomes(self) -> list[tuple[str, str, str | None]]:
        return [(o.occurrence.slot_id, o.outcome, o.reason) for o in self.reported]

    def close(self) -> None:
        self.player.close()
        self.relays.close()


def wait_for(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    """The player's thread makes it true (a real thread; the fake clock does not drive it)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.005)


def at(clock: FakeClock, occurrence: Occurrence, seconds: float = 0) -> None:
    clock.set_wall(occurrence.start + timedelta(seconds=seconds))


def test_preempted_item_resumes_where_it_stopped(mock_pins: Any, fake_clock: FakeClock) -> None:
    rig = Rig(mock_pins, fake_clock)
    low = occ("news", "06:00", 50, name="long-news", seconds=600)
    high = occ("alert", "06:01", 60)
    rig.programme.replace_plan([low, high], low.start, lambda k: False)
    at(fake_clock, low)
    rig.programme.fire(low.key)
    assert rig.sink.first_write.wait(10)
    at(fake_clock, high)
    rig.programme.fire(high.key)  # cuts in
    cut = rig.pump()
    assert cut.key == low.key and cut.outcome == "preempted"
    assert rig.reported == []  # the interrupted news waits, it is not over
    finished = rig.pump()
    assert finished.key == high.key
    assert rig.outcomes() == [("alert", "complete", None)]
    assert rig.player.current is not None and rig.player.current.key == low.key
    assert rig.player.current.start_item == 0
    assert rig.player.current.start_offset_s >= cut.item_offset_s > 0
    rig.player.cut("partial", "test over")
    rig.pump()
    assert rig.outcomes()[-1][:2] == ("news", "partial")
    rig.close()


def test_the_next_slot_takes_the_card_from_one_that_sounded_in_full_and_holds(
    mock_pins: Any, fake_clock: FakeClock
) -> None:
    """Slots back to back: the first has sounded in full and holds its relays (hold_s) when
    the next fires; the next ends the hold and plays, both complete. It was skipped as "first
    was on air" (found by tests/e2e/test_fault_devices.py with slots 2 s apart)."""
    rig = Rig(mock_pins, fake_clock, hold_s=60)
    first = occ("first", "06:00", seconds=60)
    second = occ("second", "06:01", seconds=60)
    rig.programme.replace_plan([first, second], first.start, lambda k: False)
    rig.programme.fire(first.key)
    assert rig.sink.first_write.wait(10)
    wait_for(lambda: rig.player.sounded)  # three chunks out: now only the hold
    at(fake_clock, second)
    rig.programme.fire(second.key)
    assert rig.pump().key == first.key  # the hold ended at once, not after 60 s
    wait_for(lambda: rig.player.sounded)
    rig.player.cut("complete", "")  # ends the second one's hold
    assert rig.pump().key == second.key
    assert rig.outcomes() == [("first", "complete", None), ("second", "complete", None)]
    rig.close()


def test_a_slot_that_runs_past_the_next_ones_start_is_cut_there(
    mock_pins: Any, fake_clock: FakeClock
) -> None:
    """Planned to end by the next start, yet still sounding at it (a longer file than its
    declared duration): the next slot is on time and the overrun is cut, partial."""
    rig = Rig(mock_pins, fake_clock)
    first = occ("first", "06:00", seconds=60, name="long-first")
    second = occ("second", "06:01", seconds=60)
    rig.programme.replace_plan([first, second], first.start, lambda k: False)
    rig.programme.fire(first.key)
    assert rig.sink.first_write.wait(10)
    at(fake_clock, second)
    rig.programme.fire(second.key)
    assert rig.pump().key == first.key
    assert rig.pump().key == second.key
    assert rig.outcomes() == [
        ("first", "partial", "ran past the start of second"),
        ("second", "complete", None),
    ]
    rig.close()


def test_a_higher_slot_that_runs_past_its_end_is_not_cut_by_a_lower_one(
    mock_pins: Any, fake_clock: FakeClock
) -> None:
    rig = Rig(mock_pins, fake_clock)
    first = occ("alert", "06:00", 60, seconds=60, name="long-alert")
    second = occ("music", "06:01", 10, seconds=60)
    rig.programme.replace_plan([first, second], first.start, lambda k: False)
    rig.programme.fire(first.key)
    assert rig.sink.first_write.wait(10)
    at(fake_clock, second)
    rig.programme.fire(second.key)
    assert rig.outcomes() == [("music", "skipped", "alert was on air")]
    assert rig.player.current is not None and rig.player.current.key == first.key
    rig.close()


def test_lower_priority_is_skipped(mock_pins: Any, fake_clock: FakeClock) -> None:
    rig = Rig(mock_pins, fake_clock)
    high = occ("alert", "06:00", 60, name="long-alert")
    low = occ("music", "06:01", 10)
    rig.programme.replace_plan([high, low], high.start, lambda k: False)
    rig.programme.fire(high.key)
    assert rig.sink.first_write.wait(10)
    rig.programme.fire(low.key)
    assert rig.outcomes() == [("music", "skipped", "alert was on air")]
    rig.close()


def test_media_not_ready_fails(mock_pins: Any, fake_clock: FakeClock) -> None:
    rig = Rig(mock_pins, fake_clock, ready=False)
    news = occ("news", "06:00")
    rig.programme.replace_plan([news], news.start, lambda k: False)
    rig.programme.fire(news.key)
    assert rig.outcomes() == [("news", "failed", "media-missing")]
    assert not rig.player.busy
    rig.close()


def test_interrupted_slot_that_closed_is_partial(mock_pins: Any, fake_clock: FakeClock) -> None:
    rig = Rig(mock_pins, fake_clock)
    low = occ("news", "06:00", 50, name="long-news", end="06:02")
    high = occ("alert", "06:01", 60)
    rig.programme.replace_plan([low, high], low.start, lambda k: False)
    at(fake_clock, low)
    rig.programme.fire(low.key)
    assert rig.sink.first_write.wait(10)
    at(fake_clock, high)
    rig.programme.fire(high.key)
    rig.pump()  # the news, cut
    at(fake_clock, low, 180)  # the alert ends after the news slot's end
    rig.pump()
    assert [o[:2] for o in rig.outcomes()] == [("alert", "complete"), ("news", "partial")]
    assert "closed" in (rig.outcomes()[1][2] or "")
    rig.close()


def test_restart_joins_what_is_on_and_reports_what_was_missed(
    mock_pins: Any, fake_clock: FakeClock
) -> None:
    rig = Rig(mock_pins, fake_clock)
    missed = occ("early", "05:00", seconds=60)
    on_now = occ("news", "05:58", seconds=600)
    at(fake_clock, on_now, 120)
    rig.programme.catch_up([missed, on_now], missed.start - timedelta(hours=1), lambda k: False)
    assert rig.outcomes() == [("early", "missed", "the station was not running")]
    assert rig.player.current is not None and rig.player.current.start_offset_s == 120
    rig.pump()
    assert rig.outcomes()[-1] == ("news", "partial", "joined late after a restart")
    rig.close()


def test_overdue_occurrences_are_missed_never_played_late(
    mock_pins: Any, fake_clock: FakeClock
) -> None:
    rig = Rig(mock_pins, fake_clock)
    news = occ("news", "06:00")
    rig.programme.replace_plan([news], news.start - timedelta(hours=1), lambda k: False)
    # The clock jumps an hour ahead: the next plan no longer holds the news.
    rig.programme.replace_plan([], news.start + timedelta(hours=1), lambda k: False)
    assert rig.outcomes() == [("news", "missed", "its time passed before it could play")]
    assert not rig.player.busy
    rig.close()


def test_media_ref_is_what_the_programme_plays() -> None:
    assert MediaRef.__slots__  # the programme hands MediaRef to media_ready/media_path


def test_missing_media_plays_the_local_fallback(mock_pins: Any, fake_clock: FakeClock) -> None:
    rig = Rig(mock_pins, fake_clock, ready=False)
    rig.programme = Programme(
        fake_clock, rig.player,
        media_ready=lambda m: False,
        media_path=lambda m: PlayItem(m.name, m.sha256, Path(m.name)),
        volume=lambda o: 80,
        report=rig.reported.append,
        resume_window=WINDOW,
        fallback=Path("/srv/loa/fallback.mp3"),
    )  # fmt: skip
    news = occ("news", "06:00")
    rig.programme.replace_plan([news], news.start, lambda k: False)
    at(fake_clock, news)
    rig.programme.fire(news.key)
    assert rig.outcomes() == [("news", "failed", "media-missing")]
    assert rig.player.current is not None
    assert rig.player.current.items[0].path == Path("/srv/loa/fallback.mp3")
    rig.pump()
    assert rig.outcomes()[-1] == (
        "news#fallback",
        "complete",
        "local fallback programme: the slot's media was missing",
    )
    rig.close()


def emergency_occ(clock: FakeClock, name: str = "storm", repeat: int = 3, priority: int = 100,
                  command: str = "e-1") -> Occurrence:  # fmt: skip
    from agent.core import emergency
    from agent.core.models import Command
    from tests.harness.trust import emergency_body

    doc = emergency_body(id=command, repeat=repeat, priority=priority)
    cmd = Command.from_body(doc)
    media = MediaRef(name, "https://m.example.vn/x.mp3", "cd" * 32, 100, 3.0, None, "emergency")
    end = clock.now() + timedelta(minutes=30)
    return emergency.occurrence(cmd, media, end, clock.now(),
                                emergency.EmergencyDefaults(100, 3, 0.0))  # fmt: skip


def test_an_emergency_cuts_in_repeats_and_the_slot_resumes(
    mock_pins: Any, fake_clock: FakeClock
) -> None:
    rig = Rig(mock_pins, fake_clock)
    news = occ("news", "06:00", 50, name="long-news", seconds=600)
    rig.programme.replace_plan([news], news.start, lambda k: False)
    at(fake_clock, news)
    rig.programme.fire(news.key)
    assert rig.sink.first_write.wait(10)
    alert = emergency_occ(fake_clock)
    assert len(alert.items) == 3 and alert.priority == 100 and alert.end is not None
    rig.programme.cut_in(alert)
    assert rig.pump().outcome == "preempted"
    done = rig.pump()
    assert done.key == alert.key and done.item == 2  # all three repetitions played
    assert rig.outcomes() == [("emergency:e-1", "complete", None)]
    assert rig.player.current is not None and rig.player.current.key == news.key  # resumed
    rig.player.cut("partial", "test over")
    rig.pump()
    rig.close()


def test_a_cancel_stops_the_emergency_on_air_and_drops_a_waiting_one(
    mock_pins: Any, fake_clock: FakeClock
) -> None:
    rig = Rig(mock_pins, fake_clock)
    first = emergency_occ(fake_clock, name="long-storm", command="e-1")
    second = emergency_occ(fake_clock, priority=95, command="e-2")  # outranked: waits
    rig.programme.cut_in(first)
    assert rig.sink.first_write.wait(10)
    rig.programme.cut_in(second)
    assert rig.programme.cancel("emergency:e-2", "cancelled by c-2")
    assert rig.outcomes() == [("emergency:e-2", "skipped", "cancelled by c-2")]
    assert rig.programme.cancel("emergency:e-1", "cancelled by c-1")
    rig.pump()
    assert rig.outcomes()[-1] == ("emergency:e-1", "partial", "cancelled by c-1")
    assert not rig.programme.cancel("emergency:e-9", "nothing")
    rig.close()


def test_a_clock_set_back_never_plays_an_occurrence_twice(
    mock_pins: Any, fake_clock: FakeClock
) -> None:
    """The clock steps back while the news plays: the replan sees its start ahead again (its
    timer is set again, as it has no as-run yet); once over and reported, that timer firing
    must neither play it again nor report it twice."""
    rig = Rig(mock_pins, fake_clock)
    news = occ("news", "06:00")
    reported = lambda key: any(o.occurrence.key == key for o in rig.reported)  # noqa: E731
    rig.programme.replace_plan([news], news.start, reported)
    at(fake_clock, news)
    rig.programme.fire(news.key)
    assert rig.sink.first_write.wait(10)
    fake_clock.set_wall(news.start - timedelta(seconds=10))  # NTP steps the clock back
    rig.programme.replace_plan([news], news.start - timedelta(seconds=40), reported)
    rig.pump()
    assert rig.outcomes() == [("news", "complete", None)]
    at(fake_clock, news)  # its start comes round again
    rig.programme.fire(news.key)
    assert not rig.player.busy and rig.outcomes() == [("news", "complete", None)]
    # A later replan leaves it out of the plan altogether.
    rig.programme.replace_plan([news], news.start - timedelta(seconds=30), reported)
    assert news.key not in rig.programme.plan
    rig.close()
