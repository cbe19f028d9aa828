"""The player runtime: one playback thread that switches relays and streams audio to the sink.

It owns the sequence of one occurrence: amplifier on, warm-up, zone relays on, each item
decoded by ffmpeg and streamed chunk by chunk (never a whole file of PCM in memory) with the
gaps between, then the hold time and everything off in reverse order. It decides nothing about
*what* plays: the runtime asks, and gets a ``PlayResult`` back through ``on_done`` (which only
enqueues). ``cut`` stops the current play within one chunk (100 ms of audio).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from agent.core.clock import Clock
from hal.audio import CHANNELS, SAMPLE_RATE, SAMPLE_WIDTH, AudioError, AudioSink, LevelMeter
from hal.relays import RelayError, Relays

FRAME_BYTES = CHANNELS * SAMPLE_WIDTH


class PcmSource(AbstractContextManager["PcmSource"], Protocol):
    def chunks(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PlayItem:
    name: str
    sha256: str
    path: Path


@dataclass(frozen=True, slots=True)
class PlayRequest:
    key: str
    items: tuple[PlayItem, ...]
    zones: tuple[str, ...]
    gain: float  # linear, 0..1
    gap_s: float
    deadline: float | None  # monotonic time of the slot's hard end


@dataclass(frozen=True, slots=True)
class PlayResult:
    key: str
    started_at: datetime | None
    ended_at: datetime
    played_s: float
    outcome: str  # complete | partial | preempted | failed
    reason: str | None
    relay_ok: bool | None
    amp_power_ok: bool | None
    output_level_db: float | None


class Player:
    def __init__(
        self,
        relays: Relays,
        open_sink: Callable[[], AudioSink],
        decoder: Callable[[Path, float], PcmSource],
        clock: Clock,
        on_done: Callable[[PlayResult], None],
        *,
        warmup_s: float,
        hold_s: float,
    ) -> None:
        self._relays = relays
        self._open_sink = open_sink
        self._decoder = decoder
        self._clock = clock
        self._on_done = on_done
        self._warmup_s = warmup_s
        self._hold_s = hold_s
        self._thread: threading.Thread | None = None
        self._cut = threading.Event()
        self._cut_reason: tuple[str, str] = ("partial", "")
        self.current: PlayRequest | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def play(self, request: PlayRequest) -> None:
        if self.busy:
            raise RuntimeError("the player is busy: cut the current play first")
        self._cut = threading.Event()
        self.current = request
        self._thread = threading.Thread(
            target=self._run, args=(request, self._cut), name=f"play {request.key}", daemon=True
        )
        self._thread.start()

    def cut(self, outcome: str, reason: str, wait_s: float = 5.0) -> None:
        """Stop the current play (outcome ``preempted`` or ``partial``) and wait for it."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._cut_reason = (outcome, reason)
        self._cut.set()
        thread.join(wait_s)

    def close(self) -> None:
        self.cut("partial", "station stopping")
        self._relays.all_off()

    # the playback thread --------------------------------------------------------------------

    def _run(self, request: PlayRequest, cut: threading.Event) -> None:
        started_at: datetime | None = None
        frames = 0
        meter = LevelMeter()
        outcome, reason = "complete", None
        relay_ok: bool | None = None
        amp_ok: bool | None = None
        try:
            self._relays.set_amp(True)
            amp_ok = self._relays.states().get("amp")
            if not cut.wait(self._warmup_s):
                self._relays.set_zones(request.zones, True)
                relay_ok = self._zones_on(request.zones)
                sink = self._open_sink()
                sink.open()
                try:
                    for index, item in enumerate(request.items):
                        if index and request.gap_s and cut.wait(request.gap_s):
                            break
                        with self._decoder(item.path, request.gain) as source:
                            for chunk in source.chunks():
                                if cut.is_set():
                                    break
                                if request.deadline and self._clock.monotonic() >= request.deadline:
                                    outcome, reason = "partial", "slot end reached"
                                    break
                                if started_at is None:
                                    started_at = self._clock.now()
                                sink.write(chunk)
                                meter.add(chunk)
                                frames += len(chunk) // FRAME_BYTES
                        if cut.is_set() or outcome != "complete":
                            break
                finally:
                    sink.close()
            if cut.is_set():
                outcome, reason = self._cut_reason
            elif self._hold_s:
                cut.wait(self._hold_s)
        except AudioError as exc:
            outcome, reason = "failed", f"audio: {exc}"[:200]
        except RelayError as exc:
            outcome, reason = "failed", f"relay: {exc}"[:200]
        finally:
            try:
                self._relays.set_zones(request.zones, False)
                self._relays.set_amp(False)
            except RelayError as exc:
                outcome, reason = "failed", f"relay: {exc}"[:200]
            self._on_done(
                PlayResult(
                    key=request.key,
                    started_at=started_at,
                    ended_at=self._clock.now(),
                    played_s=frames / SAMPLE_RATE,
                    outcome=outcome,
                    reason=reason,
                    relay_ok=relay_ok,
                    amp_power_ok=amp_ok,
                    output_level_db=meter.dbfs(),
                )
            )

    def _zones_on(self, zones: tuple[str, ...]) -> bool | None:
        states = {k: v for k, v in self._relays.states().items() if k != "amp"}
        if not states:
            return None  # no zone relays configured: nothing to read back
        wanted = states.keys() if "all" in zones else [z for z in zones if z in states]
        return all(states[z] for z in wanted)
