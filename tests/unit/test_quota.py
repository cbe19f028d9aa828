"""The cache quota evicts only what no playlist needs, least recently used first, and refuses
a download cleanly when room cannot be made."""

from __future__ import annotations

import os
import queue
from pathlib import Path

from agent.cache import MediaCache
from agent.core.models import MediaRef
from agent.media_workers import MediaDone, MediaWorkers
from agent.quota import make_room

KB = 1024


def put(root: Path, name: str, size: int, mtime: float) -> str:
    sha = name * 64
    path = root / sha
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    return sha


def test_least_recently_used_unneeded_files_go_first(tmp_path: Path) -> None:
    old = put(tmp_path, "a", 4 * KB, 1000)
    needed = put(tmp_path, "b", 4 * KB, 500)  # oldest of all, but still needed
    recent = put(tmp_path, "c", 4 * KB, 3000)
    room = make_room(tmp_path, 10 * KB, 2 * KB, keep={needed})
    assert room.ok and room.evicted == (old,)
    assert (tmp_path / needed).exists() and (tmp_path / recent).exists()


def test_no_room_without_evicting_needed_media_is_refused(tmp_path: Path) -> None:
    a = put(tmp_path, "a", 6 * KB, 1000)
    room = make_room(tmp_path, 8 * KB, 4 * KB, keep={a})
    assert not room.ok and room.evicted == ()
    assert (tmp_path / a).exists()


def test_workers_report_cache_full_instead_of_downloading(tmp_path: Path) -> None:
    a = put(tmp_path, "a", 6 * KB, 1000)
    done: queue.Queue[object] = queue.Queue()
    workers = MediaWorkers(MediaCache(tmp_path), None, done.put, quota_bytes=8 * KB)
    big = MediaRef("big", "https://m.example.vn/big.mp3", "f" * 64, 4 * KB, None, None, None)
    assert workers.fetch_missing([(1.0, big)], keep={a, big.sha256}) == []
    result = done.get(timeout=5)
    assert isinstance(result, MediaDone) and result.code == "cache-full"
