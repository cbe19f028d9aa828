"""A sound card that vanishes or is missing (issue 13, devices): ``PyAudioSink`` on a fake
PortAudio that fails like the real one did when its PulseAudio server was killed mid-play
(``write`` -> ``[Errno -9999] Unanticipated host error``, then ``stop_stream`` -> ``Stream not
open``; ``open`` -> ``[Errno -9996] Invalid output device`` while it is gone), and the player
on a sink that fails on command: the play's outcome, its reason, and the device reports."""

from __future__ import annotations

import queue
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from agent.player import Player, PlayItem, PlayRequest, PlayResult
from hal.audio import AudioError, PyAudioSink
from hal.relays import GpioRelays
from tests.harness.clock import FakeClock
from tests.unit.test_player import CHUNK, ScriptedSource


class FakeStream:
    def __init__(self, card: FakeCard) -> None:
        self.card = card
        self.open = True

    def write(self, pcm: bytes) -> None:
        if self.card.gone:
            self.open = False
            raise OSError(-9999, "Unanticipated host error")
        self.card.written += len(pcm)

    def stop_stream(self) -> None:
        if not self.open:
            raise OSError(-9988, "Stream not open")

    def close(self) -> None:
        if not self.open:
            raise OSError(-9988, "Stream not open")


class FakeCard:
    """What PortAudio sees: a card that is there or gone, and how often it was started."""

    def __init__(self) -> None:
        self.gone = False
        self.written = 0
        self.started = self.terminated = 0


@pytest.fixture
def card(monkeypatch: pytest.MonkeyPatch) -> FakeCard:
    state = FakeCard()

    class PyAudio:
        def __init__(self) -> None:
            state.started += 1

        def open(self, **kwargs: Any) -> FakeStream:
            if state.gone:
                raise OSError(-9996, "Invalid output device (no default output device)")
            return FakeStream(state)

        def terminate(self) -> None:
            state.terminated += 1

        def get_default_output_device_info(self) -> dict[str, Any]:
            if state.gone:
                raise OSError(-9996, "No Default Output Device Available")
            return {"name": "default"}

    module = types.ModuleType("pyaudio")
    module.PyAudio = PyAudio  # type: ignore[attr-defined]
    module.paInt16 = 8  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyaudio", module)
    return state


def test_a_card_lost_mid_write_says_so_and_close_does_not_hide_it(card: FakeCard) -> None:
    sink = PyAudioSink()
    sink.open()
    sink.write(CHUNK)
    card.gone = True
    with pytest.raises(AudioError, match="Unanticipated host error"):
        sink.write(CHUNK)
    sink.close()  # nothing left to stop: no second, misleading error
    assert card.terminated == 1  # PortAudio dropped, so the next open looks for the card afresh
    with pytest.raises(AudioError, match="cannot open audio device"):
        sink.open()
    card.gone = False
    sink.open()
    sink.write(CHUNK)
    sink.close()
    assert card.started == 3 and card.written == 2 * len(CHUNK)


def test_a_probe_starts_portaudio_afresh_and_opens_nothing(card: FakeCard) -> None:
    sink = PyAudioSink()
    sink.probe()
    card.gone = True  # pulled out after PortAudio took its device list
    with pytest.raises(AudioError, match="No Default Output Device"):
        sink.probe()
    card.gone = False
    sink.probe()
    assert (card.started, card.terminated, card.written) == (3, 2, 0)


class SwitchSink:
    """A sink whose card can be pulled (``gone``) at a given write, and plugged back."""

    def __init__(self, fail_at_write: int | None = None, missing: bool = False) -> None:
        self.fail_at_write, self.missing = fail_at_write, missing
        self.writes = self.opened = self.closed = self.probed = 0

    def open(self) -> None:
        if self.missing:
            raise AudioError("cannot open audio device 'default': no default output device")
        self.opened += 1

    def write(self, pcm: bytes) -> None:
        self.writes += 1
        if self.fail_at_write is not None and self.writes >= self.fail_at_write:
            raise AudioError("audio device 'default' failed: Unanticipated host error")

    def probe(self) -> None:
        self.probed += 1
        if self.missing:
            raise AudioError("no audio device 'default': No Default Output Device Available")

    def close(self) -> None:
        self.closed += 1
        if self.fail_at_write is not None and self.writes >= self.fail_at_write:
            raise AudioError("audio device 'default' failed to stop: Stream not open")


def make(
    mock_pins: Any, clock: FakeClock, sink: SwitchSink
) -> tuple[Player, queue.Queue[PlayResult], list[str | None], GpioRelays]:
    relays = GpioRelays(17, {"north": 27})
    done: queue.Queue[PlayResult] = queue.Queue()
    player = Player(
        relays, lambda: sink, lambda path, gain, start_s: ScriptedSource(clock, 5), clock,
        done.put, warmup_s=0, hold_s=0,
    )  # fmt: skip
    told: list[str | None] = []
    player.on_device = told.append
    return player, done, told, relays


def request() -> PlayRequest:
    item = PlayItem("m", "ab" * 32, Path("/nowhere"))
    return PlayRequest("25@25/s/2026-11-22T10:00:00Z", (item,), ("north",), 1.0, 0, None)


def test_a_card_lost_mid_play_is_partial_with_its_reason(
    mock_pins: Any, fake_clock: FakeClock
) -> None:
    sink = SwitchSink(fail_at_write=3)
    player, done, told, relays = make(mock_pins, fake_clock, sink)
    player.play(request())
    result = done.get(timeout=10)
    # It sounded two chunks: partial, not failed, and the reason is the write's, not close's.
    assert result.outcome == "partial" and result.started_at is not None
    assert result.reason is not None and "Unanticipated host error" in result.reason
    assert told == [result.reason]  # a card that works from the start is not news; lost is
    assert relays.states() == {"amp": False, "north": False}
    sink.fail_at_write = None
    player.play(request())
    assert done.get(timeout=10).outcome == "complete"
    assert told == [result.reason, None]  # back: told once
    relays.close()


def test_a_missing_card_fails_the_play_and_the_probe_finds_it_back(
    mock_pins: Any, fake_clock: FakeClock
) -> None:
    sink = SwitchSink(missing=True)
    player, done, told, relays = make(mock_pins, fake_clock, sink)
    player.probe_device()  # at start: unknown, so it looks
    assert told == ["audio: no audio device 'default': No Default Output Device Available"]
    player.play(request())
    result = done.get(timeout=10)
    assert (result.outcome, result.started_at) == ("failed", None)
    player.probe_device()
    assert len(told) == 1  # still missing: not told again
    sink.missing = False
    player.probe_device()
    assert told[1:] == [None] and sink.probed == 3 and sink.opened == sink.closed == 0
    player.probe_device()  # known to work: left alone
    assert sink.probed == 3
    relays.close()
