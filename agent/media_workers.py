"""The station's two background media workers: fetching into the cache, measuring loudness.

Each is one thread draining its own queue, so an hour-long download or an hour-long loudness
measurement never blocks the runtime, and a measurement never holds up the next download. The
runtime thread asks (``fetch_missing``), and hears back only through ``deliver`` (a fetch
result); it alone touches the ``fetching`` set.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.cache import CacheFullError, MediaCache, MediaError
from agent.core.models import MediaRef
from agent.loudness import LoudnessStore


@dataclass(frozen=True, slots=True)
class MediaDone:
    media: MediaRef
    error: str | None
    code: str | None  # a section 8 media code, or cache-full / cache-write-failed


class MediaWorkers:
    def __init__(
        self,
        cache: MediaCache,
        loudness: LoudnessStore | None,
        deliver: Callable[[MediaDone], None],
        *,
        parallel: int = 2,
    ) -> None:
        self.cache = cache
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
        self._measure_queue: queue.Queue[MediaRef | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._fetch_loop, name=f"fetch-{n}", daemon=True)
            for n in range(parallel)
        ] + [threading.Thread(target=self._measure_loop, name="r128", daemon=True)]

    def start(self) -> None:
        """Clear what a crash left half-written, then start both workers."""
        self.cache.remove_partials()
        if self.loudness is not None:
            self.loudness.remove_temporaries()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for _ in range(self._parallel):
            self._fetch_queue.put((float("-inf"), next(self._order), None))
        self._measure_queue.put(None)

    def fetch_missing(self, needed: Iterable[tuple[float, MediaRef]]) -> None:
        """Queue what is not cached, nearest need first (``needed``: seconds until the medium
        is first needed, and the medium), once while in flight; queue loudness for the rest."""
        for due_in, item in sorted(needed, key=lambda pair: pair[0]):
            if self.cache.has(item.sha256, item.bytes):
                self.measure(item)
            elif item.sha256 not in self.fetching:
                self.fetching.add(item.sha256)
                self._fetch_queue.put((due_in, next(self._order), item))

    def fetched(self, done: MediaDone) -> None:
        """The runtime's bookkeeping for a fetch result."""
        self.fetching.discard(done.media.sha256)
        if done.error is None:
            self.measure(done.media)

    def measure(self, media: MediaRef) -> None:
        """Once per run and medium: a file ffmpeg cannot measure is not retried every tick."""
        if self.loudness is None or media.sha256 in self._measure_seen:
            return
        self._measure_seen.add(media.sha256)
        if self.loudness.get(media.sha256) is None:
            self._measure_queue.put(media)

    def _measure_loop(self) -> None:
        while (media := self._measure_queue.get()) is not None:
            if self.loudness is not None:
                self.loudness.ensure(media.sha256, self.cache.path_for(media.sha256))

    def _fetch_loop(self) -> None:
        while (media := self._fetch_queue.get()[2]) is not None:
            try:
                self.cache.fetch(media.url, media.sha256, media.bytes)
            except MediaError as exc:
                self._deliver(MediaDone(media, exc.detail, str(exc.code)))
            except CacheFullError as exc:
                self._deliver(MediaDone(media, str(exc), "cache-full"))
            except OSError as exc:  # a disk fault: the fetcher must outlive it and say so
                self._deliver(MediaDone(media, f"cache write failed: {exc}", "cache-write-failed"))
            else:
                self._deliver(MediaDone(media, None, None))
