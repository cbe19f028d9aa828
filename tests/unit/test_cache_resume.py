"""Resuming an interrupted download with HTTP Range, Retry-After, the back-off policy and the
integrity check of the cache, against the real loopback media server."""

from __future__ import annotations

import email.utils
import hashlib
import os
import random
import time
from pathlib import Path

import pytest

from agent.cache import (
    PARTIAL_MAX_AGE_S,
    PARTIAL_PREFIX,
    QUARANTINE_DIR,
    VERIFIED_INDEX,
    MediaCache,
    MediaError,
    next_delay,
    parse_retry_after,
)
from agent.core.codes import Code
from tests.harness.media_server import MediaServer

MEDIUM = bytes(range(256)) * 781 + b"tail"
SHA = hashlib.sha256(MEDIUM).hexdigest()
SIZE = len(MEDIUM)
HALF = SIZE // 2


@pytest.fixture
def cache(tmp_path: Path) -> MediaCache:
    # Small reads, so a dropped connection loses at most one chunk of what arrived.
    return MediaCache(tmp_path / "media", allow_http=True, chunk_bytes=1000, resume_min_bytes=1)


def partial_of(cache: MediaCache, sha: str = SHA) -> Path:
    return cache.root / f"{PARTIAL_PREFIX}{sha}"


def dropped_fetch(cache: MediaCache, media_server: MediaServer, body: bytes = MEDIUM) -> int:
    """A first fetch whose connection drops after half the body; returns the bytes kept."""
    url = media_server.add("/news.mp3", body, drop_after=HALF, ranges=True)
    with pytest.raises(MediaError) as caught:
        cache.fetch(url, SHA, SIZE)
    assert caught.value.code is Code.MEDIA_UNREACHABLE
    have = partial_of(cache).stat().st_size
    assert 0 < have <= HALF
    assert partial_of(cache).read_bytes() == body[:have]
    return have


# -- resume ------------------------------------------------------------------------------------


def test_a_dropped_download_resumes_with_a_range_request(
    cache: MediaCache, media_server: MediaServer
) -> None:
    have = dropped_fetch(cache, media_server)
    media_server.add("/news.mp3", MEDIUM, ranges=True)
    path = cache.fetch(media_server.url("/news.mp3"), SHA, SIZE)

    assert path.read_bytes() == MEDIUM
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA
    assert [r.range for r in media_server.requests] == [None, f"bytes={have}-"]
    assert sorted(os.listdir(cache.root)) == [SHA]  # the partial became the file


def test_a_server_ignoring_range_restarts_cleanly(
    cache: MediaCache, media_server: MediaServer
) -> None:
    have = dropped_fetch(cache, media_server)
    media_server.add("/news.mp3", MEDIUM)  # no ranges: answers 200 with the whole body
    path = cache.fetch(media_server.url("/news.mp3"), SHA, SIZE)

    assert path.read_bytes() == MEDIUM
    assert media_server.requests[-1].range == f"bytes={have}-"
    assert sorted(os.listdir(cache.root)) == [SHA]


def test_a_resume_with_wrong_tail_bytes_is_deleted_entirely(
    cache: MediaCache, media_server: MediaServer
) -> None:
    dropped_fetch(cache, media_server)
    wrong = MEDIUM[:HALF] + b"X" * (SIZE - HALF)
    media_server.add("/news.mp3", wrong, ranges=True)
    with pytest.raises(MediaError) as caught:
        cache.fetch(media_server.url("/news.mp3"), SHA, SIZE)

    assert caught.value.code is Code.MEDIA_HASH_MISMATCH
    assert os.listdir(cache.root) == []
    assert media_server.requests[-1].range is not None


def test_a_partial_survives_a_refused_connection(
    cache: MediaCache, media_server: MediaServer
) -> None:
    have = dropped_fetch(cache, media_server)
    media_server.add("/news.mp3", status=503)
    with pytest.raises(MediaError):
        cache.fetch(media_server.url("/news.mp3"), SHA, SIZE)
    assert partial_of(cache).stat().st_size == have


def test_a_complete_partial_needs_no_network(cache: MediaCache, media_server: MediaServer) -> None:
    cache.root.mkdir()
    partial_of(cache).write_bytes(MEDIUM)
    assert cache.fetch(media_server.url("/nowhere"), SHA, SIZE).read_bytes() == MEDIUM
    assert media_server.requests == []


def test_an_oversized_partial_is_discarded(cache: MediaCache, media_server: MediaServer) -> None:
    cache.root.mkdir()
    partial_of(cache).write_bytes(MEDIUM + b"extra")
    url = media_server.add("/news.mp3", MEDIUM, ranges=True)
    assert cache.fetch(url, SHA, SIZE).read_bytes() == MEDIUM
    assert media_server.requests[-1].range is None


def test_a_small_partial_is_not_kept_by_default(tmp_path: Path, media_server: MediaServer) -> None:
    cache = MediaCache(tmp_path / "media", allow_http=True, chunk_bytes=1000)
    url = media_server.add("/news.mp3", MEDIUM, drop_after=1000)
    with pytest.raises(MediaError):
        cache.fetch(url, SHA, SIZE)
    assert os.listdir(cache.root) == []


def test_remove_partials_keeps_young_resumable_ones(
    cache: MediaCache, media_server: MediaServer
) -> None:
    dropped_fetch(cache, media_server)
    (cache.root / f"{PARTIAL_PREFIX}{SHA}-abc").write_bytes(b"random name")
    now = time.time()
    assert cache.remove_partials(now=now) == 1
    assert partial_of(cache).exists()
    assert cache.remove_partials(now=now + PARTIAL_MAX_AGE_S + 1) == 1
    assert not partial_of(cache).exists()


def test_remove_partials_all(cache: MediaCache, media_server: MediaServer) -> None:
    dropped_fetch(cache, media_server)
    assert cache.remove_partials(all=True) == 1
    assert os.listdir(cache.root) == []


# -- Retry-After --------------------------------------------------------------------------------


def test_429_with_retry_after_seconds(cache: MediaCache, media_server: MediaServer) -> None:
    url = media_server.add("/news.mp3", status=429, retry_after="7")
    with pytest.raises(MediaError) as caught:
        cache.fetch(url, SHA, SIZE)
    assert caught.value.code is Code.MEDIA_UNREACHABLE
    assert caught.value.retry_after_s == 7


def test_503_with_retry_after_http_date(cache: MediaCache, media_server: MediaServer) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    url = media_server.add("/news.mp3", status=503, retry_after=when)
    with pytest.raises(MediaError) as caught:
        cache.fetch(url, SHA, SIZE)
    assert caught.value.retry_after_s is not None
    assert 100 <= caught.value.retry_after_s <= 120


def test_retry_after_only_on_429_and_503(cache: MediaCache, media_server: MediaServer) -> None:
    url = media_server.add("/news.mp3", status=500, retry_after="7")
    with pytest.raises(MediaError) as caught:
        cache.fetch(url, SHA, SIZE)
    assert caught.value.retry_after_s is None
    assert MediaError(Code.MEDIA_TOO_LARGE, "x").retry_after_s is None


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("0", now) == 0
    assert parse_retry_after(" 30 ", now) == 30
    assert parse_retry_after(email.utils.formatdate(now + 60, usegmt=True), now) == 60
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now) == 0
    for junk in (None, "", "-5", "soon", "1.5", "Mon, 99 Foo 2024"):
        assert parse_retry_after(junk, now) is None


# -- back-off -----------------------------------------------------------------------------------


def test_next_delay_bounds() -> None:
    rng = random.Random(1234)
    for attempt in range(40):
        ceiling = min(1800.0, 5.0 * 2**attempt)
        delays = [next_delay(attempt, None, rng) for _ in range(50)]
        assert all(0 <= d <= ceiling for d in delays)
    assert max(next_delay(30, None, rng) for _ in range(200)) > 900  # the cap is reached
    assert all(next_delay(a, 7.0, rng) >= 7.0 for a in range(10) for _ in range(20))
    assert next_delay(0, 3600.0, rng) == 3600.0  # Retry-After wins over the cap
    assert next_delay(10**6, None, rng) <= 1800.0


def test_next_delay_is_reproducible_and_checks_input() -> None:
    first = [next_delay(a, None, random.Random(7)) for a in range(5)]
    assert first == [next_delay(a, None, random.Random(7)) for a in range(5)]
    with pytest.raises(ValueError):
        next_delay(-1, None, random.Random(7))


# -- integrity ---------------------------------------------------------------------------------


def test_verify_all_full_quarantines_a_corrupted_file(
    cache: MediaCache, media_server: MediaServer
) -> None:
    other = b"another medium"
    other_sha = hashlib.sha256(other).hexdigest()
    cache.fetch(media_server.add("/news.mp3", MEDIUM), SHA, SIZE)
    cache.fetch(media_server.add("/other.mp3", other), other_sha, len(other))
    assert cache.verify_all(quick=False) == []

    corrupted = bytearray(MEDIUM)
    corrupted[1000] ^= 0xFF
    cache.path_for(SHA).write_bytes(bytes(corrupted))
    assert cache.verify_all(quick=False) == [SHA]
    assert not cache.path_for(SHA).exists()
    assert (cache.root / QUARANTINE_DIR / SHA).read_bytes() == bytes(corrupted)
    assert cache.path_for(other_sha).read_bytes() == other
    assert cache.verify_all(quick=True) == []


def test_verify_all_quick_catches_a_changed_mtime(
    cache: MediaCache, media_server: MediaServer
) -> None:
    path = cache.fetch(media_server.add("/news.mp3", MEDIUM), SHA, SIZE)
    assert cache.verify_all(quick=False) == []
    assert (cache.root / VERIFIED_INDEX).exists()
    assert cache.verify_all(quick=True) == []

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cache.verify_all(quick=True) == [SHA]
    assert path.exists()  # quick mode reports, it does not move
    assert cache.verify_all(quick=True) == [SHA]  # still suspect until a full check
    assert cache.verify_all(quick=False) == []  # the content is fine: record renewed
    assert cache.verify_all(quick=True) == []


def test_verify_all_quick_catches_an_emptied_file(cache: MediaCache) -> None:
    cache.root.mkdir()
    cache.path_for(SHA).write_bytes(b"")
    assert cache.verify_all(quick=True) == [SHA]
    assert cache.verify_all(quick=False) == [SHA]
    assert (cache.root / QUARANTINE_DIR / SHA).exists()


def test_verify_all_without_a_cache(tmp_path: Path) -> None:
    assert MediaCache(tmp_path / "none").verify_all(quick=True) == []
