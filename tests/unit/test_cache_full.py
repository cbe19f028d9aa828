"""The cache's background work on a full disk (issue 13, part "disk"): the integrity check
whose index cannot be written still answers (it raised, and at start that stopped the agent),
and the worker thread doing loudness and integrity work outlives a disk fault in one item."""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading
from pathlib import Path

import pytest

from agent.cache import MediaCache
from agent.core.models import MediaRef
from agent.loudness import Loudness, LoudnessStore
from agent.media_workers import MediaWorkers


def enospc(*_: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_an_index_that_cannot_be_written_does_not_stop_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = MediaCache(tmp_path)
    body = b"medium" * 10
    sha = hashlib.sha256(body).hexdigest()
    (tmp_path / sha).write_bytes(body)
    monkeypatch.setattr(cache, "_write_index", enospc)
    assert cache.verify_all(quick=True) == []
    assert cache.verify_all(quick=False) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [sha]


def test_the_measuring_thread_outlives_a_disk_fault(tmp_path: Path) -> None:
    bodies = [b"first" * 10, b"second" * 10]
    media = [
        MediaRef(f"m{n}", "http://x/", hashlib.sha256(b).hexdigest(), len(b), None, None, None)
        for n, b in enumerate(bodies)
    ]
    for item, body in zip(media, bodies, strict=True):
        (tmp_path / item.sha256).write_bytes(body)
    measured: list[Path] = []
    second = threading.Event()

    def measurer(path: Path) -> Loudness:
        measured.append(path)
        if len(measured) == 1:
            enospc()  # EIO or ENOSPC from the disk, past what the store itself handles
        second.set()
        return Loudness(-20.0, -1.0)

    cache = MediaCache(tmp_path)
    results: queue.Queue[object] = queue.Queue()
    workers = MediaWorkers(cache, LoudnessStore(tmp_path, measurer=measurer), results.put)
    workers.start()
    try:
        for item in media:
            workers.measure(item)
        assert second.wait(10), "the second medium was never measured"
    finally:
        workers.stop()
    assert [p.name for p in measured] == [m.sha256 for m in media]
