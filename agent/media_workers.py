"""The station's two background media workers: fetching into the cache, measuring loudness.

Each is one thread draining its own queue, so an hour-long download or an hour-long loudness
measurement never blocks the runtime, and a measurement never holds up the next download. The
runtime thread asks (``fetch_missing``), and hears back only through ``deliver`` (a fetch
result); it alone touches the ``fetching`` set.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.cache import CacheFullError, MediaCache, MediaError, next_delay
from agent.core.models import MediaRef
from agent.loudness import LoudnessStore
from agent.quota import make_room


@dataclass(frozen=True, slots=True)
class MediaDone:
    media: MediaRef
    error: str | None
    code: str | None  # a section 8 media code, or cache-full / cache-write-failed
    retry_after_s: float | None = None  # the server asked (429/503) to wait this long


@dataclass(frozen=True, slots=True)
class Quarantined:
    sha256s: tuple[str, ...]  # cached files whose bytes no longer match their name


FULL_CHECK = "full-integrity-check"

log = logging.getLogger(__name__)


class MediaWorkers:
    def __init__(
        self,
        cache: MediaCache,
        loudness: LoudnessStore | None,
        deliver: Callable[[MediaDone | Quarantined], None],
        *,
        parallel: int = 2,
        quota_bytes: int = 0,  # 0: no quota
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.cache = cache
        self.quota_bytes = quota_bytes
        self._in_flight: dict[str, MediaRef] = {}  # runtime thread only
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        # Failed media wait before the next attempt (jittered exponential backoff), so a
        # thousand stations do not hammer a media server that has just come back.
        self._attempts: dict[str, int] = {}  # runtime thread only
        self._retry_at: dict[str, float] = {}  # runtime thread only
        self.loudness = loudness
        self._deliver = deliver
        self.fetching: set[str] = set()  # runtime thread only
        self._measure_seen: set[str] = set()  # runtime thread only
        # Nearest need first: (seconds until needed, arrival order, medium); None stops a worker.
        self._fetch_queue: queue.PriorityQueue[tuple[float, int, MediaRef | None]] = (
            queue.PriorityQueue()
        )
        self._order = itertools.count()
        self._parallel = parallel
        self._measure_queue: queue.Queue[MediaRef | str | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._fetch_loop, name=f"fetch-{n}", daemon=True)
            for n in range(parallel)
        ] + [threading.Thread(target=self._measure_loop, name="r128", daemon=True)]

    def start(self) -> None:
        """Clear what a crash left half-written (young partial downloads are kept: they
        resume), check the cache quickly (sizes and times), then start the workers. A file that
        looks changed gets a full re-hash in the background; a corrupt one is quarantined and,
        no longer cached, fetched again."""
        self.cache.remove_partials()
        if self.loudness is not None:
            self.loudness.remove_temporaries()
        if self.cache.verify_all(quick=True):
            self.check_integrity()
        for thread in self._threads:
            thread.start()

    def check_integrity(self) -> None:
        """Queue a full re-hash of the cache (at start when something looks off, and daily)."""
        self._measure_queue.put(FULL_CHECK)

    def stop(self) -> None:
        for _ in range(self._parallel):
            self._fetch_queue.put((float("-inf"), next(self._order), None))
        self._measure_queue.put(None)

    def fetch_missing(
        self, needed: Iterable[tuple[float, MediaRef]], keep: Iterable[str] = ()
    ) -> list[str]:
        """Queue what is not cached, nearest need first (``needed``: seconds until the medium
        is first needed, and the medium), once while in flight; queue loudness for the rest.
        With a quota, room is made first by evicting media outside ``keep`` (what the playlists
        in force reference); returns the evicted hashes."""
        now = self._monotonic()
        evicted: list[str] = []
        keep = set(keep)
        for due_in, item in sorted(needed, key=lambda pair: pair[0]):
            if self.cache.has(item.sha256, item.bytes):
                self.measure(item)
            elif item.sha256 not in self.fetching and self._retry_at.get(item.sha256, 0) <= now:
                if self.quota_bytes:
                    in_flight = sum(m.bytes for m in self._in_flight.values())
                    room = make_room(
                        self.cache.root, self.quota_bytes, item.bytes + in_flight,
                        keep | self.fetching,
                    )  # fmt: skip
                    evicted.extend(room.evicted)
                    if not room.ok:
                        full = "no room under the cache quota without evicting needed media"
                        self._deliver(MediaDone(item, full, "cache-full"))
                        self.fetching.add(item.sha256)  # answered by that MediaDone
                        continue
                self.fetching.add(item.sha256)
                self._in_flight[item.sha256] = item
                self._fetch_queue.put((due_in, next(self._order), item))
        for sha in evicted:
            if self.loudness is not None:
                self.loudness.discard(sha)
        return evicted

    def fetch_now(self, media: MediaRef) -> None:
        """An emergency's clip: ahead of every queued download, whatever the backoff says
        (a fetch that failed a minute ago may work now, and nothing is more urgent)."""
        self._retry_at.pop(media.sha256, None)
        self.fetch_missing([(-1.0, media)])

    def fetched(self, done: MediaDone) -> None:
        """The runtime's bookkeeping for a fetch result."""
        sha = done.media.sha256
        self.fetching.discard(sha)
        self._in_flight.pop(sha, None)
        if done.error is None:
            self._attempts.pop(sha, None)
            self._retry_at.pop(sha, None)
            self.measure(done.media)
            return
        attempt = self._attempts.get(sha, 0)
        self._attempts[sha] = attempt + 1
        delay = next_delay(attempt, done.retry_after_s, self._rng)
        self._retry_at[sha] = self._monotonic() + delay

    def measure(self, media: MediaRef) -> None:
        """Once per run and medium: a file ffmpeg cannot measure is not retried every tick."""
        if self.loudness is None or media.sha256 in self._measure_seen:
            return
        self._measure_seen.add(media.sha256)
        if self.loudness.get(media.sha256) is None:
            self._measure_queue.put(media)

    def _measure_loop(self) -> None:
        # One background thread for the slow local work: loudness and full integrity checks.
        while (media := self._measure_queue.get()) is not None:
            try:
                self._measure_one(media)
            except Exception:  # a disk fault (ENOSPC, EIO): this item only, not the thread
                log.exception("background cache work failed: %s", media)

    def _measure_one(self, media: MediaRef | str) -> None:
        if media == FULL_CHECK:
            bad = self.cache.verify_all(quick=False)
            if bad:
                self._deliver(Quarantined(tuple(bad)))
        elif isinstance(media, MediaRef) and self.loudness is not None:
            self.loudness.ensure(media.sha256, self.cache.path_for(media.sha256))

    def _fetch_loop(self) -> None:
        while (media := self._fetch_queue.get()[2]) is not None:
            try:
                self.cache.fetch(media.url, media.sha256, media.bytes)
            except MediaError as exc:
                self._deliver(MediaDone(media, exc.detail, str(exc.code), exc.retry_after_s))
            except CacheFullError as exc:
                self._deliver(MediaDone(media, str(exc), "cache-full"))
            except OSError as exc:  # a disk fault: the fetcher must outlive it and say so
                self._deliver(MediaDone(media, f"cache write failed: {exc}", "cache-write-failed"))
            else:
                self._deliver(MediaDone(media, None, None))
