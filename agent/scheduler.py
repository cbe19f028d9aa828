"""Timers: date triggers from the planner on APScheduler, ticks on the monotonic clock.

APScheduler reads the system clock itself and cannot take the Clock port, so it holds no logic:
every job only puts a message on the runtime's queue. The plan is replaced wholesale whenever
the schedule may have changed (start, accepted playlist, clock jump); the playlists on disk stay
the source of truth.

The periodic ticks (heartbeat, watch, replan...) do not run on APScheduler: its interval
triggers are wall-clock instants, so a clock stepped back an hour stalled every tick for that
hour (heartbeats, and the watch tick that notices the jump and replans), and a clock stepped
forward from 1970 to today made it enumerate every missed run (about 1.8e9 for a one-second
heartbeat) while holding its job store lock, hanging the runtime (both found by
tests/e2e/test_fault_clock.py). A tick is "every N seconds", which is what the monotonic clock
measures: ``Ticks`` keeps them there, untouched by any step of the wall clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger

from agent.core.planner import Occurrence

log = logging.getLogger("loa.scheduler")

# A timer that fires late (a busy Pi, a suspended VM) still plays within this grace; later than
# that the runtime reports the occurrence as missed rather than play it out of time.
MISFIRE_GRACE_S = 30
_OCCURRENCE = "occ:"


@dataclass
class _Tick:
    period_s: float
    job: Callable[[], None]
    due: float  # monotonic


class Ticks:
    """Periodic jobs on the monotonic clock, on one thread of their own. A tick that comes late
    (a busy machine) runs once and its next run is a period after that: no burst of catch-up
    runs, as APScheduler's ``coalesce`` did."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._ticks: dict[str, _Tick] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def every(self, name: str, seconds: float, job: Callable[[], None]) -> None:
        if seconds <= 0:
            raise ValueError(f"tick {name}: the period must be positive, got {seconds}")
        with self._cond:
            self._ticks[name] = _Tick(seconds, job, self._monotonic() + seconds)
            self._cond.notify()

    def due(self) -> tuple[list[Callable[[], None]], float | None]:
        """The jobs due now (their next runs set), and the seconds until the next one."""
        now = self._monotonic()
        jobs = []
        with self._cond:
            for tick in self._ticks.values():
                if tick.due <= now:
                    jobs.append(tick.job)
                    tick.due += tick.period_s
                    if tick.due <= now:  # fell behind by a whole period: no catch-up burst
                        tick.due = now + tick.period_s
            wait = min((t.due for t in self._ticks.values()), default=None)
        return jobs, None if wait is None else max(0.0, wait - now)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loa-ticks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            jobs, wait = self.due()
            for job in jobs:
                try:
                    job()
                except Exception:  # a tick only enqueues; one that fails must not stop the rest
                    log.exception("tick failed")
            with self._cond:
                if self._stopping:
                    return
                if not jobs:
                    self._cond.wait(wait)


class Timers:
    def __init__(self, fire: Callable[[str], None]) -> None:
        self._fire = fire
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._ticks = Ticks()

    def start(self) -> None:
        self._scheduler.start()
        self._ticks.start()

    def stop(self) -> None:
        self._ticks.stop()
        self._scheduler.shutdown(wait=False)

    def every(self, name: str, seconds: float, job: Callable[[], None]) -> None:
        self._ticks.every(name, seconds, job)

    def replace_plan(self, plan: Iterable[Occurrence], now: datetime, lead_s: float = 0.0) -> int:
        """Drop every occurrence timer and set one per future occurrence, ``lead_s`` before its
        start (pre-roll); return the count."""
        for job in self._scheduler.get_jobs():
            if job.id.startswith(_OCCURRENCE):
                job.remove()
        count = 0
        for occurrence in plan:
            if occurrence.start < now:
                continue
            fire_at = max(now, occurrence.start - timedelta(seconds=lead_s))
            self._scheduler.add_job(
                self._fire,
                DateTrigger(run_date=fire_at, timezone=UTC),
                args=(occurrence.key,),
                id=_OCCURRENCE + occurrence.key,
                replace_existing=True,
                coalesce=True,
                misfire_grace_time=MISFIRE_GRACE_S,
            )
            count += 1
        return count

    def pending_keys(self) -> list[str]:
        return [
            job.id[len(_OCCURRENCE) :]
            for job in self._scheduler.get_jobs()
            if job.id.startswith(_OCCURRENCE)
        ]
