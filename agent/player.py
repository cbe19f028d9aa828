"""The player runtime: one playback thread that switches relays and streams audio to the sink.

It owns the sequence of one occurrence: amplifier on, warm-up, zone relays on, each item
decoded by ffmpeg and streamed chunk by chunk (never a whole file of PCM in memory) with the
gaps between, then the hold time and the zones off; the amplifier goes off a little later
unless another play starts first (it stays on between items that follow closely). It decides
nothing about *what* plays: the runtime asks, and gets a ``PlayResult`` back through
``on_done`` (which only enqueues). ``cut`` stops the current play within one chunk (100 ms).

Pre-roll: a request with ``start_at`` (a monotonic instant) is started early by the runtime;
the player switches the amplifier on, starts the decoder and reads its first chunk ahead, puts
the zones on after the warm-up, and writes the first sample so that it reaches the sound card
at ``start_at`` (the sink's own output latency is subtracted).
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from agent import faults
from agent.core.clock import Clock
from hal.audio import CHANNELS, SAMPLE_RATE, SAMPLE_WIDTH, AudioError, AudioSink, LevelMeter
from hal.capture import LevelProbe, SilenceWatch
from hal.relays import RelayError, Relays

FRAME_BYTES = CHANNELS * SAMPLE_WIDTH
log = logging.getLogger(__name__)


class PcmSource(AbstractContextManager["PcmSource"], Protocol):
    def chunks(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


# path, linear gain, seconds into the file to start at
DecoderFactory = Callable[[Path, float, float], PcmSource]


class Running:
    """One play (or relay test) on a playback thread: ``is_alive`` until its work returned."""

    def __init__(self) -> None:
        self._done = threading.Event()

    def is_alive(self) -> bool:
        return not self._done.is_set()

    def join(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)


class PlaybackThreads:
    """Daemon threads that run plays and are kept for the next one, instead of one new thread
    per play: ``Thread.start`` waits for the new thread to be scheduled, which on a busy CPU
    is the longest step between an emergency's verdict and its first frame. A preemption
    overlaps two plays for a moment (the new one primes its decoder while the old sounds), so
    there are usually two threads, never more than plays at once."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[_Job | None]] = []
        self._all: list[queue.SimpleQueue[_Job | None]] = []
        self._started = 0

    def run(self, work: Callable[[], None]) -> Running:
        running = Running()
        with self._lock:  # a job is only ever put where ``close`` cannot have put the end
            if self._idle:
                inbox = self._idle.pop()
            else:
                inbox = queue.SimpleQueue()
                self._all.append(inbox)
                self._started += 1
                name = f"{self._name} {self._started}"
                thread = threading.Thread(target=self._serve, args=(inbox,), name=name)
                thread.daemon = True
                thread.start()
            inbox.put((work, running))
        return running

    def close(self) -> None:
        """Let the threads end, each after what it is running; ``run`` starts new ones."""
        with self._lock:
            for inbox in self._all:
                inbox.put(None)
            self._all, self._idle = [], []

    def _serve(self, inbox: queue.SimpleQueue[_Job | None]) -> None:
        while (job := inbox.get()) is not None:
            work, running = job
            try:
                work()
            except Exception:  # what a Thread's excepthook would have printed; the thread stays
                log.exception("playback thread: unexpected error")
            finally:
                running._done.set()
            with self._lock:
                if inbox in self._all:
                    self._idle.append(inbox)


class _DeviceError(Exception):
    """An ``AudioError`` of the sink (the card), told apart from the decoder's on the way out."""

    def __init__(self, error: AudioError) -> None:
        super().__init__(str(error))
        self.error = error


_Job = tuple[Callable[[], None], Running]
# The play being replaced: its run, its cut event, its "sounded in full" event, the (outcome,
# reason) to end it with, and when to end it: None at once (preemption), else the monotonic
# time the new play is due; until then it may sound to its end and only its hold is cut.
Previous = tuple[Running | None, threading.Event, threading.Event, tuple[str, str], float | None]


@dataclass(frozen=True, slots=True)
class PlayItem:
    name: str
    sha256: str
    path: Path
    gain: float = 1.0  # the item's own correction (loudness normalisation), times the volume
    chime: bool = False  # an announcement: an attention chime before and after it
    # An item that brings its own PCM (a live relay: the stream's view) instead of a file for
    # the decoder; called with the linear gain. ``path`` is then only a label.
    source: Callable[[float], PcmSource] | None = None


@dataclass(frozen=True, slots=True)
class PlayRequest:
    key: str
    items: tuple[PlayItem, ...]
    zones: tuple[str, ...]
    gain: float  # linear, 0..1: the slot's volume
    gap_s: float
    deadline: float | None  # monotonic time of the slot's hard end
    start_item: int = 0  # resume or late join: where to begin
    start_offset_s: float = 0.0
    start_at: float | None = None  # pre-roll: monotonic instant of the first sample at the card
    # Sounds before its paperwork (an emergency): no durable on-air mark ahead of its first
    # sample (``Player.on_sounding``), which would put an SQLite commit before it.
    urgent: bool = False


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
    item: int  # where playback stood when it ended: item index…
    item_offset_s: float  # …and seconds into it (to resume an interrupted occurrence)
    silent: bool = False  # the input channel heard nothing while it should have


@dataclass(frozen=True, slots=True)
class ZoneCheck:
    """One zone of a relay test: what the relays and the health inputs read back."""

    zone: str
    on: bool | None  # its relay read back energised while switched on (None: not reached)
    off: bool | None  # and released once switched off again
    others_off: bool | None  # no other zone was energised meanwhile
    inputs: Mapping[str, bool]  # the health inputs while the zone was on

    @property
    def ok(self) -> bool:
        return bool(self.on and self.off and self.others_off)


@dataclass(frozen=True, slots=True)
class RelayTestResult:
    zones: tuple[ZoneCheck, ...]
    amp: bool | None  # the amplifier relay read back on (None: none configured, or not reached)
    inputs_before: Mapping[str, bool]  # the health inputs with the amplifier on, no zone on
    interrupted: str | None = None  # a play took the relays before the test was through
    error: str | None = None  # the relay hardware failed

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.interrupted is None
            and self.amp is not False
            and all(z.ok for z in self.zones)
        )


class Player:
    def __init__(
        self,
        relays: Relays,
        open_sink: Callable[[], AudioSink],
        decoder: DecoderFactory,
        clock: Clock,
        on_done: Callable[[PlayResult], None],
        *,
        warmup_s: float,
        hold_s: float,
        amp_linger_s: float = 0.0,
        probe: LevelProbe | None = None,
        silence: tuple[float, float] = (-50.0, 3.0),  # threshold dBFS, seconds
        on_silence: Callable[[str], None] | None = None,
        chimes: Callable[[str, float], PcmSource] | None = None,
    ) -> None:
        self._chimes = chimes
        self._probe = probe
        self._silence = silence
        self._on_silence = on_silence
        self._relays = relays
        self._open_sink = open_sink
        self._decoder = decoder
        self._clock = clock
        self._on_done = on_done
        self._warmup_s = warmup_s
        self._hold_s = hold_s
        self._amp_linger_s = amp_linger_s
        self._threads = PlaybackThreads("play")
        self._thread: Running | None = None
        self._cut = threading.Event()
        self._sounded = threading.Event()  # the current play reached its end uncut
        self._cut_reason: tuple[str, str] = ("partial", "")
        self._amp_lock = threading.Lock()
        self._amp_on = False
        self._amp_timer: threading.Timer | None = None
        self.current: PlayRequest | None = None
        self.testing = False  # the thread running is a relay test, not a play
        # Told (key, item index) when an item's first sample goes out: an emergency reports
        # each repetition as it sounds. Called on the playback thread: enqueue only.
        self.on_item: Callable[[str, int], None] | None = None
        # Told (key) on the playback thread once a play's zones are on, before the pre-roll's
        # last wait (if any) and its first sample: the station makes its on-air mark durable
        # here, so a crash after the first sample never leaves a scheduled play that sounded
        # without one. It must not raise. Urgent plays (``PlayRequest.urgent``) skip it.
        self.on_sounding: Callable[[str], None] | None = None
        # Told when the sound card fails (its reason) and when it works again (None), once per
        # change: from a play or from ``probe_device``, on either thread. Enqueue only.
        self.on_device: Callable[[str | None], None] | None = None
        self._device_lock = threading.Lock()
        self._device_known = False  # nothing has opened the card yet
        self._device_fault: str | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def sounded(self) -> bool:
        """The current play reached its end uncut: what is left of it is the hold."""
        return self.busy and self._sounded.is_set()

    @property
    def device_fault(self) -> str | None:
        """Why the sound card failed last, until a play or a probe finds it working again."""
        return self._device_fault

    def probe_device(self) -> None:
        """While nothing plays, look for the card (the sink's ``probe``, which opens nothing)
        if its state is unknown (at start) or it failed, so a missing card is reported before a
        slot needs it, and one that came back before the next slot proves it. A card known to
        work is left alone, and so is a sink that cannot be probed (the simulation's file).
        Runs on the caller's thread; plays start on that thread too, so none can race it."""
        if self.busy or (self._device_known and self._device_fault is None):
            return
        probe: Callable[[], None] | None = getattr(self._open_sink(), "probe", None)
        if probe is None:
            return
        try:
            probe()
        except AudioError as exc:
            self._device(f"audio: {exc}"[:200])
        else:
            self._device(None)

    def _device(self, fault: str | None) -> None:
        """The card's state as the last open/write/close found it; a change is told once."""
        with self._device_lock:
            changed = (fault is None) != (self._device_fault is None) or (
                not self._device_known and fault is not None
            )
            self._device_known, self._device_fault = True, fault
        if changed and self.on_device is not None:
            self.on_device(fault)

    def play(
        self, request: PlayRequest, *, replacing: tuple[str, str] | None = None,
        follow: bool = False,
    ) -> None:  # fmt: skip
        """Start ``request``. With ``replacing`` (outcome, reason) a current play is cut, but
        only once the new item's decoder has its first chunk: the old programme goes on
        sounding while ffmpeg starts, and the new one follows within a chunk (preemption).
        With ``follow`` the current play is not cut short: it sounds to its end (then its hold
        is cut) unless it runs past ``request.start_at`` (or now), where ``replacing`` ends
        it: the next slot in a schedule takes the card from the one before."""
        previous = None
        if self.busy:
            if replacing is None and self.testing:
                # A relay test ranks below everything (priority 0): any play ends it.
                replacing = ("partial", "relay test interrupted by a play")
            if replacing is None:
                raise RuntimeError("the player is busy: cut the current play first")
            until = None
            if follow:
                until = self._clock.monotonic() if request.start_at is None else request.start_at
            previous = (self._thread, self._cut, self._sounded, replacing, until)
        self.testing = False
        self._cut = threading.Event()
        self._sounded = threading.Event()
        self.current = request
        cut, sounded = self._cut, self._sounded
        self._thread = self._threads.run(lambda: self._run(request, cut, previous, sounded))

    def cut(self, outcome: str, reason: str, wait_s: float = 5.0) -> None:
        """Stop the current play (outcome ``preempted`` or ``partial``) and wait for it."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._cut_reason = (outcome, reason)
        self._cut.set()
        thread.join(wait_s)

    def relay_test(
        self,
        zones: tuple[str, ...],
        *,
        dwell_s: float,
        read_inputs: Callable[[], Mapping[str, bool]],
        on_result: Callable[[RelayTestResult], None],
    ) -> None:
        """Cycle each zone relay on and off with the amplifier on, on a thread of its own,
        reading back the relays and the health inputs; ``on_result`` (which only enqueues)
        gets what was read. The caller makes sure nothing plays; a play that starts meanwhile
        ends the test (it ranks below everything)."""
        if self.busy:
            raise RuntimeError("the player is busy: a relay test needs the relays to itself")
        self._cut = threading.Event()
        self.current = None
        self.testing = True
        cut = self._cut
        self._thread = self._threads.run(
            lambda: self._test(zones, dwell_s, read_inputs, on_result, cut)
        )

    def _test(
        self,
        zones: tuple[str, ...],
        dwell_s: float,
        read_inputs: Callable[[], Mapping[str, bool]],
        on_result: Callable[[RelayTestResult], None],
        cut: threading.Event,
    ) -> None:
        checks: list[ZoneCheck] = []
        amp: bool | None = None
        before: Mapping[str, bool] = {}
        error = None
        try:
            warm = self._amp_up()
            amp = self._relays.states().get("amp")
            # The same order as a play: the amplifier warms up before any line is switched.
            if not cut.wait(0.0 if warm else self._warmup_s):
                before = dict(read_inputs())
            for zone in zones:
                if cut.is_set():
                    break
                self._relays.set_zones([zone], True)
                cut.wait(dwell_s)  # the relay settles and the inputs debounce
                states = self._relays.states()
                sensed = dict(read_inputs())
                self._relays.set_zones([zone], False)
                cut.wait(dwell_s / 2)
                released = self._relays.states()
                others = [v for k, v in states.items() if k not in (zone, "amp")]
                checks.append(
                    ZoneCheck(zone, states.get(zone), not released.get(zone, True),
                              not any(others), sensed)
                )  # fmt: skip
        except RelayError as exc:
            error = f"relay: {exc}"[:200]
        finally:
            try:
                self._relays.set_zones(zones, False)
                self._amp_down_later()
            except RelayError as exc:
                error = error or f"relay: {exc}"[:200]
            interrupted = self._cut_reason[1] if cut.is_set() else None
            on_result(RelayTestResult(tuple(checks), amp, before, interrupted, error))

    def close(self) -> None:
        """Safe-off: stop playing and switch everything off now, linger or not."""
        self.cut("partial", "station stopping")
        self._threads.close()
        with self._amp_lock:
            if self._amp_timer is not None:
                self._amp_timer.cancel()
            self._amp_on = False
            self._relays.all_off()

    # amplifier: on at once, off after a linger unless another play wants it -------------------

    def _amp_up(self) -> bool:
        """Switch the amplifier on; True when it was already on (no warm-up needed)."""
        with self._amp_lock:
            if self._amp_timer is not None:
                self._amp_timer.cancel()
                self._amp_timer = None
            was_on = self._amp_on
            self._relays.set_amp(True)
            self._amp_on = True
            return was_on

    def _amp_down_later(self) -> None:
        with self._amp_lock:
            if self._amp_linger_s <= 0:
                self._relays.set_amp(False)
                self._amp_on = False
                return
            timer = threading.Timer(self._amp_linger_s, lambda: self._amp_down_now(timer))
            timer.daemon = True
            self._amp_timer = timer
            timer.start()

    def _amp_down_now(self, timer: threading.Timer) -> None:
        with self._amp_lock:
            if self._amp_timer is not timer:
                return  # a new play took the amplifier while this timer waited for the lock
            self._amp_timer = None
            try:
                self._relays.set_amp(False)
            except RelayError:
                return  # reported by the next play's read-back
            self._amp_on = False

    # the playback thread --------------------------------------------------------------------

    def _wait_until(self, cut: threading.Event, instant: float) -> bool:
        """Wait on the monotonic clock until ``instant``; True if cut first."""
        left = instant - self._clock.monotonic()
        return cut.wait(left) if left > 0 else cut.is_set()

    def _open_item(
        self, request: PlayRequest, item: int
    ) -> tuple[PcmSource, Iterator[bytes], bytes]:
        """Start the decoder of ``item`` and read its first chunk (ffmpeg's start-up)."""
        entry = request.items[item]
        offset = request.start_offset_s if item == request.start_item else 0.0
        gain = request.gain * entry.gain
        source = entry.source(gain) if entry.source else self._decoder(entry.path, gain, offset)
        chunks = source.chunks()
        try:
            first = next(chunks, b"")
        except BaseException:
            source.close()
            raise
        return source, chunks, first

    def _take_over(self, previous: Previous) -> None:
        thread, cut, sounded, (outcome, reason), until = previous
        if until is not None:
            sounded.wait(max(0.0, until - self._clock.monotonic()))
        if thread is not None and thread.is_alive():
            self._cut_reason = (outcome, reason)
            cut.set()
            thread.join(5.0)

    def _run(
        self,
        request: PlayRequest,
        cut: threading.Event,
        previous: Previous | None = None,
        sounded: threading.Event | None = None,
    ) -> None:
        started_at: datetime | None = None
        frames = 0
        item_frames = 0
        item = request.start_item
        meter = LevelMeter()
        outcome, reason = "complete", None
        relay_ok: bool | None = None
        amp_ok: bool | None = None
        watch = SilenceWatch(*self._silence)
        silent = False
        measured: float | None = None
        probing = False
        primed: tuple[PcmSource, Iterator[bytes], bytes] | None = None
        try:
            if previous is not None:
                try:
                    primed = self._open_item(request, request.start_item)
                finally:
                    self._take_over(previous)  # the old play ends even if this one cannot start
            warm = self._amp_up()
            amp_ok = self._relays.states().get("amp")
            warm_until = self._clock.monotonic() + (0.0 if warm else self._warmup_s)
            sink = self._open_sink()
            device_ok = False
            try:
                sink.open()
            except AudioError as exc:
                raise _DeviceError(exc) from exc
            try:
                for item in range(request.start_item, len(request.items)):
                    item_frames = 0
                    if item > request.start_item and request.gap_s and cut.wait(request.gap_s):
                        break
                    # ffmpeg starts and its first chunk is read ahead of the instant (pre-roll)
                    source, chunks, first = primed or self._open_item(request, item)
                    primed = None
                    with source:
                        pieces = self._with_chimes(request, item, _chain(first, chunks))
                        announced = False
                        if started_at is None:
                            if self._wait_until(cut, warm_until):
                                break
                            self._relays.set_zones(request.zones, True)
                            relay_ok = self._zones_on(request.zones)
                            if self.on_sounding is not None and not request.urgent:
                                # A pre-roll's wait absorbs the commit; a late join or a
                                # resume pays it (killed after its first sample without it,
                                # the restart reported "missed" what had sounded: the crash-
                                # point soak). An urgent play sounds first, and its mark
                                # follows the first sample (ItemStarted).
                                self.on_sounding(request.key)
                            if request.start_at is not None:
                                latency = float(getattr(sink, "latency_s", 0.0))
                                if self._wait_until(cut, request.start_at - latency):
                                    break
                        for is_item, chunk in pieces:
                            if cut.is_set():
                                break
                            if request.deadline and self._clock.monotonic() >= request.deadline:
                                outcome, reason = "partial", "slot end reached"
                                break
                            if started_at is None:
                                started_at = self._clock.now()
                                if self._probe is not None:
                                    self._probe.start()
                                    probing = True
                            watch.arm()
                            try:
                                sink.write(chunk)
                            except AudioError as exc:
                                raise _DeviceError(exc) from exc
                            if not device_ok:
                                device_ok = True
                                self._device(None)
                            if is_item and not announced:
                                faults.crash_point(faults.PLAY_STARTED)  # sounding, not marked
                                announced = True
                                if self.on_item is not None:
                                    self.on_item(request.key, item)
                            if (
                                probing
                                and self._probe is not None
                                and not silent
                                and watch.observe(self._clock.monotonic(), self._probe.level_now())
                            ):
                                silent = True
                                if self._on_silence is not None:
                                    self._on_silence(request.key)
                            meter.add(chunk)
                            frames += len(chunk) // FRAME_BYTES
                            if is_item:  # chimes do not move the resume position
                                item_frames += len(chunk) // FRAME_BYTES
                    watch.disarm()  # gaps between items are meant to be quiet
                    if cut.is_set() or outcome != "complete":
                        break
            finally:
                try:
                    sink.close()
                except AudioError as exc:
                    if sys.exc_info()[1] is None:  # a failure already on its way says more
                        raise _DeviceError(exc) from exc
                finally:
                    if probing and self._probe is not None:
                        measured = self._probe.stop()
            faults.crash_point(faults.PLAY_ENDED)  # the last sample is out, no as-run yet
            if cut.is_set():
                outcome, reason = self._cut_reason
            else:
                if sounded is not None:
                    sounded.set()  # in full: a play that follows may take the card now
                if self._hold_s:
                    cut.wait(self._hold_s)
        except _DeviceError as exc:
            # The card failed (gone, or never there). What already sounded is not undone:
            # a play cut by it is partial, one that never sounded failed.
            outcome = "partial" if started_at is not None else "failed"
            reason = f"audio: {exc.error}"[:200]
            self._device(reason)
            if primed is not None:
                primed[0].close()
        except AudioError as exc:
            outcome, reason = "failed", f"audio: {exc}"[:200]
            if primed is not None:
                primed[0].close()
        except RelayError as exc:
            outcome, reason = "failed", f"relay: {exc}"[:200]
        finally:
            try:
                self._relays.set_zones(request.zones, False)
                self._amp_down_later()
            except RelayError as exc:
                outcome, reason = "failed", f"relay: {exc}"[:200]
            first_offset = request.start_offset_s if item == request.start_item else 0.0
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
                    output_level_db=measured if probing else meter.dbfs(),
                    item=item,
                    item_offset_s=first_offset + item_frames / SAMPLE_RATE,
                    silent=silent,
                )
            )

    def _with_chimes(
        self, request: PlayRequest, item: int, audio: Iterator[bytes]
    ) -> Iterator[tuple[bool, bytes]]:
        """The item's audio, with the attention chime before a run of announcements and after
        it (a resumed announcement gets its chime again: listeners need the cue)."""
        chime = request.items[item].chime and self._chimes is not None
        before = chime and (item == request.start_item or not request.items[item - 1].chime)
        last = item + 1 == len(request.items)
        after = chime and (last or not request.items[item + 1].chime)
        if before and self._chimes is not None:
            yield from ((False, c) for c in self._chimes("before", request.gain).chunks())
        yield from ((True, c) for c in audio)
        if after and self._chimes is not None:
            yield from ((False, c) for c in self._chimes("after", request.gain).chunks())

    def _zones_on(self, zones: tuple[str, ...]) -> bool | None:
        states = {k: v for k, v in self._relays.states().items() if k != "amp"}
        if not states:
            return None  # no zone relays configured: nothing to read back
        wanted = states.keys() if "all" in zones else [z for z in zones if z in states]
        return all(states[z] for z in wanted)


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest
