"""The media workers fetch what is needed soonest first, once, and report each result."""

from __future__ import annotations

import hashlib
import queue
from pathlib import Path

from agent.cache import MediaCache
from agent.core.models import MediaRef
from agent.media_workers import MediaDone, MediaWorkers, Quarantined
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


def test_a_failed_medium_waits_before_it_is_tried_again(tmp_path: Path) -> None:
    import random

    done: queue.Queue[object] = queue.Queue()
    now = [1000.0]
    with MediaServer() as server:
        gone = ref(server, "gone", b"x" * 100)
        server.add("/gone.mp3", b"", status=503, retry_after="120")
        workers = MediaWorkers(MediaCache(tmp_path, allow_http=True), None, done.put,
                               parallel=1, monotonic=lambda: now[0],
                               rng=random.Random(1))  # fmt: skip
        workers.start()
        workers.fetch_missing([(10.0, gone)])
        result = done.get(timeout=10)
        assert isinstance(result, MediaDone) and result.code == "media-unreachable"
        assert result.retry_after_s == 120
        workers.fetched(result)
        workers.fetch_missing([(10.0, gone)])  # too soon: the server asked for two minutes
        assert workers.fetching == set()
        now[0] += 121
        workers.fetch_missing([(10.0, gone)])
        assert workers.fetching == {gone.sha256}
        done.get(timeout=10)
        workers.stop()


def test_a_corrupted_cache_file_is_quarantined_at_start(tmp_path: Path) -> None:
    done: queue.Queue[object] = queue.Queue()
    cache = MediaCache(tmp_path, allow_http=True)
    body = b"good bytes" * 10
    sha = hashlib.sha256(body).hexdigest()
    (tmp_path / sha).write_bytes(body)
    assert cache.verify_all(quick=False) == []  # recorded as verified
    (tmp_path / sha).write_bytes(b"bad bytes!" * 10)  # same size, other bytes, new mtime
    workers = MediaWorkers(cache, None, done.put, parallel=1)
    workers.start()
    found = done.get(timeout=10)
    workers.stop()
    assert isinstance(found, Quarantined) and found.sha256s == (sha,)
    assert not (tmp_path / sha).exists() and (tmp_path / "quarantine" / sha).exists()
