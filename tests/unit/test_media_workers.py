"""The media workers fetch what is needed soonest first, once, and report each result."""

from __future__ import annotations

import hashlib
import queue
from pathlib import Path

from agent.cache import MediaCache
from agent.core.models import MediaRef
from agent.media_workers import MediaDone, MediaWorkers
from tests.harness.media_server import MediaServer


def ref(server: MediaServer, name: str, body: bytes) -> MediaRef:
    url = server.add(f"/{name}.mp3", body)
    return MediaRef(name, url, hashlib.sha256(body).hexdigest(), len(body), None, None, None)


def test_nearest_need_first_once_each(tmp_path: Path) -> None:
    done: queue.Queue[MediaDone] = queue.Queue()
    with MediaServer() as server:
        later, soon, middle = (ref(server, n, n.encode() * 100) for n in ("later", "soon", "mid"))
        workers = MediaWorkers(MediaCache(tmp_path, allow_http=True), None, done.put, parallel=1)
        needed = [(3600.0, later), (10.0, soon), (600.0, middle), (5000.0, later)]
        workers.fetch_missing(needed)
        workers.fetch_missing(needed)  # asked again while in flight: nothing queued twice
        workers.start()
        results = [done.get(timeout=10) for _ in range(3)]
        workers.stop()
        assert [r.media.name for r in results] == ["soon", "mid", "later"]
        assert all(r.error is None for r in results)
        assert [e.path for e in server.requests] == ["/soon.mp3", "/mid.mp3", "/later.mp3"]
        for result in results:
            workers.fetched(result)
        assert workers.fetching == set()
