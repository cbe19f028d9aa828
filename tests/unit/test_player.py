"""The player's sequence with behavioural fakes: a recording sink, a scripted PCM source,
gpiozero's MockFactory relays and a fake clock. Warm-up, gaps and hold are zero so nothing
here waits on real time; a cut is synchronised with events, not sleeps."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.player import FRAME_BYTES, Player, PlayItem, PlayRequest, PlayResult
from hal.audio import SAMPLE_RATE, AudioError
from hal.relays import GpioRelays
from tests.harness.clock import FakeClock

CHUNK = b"\x00\x40" * 2 * 4800  # 100 ms of a constant half-scale signal, stereo


class RecordingSink:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.opened = self.closed = 0
        self.first_write = threading.Event()

    def open(self) -> None:
        self.opened += 1

    def write(self, pcm: bytes) -> None:
        self.written.append(pcm)
        self.first_write.set()

    def close(self) -> None:
        self.closed += 1


class ScriptedSource:
    """Yields ``count`` chunks (forever when None), advancing the fake clock 100 ms each."""

    def __init__(self, clock: FakeClock, count: int | None, fail: bool = False) -> None:
        self.clock, self.count, self.fail = clock, count, fail
        self.closed = False

    def chunks(self) -> Iterator[bytes]:
        sent = 0
        while self.count is None or sent < self.count:
            if self.fail and sent == 2:
                raise AudioError("ffmpeg: Invalid data found when processing input")
            yield CHUNK
            self.clock.advance(0.1)
            sent += 1
            if self.count is None:
                # An endless source is paced like a card (2 ms a chunk, not 100): running free,
                # the playback thread plays minutes of fake audio before the test's next step.
                time.sleep(0.002)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> ScriptedSource:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def make_player(
    mock_pins: Any,
    clock: FakeClock,
    sink: RecordingSink,
    count: int | None,
    fail: bool = False,
    amp_linger_s: float = 0,
) -> tuple[Player, queue.Queue[PlayResult], GpioRelays]:
    relays = GpioRelays(17, {"north": 27, "south": 22})
    done: queue.Queue[PlayResult] = queue.Queue()
    player = Player(
        relays,
        lambda: sink,
        lambda path, gain, start_s: ScriptedSource(clock, count, fail),
        clock,
        done.put,
        warmup_s=0,
        hold_s=0,
        amp_linger_s=amp_linger_s,
    )
    return player, done, relays


def request(items: int = 1, deadline: float | None = None) -> PlayRequest:
    media = tuple(PlayItem(f"m{i}", "ab" * 32, Path(f"/nowhere/{i}")) for i in range(items))
    return PlayRequest("25@25/s/2026-11-22T10:00:00Z", media, ("north",), 0.8, 0, deadline)


def test_complete_play_switches_relays_in_order(mock_pins: Any, fake_clock: FakeClock) -> None:
    sink = RecordingSink()
    player, done, relays = make_player(mock_pins, fake_clock, sink, count=5)
    player.play(request(items=2))
    result = done.get(timeout=10)
    assert result.outcome == "complete" and result.reason is None
    assert len(sink.written) == 10 and sink.opened == sink.closed == 1
    assert abs(result.played_s - 10 * len(CHUNK) / FRAME_BYTES / SAMPLE_RATE) < 1e-9
    assert result.relay_ok is True and result.amp_power_ok is True
    assert result.output_level_db is not None and abs(result.output_level_db + 6.02) < 0.1
    assert [s.state for s in mock_pins.pin(17).states] == [0, 1, 0]
    assert [s.state for s in mock_pins.pin(27).states] == [0, 1, 0]
    assert [s.state for s in mock_pins.pin(22).states] == [0]
    relays.close()


def test_slot_end_cuts_to_partial(mock_pins: Any, fake_clock: FakeClock) -> None:
    sink = RecordingSink()
    player, done, relays = make_player(mock_pins, fake_clock, sink, count=50)
    player.play(request(deadline=fake_clock.monotonic() + 0.3))
    result = done.get(timeout=10)
    assert (result.outcome, result.reason) == ("partial", "slot end reached")
    assert len(sink.written) == 3
    assert relays.states() == {"amp": False, "north": False, "south": False}
    relays.close()


def test_decoder_failure_is_failed_and_relays_drop(mock_pins: Any, fake_clock: FakeClock) -> None:
    sink = RecordingSink()
    player, done, relays = make_player(mock_pins, fake_clock, sink, count=10, fail=True)
    player.play(request())
    result = done.get(timeout=10)
    assert result.outcome == "failed" and "Invalid data" in (result.reason or "")
    assert len(sink.written) == 2 and sink.closed == 1
    assert relays.states() == {"amp": False, "north": False, "south": False}
    relays.close()


def test_cut_preempts_within_a_chunk(mock_pins: Any, fake_clock: FakeClock) -> None:
    sink = RecordingSink()
    player, done, relays = make_player(mock_pins, fake_clock, sink, count=None)
    player.play(request())
    assert sink.first_write.wait(10)
    assert player.busy
    player.cut("preempted", "preempted by emergency")
    result = done.get(timeout=10)
    assert (result.outcome, result.reason) == ("preempted", "preempted by emergency")
    assert not player.busy
    assert relays.states() == {"amp": False, "north": False, "south": False}
    relays.close()


def test_result_says_where_playback_stood(mock_pins: Any, fake_clock: FakeClock) -> None:
    sink = RecordingSink()
    player, done, relays = make_player(mock_pins, fake_clock, sink, count=None)
    player.play(
        PlayRequest("k", request(items=3).items, ("north",), 1.0, 0, None, start_item=1,
                    start_offset_s=12.5)
    )  # fmt: skip
    assert sink.first_write.wait(10)
    player.cut("preempted", "emergency")
    result = done.get(timeout=10)
    assert result.item == 1
    assert result.item_offset_s >= 12.6  # the offset it started at plus what it played
    relays.close()


def test_pre_roll_waits_for_the_instant(mock_pins: Any, fake_clock: FakeClock) -> None:
    sink = RecordingSink()
    player, done, relays = make_player(mock_pins, fake_clock, sink, count=2)
    started = threading.Event()

    class Watch(RecordingSink):
        def write(self, pcm: bytes) -> None:
            started.set()
            super().write(pcm)

    watch = Watch()
    player._open_sink = lambda: watch
    # The instant is in the past on the fake monotonic clock: no wait, it plays at once…
    player.play(PlayRequest("k", request().items, ("north",), 1.0, 0, None,
                            start_at=fake_clock.monotonic() - 1))  # fmt: skip
    assert done.get(timeout=10).outcome == "complete"
    # …and with the instant ahead, the first write waits for it (cut while waiting: no audio).
    player.play(PlayRequest("k2", request().items, ("north",), 1.0, 0, None,
                            start_at=fake_clock.monotonic() + 3600))  # fmt: skip
    player.cut("preempted", "emergency")
    result = done.get(timeout=10)
    # A player that ignored start_at would have written its two chunks and completed.
    assert result.outcome == "preempted" and result.played_s == 0
    assert len(watch.written) == 2  # only the first play wrote
    relays.close()


def test_amplifier_stays_on_between_close_items(mock_pins: Any, fake_clock: FakeClock) -> None:
    sink = RecordingSink()
    player, done, relays = make_player(mock_pins, fake_clock, sink, count=1, amp_linger_s=3600)
    player.play(request())
    done.get(timeout=10)
    assert relays.states()["amp"] is True  # lingering: the next item needs no warm-up
    player.play(request())
    done.get(timeout=10)
    assert [s.state for s in mock_pins.pin(17).states] == [0, 1]  # never dropped in between
    player.close()
    assert relays.states()["amp"] is False  # safe-off does not linger
    relays.close()


def test_announcements_get_chimes_that_do_not_move_the_position(
    mock_pins: Any, fake_clock: FakeClock
) -> None:
    sink = RecordingSink()
    player, done, relays = make_player(mock_pins, fake_clock, sink, count=2)
    chime = b"\x11\x11" * 2 * 4800
    asked: list[str] = []

    def chimes(kind: str, gain: float) -> ScriptedSource:
        asked.append(kind)
        source = ScriptedSource(fake_clock, 1)
        source.chunks = lambda: iter([chime])  # type: ignore[method-assign]
        return source

    player._chimes = chimes
    items = tuple(
        PlayItem(f"m{i}", "ab" * 32, Path(f"/nowhere/{i}"), 1.0, chime=i < 2) for i in range(3)
    )
    player.play(PlayRequest("k", items, ("north",), 1.0, 0, None))
    result = done.get(timeout=10)
    assert asked == ["before", "after"]  # one pair around the run of two announcements
    assert sink.written[0] == chime and sink.written[5] == chime
    assert len(sink.written) == 2 + 2 + 2 + 2  # chimes plus two chunks of each item
    assert result.item == 2 and abs(result.item_offset_s - 0.2) < 1e-9
    relays.close()


def test_every_play_but_an_urgent_one_is_marked_before_its_first_sample(
    mock_pins: Any, fake_clock: FakeClock
) -> None:
    """A late join or a resume (no pre-roll) is told before its first sample too: killed just
    after it, the restart found no mark and reported "missed" (the crash-point soak). An urgent
    play (an emergency) sounds first; its mark follows (ItemStarted)."""
    sink = RecordingSink()
    player, done, relays = make_player(mock_pins, fake_clock, sink, count=2)
    told: list[tuple[str, int]] = []
    player.on_sounding = lambda key: told.append((key, len(sink.written)))
    late = PlayRequest("late", request().items, ("north",), 1.0, 0, None, start_offset_s=0.5)
    player.play(late)
    assert done.get(timeout=10).outcome == "complete"
    player.play(PlayRequest("urgent", request().items, ("north",), 1.0, 0, None, urgent=True))
    assert done.get(timeout=10).outcome == "complete"
    assert told == [("late", 0)]  # before any sample; none for the urgent play
    player.close()
    relays.close()
