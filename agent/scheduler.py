"""APScheduler as a thin timer adapter: date triggers from the planner, intervals for ticks.

APScheduler reads the system clock itself and cannot take the Clock port, so it holds no logic:
every job only puts a message on the runtime's queue. The plan is replaced wholesale whenever
the schedule may have changed (start, accepted playlist, clock jump); the playlists on disk stay
the source of truth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from agent.core.planner import Occurrence

# A timer that fires late (a busy Pi, a suspended VM) still plays within this grace; later than
# that the runtime reports the occurrence as missed rather than play it out of time.
MISFIRE_GRACE_S = 30
_OCCURRENCE = "occ:"


class Timers:
    def __init__(self, fire: Callable[[str], None]) -> None:
        self._fire = fire
        self._scheduler = BackgroundScheduler(timezone=UTC)

    def start(self) -> None:
        self._scheduler.start()

    def stop(self) -> None:
        self._scheduler.shutdown(wait=False)

    def every(self, name: str, seconds: float, job: Callable[[], None]) -> None:
        self._scheduler.add_job(
            job,
            IntervalTrigger(seconds=seconds, timezone=UTC),
            id=f"tick:{name}",
            replace_existing=True,
            coalesce=True,
            misfire_grace_time=int(max(1, seconds)),
            max_instances=1,
        )

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
