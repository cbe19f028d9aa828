"""The programme: which occurrence is on air, which waits to resume, and what each one came to.

It carries out the arbiter's rules with the player: a higher-ranked occurrence cuts in (the one
it interrupts waits and resumes where it stopped while its slot is open, else it is reported
partial); a lower-ranked one that fires while another plays is skipped, unless the one on air
is planned to end by its start (back-to-back slots): then it follows; an occurrence whose
media is not ready fails with ``media-missing``; after a restart the station joins what is on
at the right offset (partial) and reports what it missed. A live stretch has no position: cut
in on, it rejoins the stream when the cut-in is over. Runs on the runtime's thread only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.core import emergency, live
from agent.core.arbiter import Position, advance, catch_up, closes_at, nominal_length_s
from agent.core.clock import Clock
from agent.core.models import MediaRef
from agent.core.planner import Occurrence, outranks
from agent.player import Player, PlayItem, PlayRequest, PlayResult


@dataclass
class Segment:
    """An occurrence that has started and is not reported yet (possibly across interruptions)."""

    occurrence: Occurrence
    position: Position
    played_s: float = 0.0
    started_at: datetime | None = None
    interrupted_by: str | None = None
    joined_late: bool = False
    last: PlayResult | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to report for an occurrence: the as-run's outcome, reason and measured facts."""

    occurrence: Occurrence
    outcome: str
    reason: str | None
    played_s: float = 0.0
    started_at: datetime | None = None
    last: PlayResult | None = None


class Programme:
    def __init__(
        self,
        clock: Clock,
        player: Player,
        *,
        media_ready: Callable[[MediaRef], bool],
        media_path: Callable[[MediaRef], PlayItem],
        volume: Callable[[Occurrence], int],
        report: Callable[[Outcome], None],
        resume_window: timedelta,
        fallback: Path | None = None,
    ) -> None:
        # A local file the technician put on the station, played when a slot's media is missing.
        self._fallback_path = fallback
        self._fallback = (
            MediaRef("fallback", fallback.as_uri(), "0" * 64, 1, None, "fallback", "other")
            if fallback is not None
            else None
        )
        self._clock = clock
        self._player = player
        self._media_ready = media_ready
        self._media_path = media_path
        self._volume = volume
        self._report = report
        self._resume_window = resume_window
        self.plan: dict[str, Occurrence] = {}
        self.segments: dict[str, Segment] = {}
        self.on_air: str | None = None
        # Whether an occurrence has its as-run already (the outbox's bookings): set by
        # replace_plan, which the runtime calls before any timer can fire.
        self._reported: Callable[[str], bool] = lambda _key: False

    @property
    def playing(self) -> Occurrence | None:
        segment = self.segments.get(self.on_air or "")
        return segment.occurrence if segment else None

    # schedule ----------------------------------------------------------------------------------

    def replace_plan(
        self,
        upcoming: Iterable[Occurrence],
        overdue_before: datetime,
        reported: Callable[[str], bool],
    ) -> None:
        """Take a new plan; occurrences of the old one whose time passed unplayed (a clock
        jump, a busy machine) are reported missed, never played late in a burst. Occurrences
        already reported are left out: a clock set back brings their start round again."""
        self._reported = reported
        for occurrence in self.plan.values():
            if (
                occurrence.start < overdue_before
                and occurrence.key not in self.segments
                and not reported(occurrence.key)
            ):
                self._report(Outcome(occurrence, "missed", "its time passed before it could play"))
        self.plan = {o.key: o for o in upcoming if not reported(o.key)}
        for segment in self.segments.values():
            self.plan.setdefault(segment.occurrence.key, segment.occurrence)

    def catch_up(
        self, plan: Iterable[Occurrence], down_since: datetime, reported: Callable[[str], bool]
    ) -> None:
        """After a restart: report what was missed, join what is on."""
        now = self._clock.now()
        candidates = [o for o in plan if not reported(o.key)]
        result = catch_up(candidates, now, down_since, set(), self._resume_window)
        for occurrence in result.missed:
            self._report(Outcome(occurrence, "missed", "the station was not running"))
        if result.join is not None:
            occurrence, position = result.join
            if all(self._media_ready(m) for m in occurrence.items):
                segment = Segment(occurrence, position, joined_late=True)
                self.plan.setdefault(occurrence.key, occurrence)
                self._start(segment, start_at=None)
            else:
                self._report(Outcome(occurrence, "failed", "media-missing"))

    # events ------------------------------------------------------------------------------------

    def fire(self, key: str) -> None:
        occurrence = self.plan.get(key)
        if occurrence is None or key in self.segments or self._reported(key):
            # Replaced by a newer playlist since the timer was set, already on, or over: a
            # clock set back while it played re-armed its timer at a replan (found by
            # tests/e2e/test_fault_clock.py: played twice, two as-runs, the next slot skipped).
            return
        if not all(self._media_ready(m) for m in occurrence.items):
            self._report(Outcome(occurrence, "failed", "media-missing"))
            if self._fallback is None or self._player.busy:
                return
            # The station's local fallback programme fills the slot (OBPlayer and info-beamer
            # keep one); it is reported as its own as-run, never as the slot's content.
            occurrence = replace(occurrence, slot_id=f"{occurrence.slot_id}#fallback",
                                 items=(self._fallback,))  # fmt: skip
            self.plan[occurrence.key] = occurrence
        current = self.playing
        follow = False
        if current is not None and self._player.busy:
            if outranks(occurrence, current):
                self.segments[current.key].interrupted_by = occurrence.slot_id
                replacing = ("preempted", f"preempted by {occurrence.slot_id}")
            elif _planned_end(current) <= occurrence.start and (
                self._player.sounded or not outranks(current, occurrence)
            ):
                # The one on air is planned to end by this one's start: it sounds to its end
                # (then its hold is cut) and this one takes the card; if it runs past this
                # one's start it is cut there, unless it outranks this one (then this one is
                # taken only once it has sounded in full). Such a slot was skipped as "on air"
                # whenever its pre-roll or the hold before it overlapped the one before (slots
                # less than about 5.5 s apart: found by tests/e2e/test_fault_devices.py).
                replacing = ("partial", f"ran past the start of {occurrence.slot_id}")
                follow = True
            else:
                self._report(Outcome(occurrence, "skipped", f"{current.slot_id} was on air"))
                return
        else:
            replacing = None
        start_at = None
        ahead = (occurrence.start - self._clock.now()).total_seconds()
        if ahead > 0:  # fired early for pre-roll: the first sample is due at the start
            start_at = self._clock.monotonic() + ahead
        self._start(Segment(occurrence, Position(0, 0.0)), start_at, replacing, follow)

    def done(self, result: PlayResult) -> None:
        segment = self.segments.get(result.key)
        if segment is None:
            return
        segment.played_s += result.played_s
        segment.started_at = segment.started_at or result.started_at
        segment.last = result
        if self.on_air == result.key:
            self.on_air = None
        if result.outcome == "preempted":
            position = advance(segment.occurrence, Position(result.item, result.item_offset_s), 0)
            if position is None and live.is_live(segment.occurrence.slot_id):
                position = Position(0, 0.0)  # a live stream has no position: it rejoins live
            if position is not None:
                segment.position = position
                return  # waits for the cut-in to end
            self._finish(segment, "complete", None)
        else:
            self._finish(segment, result.outcome, result.reason)
        if not self._player.busy and self.on_air is None:
            self._resume_interrupted()

    def cut_in(self, occurrence: Occurrence) -> None:
        """An occurrence that is not in the schedule (an emergency) starts now: it preempts
        what it outranks (which resumes after it, as after any cut-in); behind one that
        outranks it, it waits its turn until its own end."""
        self.plan[occurrence.key] = occurrence
        current = self.playing
        segment = Segment(occurrence, Position(0, 0.0))
        if current is not None and self._player.busy:
            if not outranks(occurrence, current):
                segment.interrupted_by = current.slot_id
                self.segments[occurrence.key] = segment
                return
            self.segments[current.key].interrupted_by = occurrence.slot_id
            self._start(segment, None, ("preempted", f"preempted by {occurrence.slot_id}"))
            return
        self._start(segment, start_at=None)

    def cancel(self, slot_id: str, reason: str) -> bool:
        """End the occurrence ``slot_id`` (an emergency cancelled): cut if on air (the
        schedule then resumes), dropped if waiting. False if there is none."""
        for segment in list(self.segments.values()):
            if segment.occurrence.slot_id != slot_id:
                continue
            if segment.occurrence.key == self.on_air and self._player.busy:
                self._player.cut("partial", reason)
            else:
                self._finish(segment, "partial" if segment.played_s else "skipped", reason)
            return True
        return False

    def end(self, key: str, reason: str) -> bool:
        """End the occurrence ``key`` (a live stretch): cut if on air, dropped if waiting;
        False if it is not started or already reported. Its as-run follows as for any end."""
        segment = self.segments.get(key)
        if segment is None:
            return False
        if key == self.on_air:
            # On air, or cut already and its result on the way: done() reports it.
            self._player.cut("partial", reason)
        else:
            self._finish(segment, "partial" if segment.played_s else "skipped", reason)
        return True

    def stop_all(self, reason: str) -> None:
        """A stop command: the programme on air and whatever waits to resume are over."""
        self._player.cut("partial", reason)
        for segment in list(self.segments.values()):
            if segment.occurrence.key != self.on_air:
                self._finish(segment, "partial", reason)

    # internals ---------------------------------------------------------------------------------

    def _resume_interrupted(self) -> None:
        now = self._clock.now()
        waiting = sorted(
            self.segments.values(),
            key=lambda s: (-s.occurrence.priority, -s.occurrence.locality, s.occurrence.start),
        )
        for segment in waiting:
            closes = closes_at(segment.occurrence, self._resume_window)
            if self.on_air is None and (closes is None or now < closes):
                self._start(segment, start_at=None)
            else:
                self._finish(
                    segment,
                    "partial",
                    f"preempted by {segment.interrupted_by}; "
                    "the slot closed before it could resume",
                )

    def _start(
        self,
        segment: Segment,
        start_at: float | None,
        replacing: tuple[str, str] | None = None,
        follow: bool = False,
    ) -> None:
        occurrence = segment.occurrence
        deadline = None
        if occurrence.end is not None:
            left = (occurrence.end - self._clock.now()).total_seconds()
            deadline = self._clock.monotonic() + max(0.0, left)
        self.segments[occurrence.key] = segment
        self.on_air = occurrence.key
        self._player.play(
            PlayRequest(
                key=occurrence.key,
                items=tuple(self._item(m) for m in occurrence.items),
                zones=occurrence.zones,
                gain=self._volume(occurrence) / 100,
                gap_s=occurrence.gap_s,
                deadline=deadline,
                start_item=segment.position.item,
                start_offset_s=segment.position.offset_s,
                start_at=start_at,
                urgent=emergency.is_emergency(occurrence.slot_id),
            ),
            replacing=replacing,
            follow=follow,
        )

    def _item(self, media: MediaRef) -> PlayItem:
        if self._fallback is not None and media is self._fallback and self._fallback_path:
            return PlayItem(media.name, media.sha256, self._fallback_path)
        return self._media_path(media)

    def _finish(self, segment: Segment, outcome: str, reason: str | None) -> None:
        self.segments.pop(segment.occurrence.key, None)
        if segment.occurrence.slot_id.endswith("#fallback") and reason is None:
            reason = "local fallback programme: the slot's media was missing"
        if outcome == "complete" and segment.joined_late:
            outcome, reason = "partial", "joined late after a restart"
        elif outcome == "complete" and segment.interrupted_by:
            reason = f"interrupted by {segment.interrupted_by}, resumed"
        elif outcome == "partial" and segment.played_s == 0 and segment.interrupted_by:
            outcome = "preempted"
        self._report(
            Outcome(
                segment.occurrence,
                outcome,
                reason,
                segment.played_s,
                segment.started_at,
                segment.last,
            )
        )


def _planned_end(occurrence: Occurrence) -> datetime:
    """When an occurrence is planned to have sounded in full: its ``end`` if it has one, else
    its start plus its nominal length; never, when an item's duration is not declared."""
    if occurrence.end is not None:
        return occurrence.end
    length = nominal_length_s(occurrence)
    if length is None:
        return datetime.max.replace(tzinfo=UTC)
    return occurrence.start + timedelta(seconds=length)
