"""The media cache against a real HTTP server on loopback: every way a download can go wrong
leaves the cache as it was, and only a complete, verified file enters it under its hash."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import urllib.request
from http.client import HTTPMessage
from pathlib import Path

import pytest

from agent.cache import PARTIAL_PREFIX, MediaCache, MediaError, _RedirectHandler, _SchemeRefused
from agent.core.codes import Code
from tests.harness.media_server import MediaServer, closed_port

ROOT = Path(__file__).resolve().parents[2]
# Not a multiple of any chunk size used here, so the last read is a short one.
MEDIUM = bytes(range(256)) * 781 + b"tail"
SHA = hashlib.sha256(MEDIUM).hexdigest()
SIZE = len(MEDIUM)
FAST_TIMEOUT_S = 0.5


@pytest.fixture
def cache(tmp_path: Path) -> MediaCache:
    return MediaCache(tmp_path / "media", allow_http=True)


def cache_entries(cache: MediaCache) -> list[str]:
    return sorted(os.listdir(cache.root)) if cache.root.exists() else []


def fetch_fails(cache: MediaCache, url: str, code: Code, sha: str = SHA, size: int = SIZE) -> str:
    """Fetch, expect a MediaError with this code and an untouched cache; returns the detail."""
    before = cache_entries(cache)
    with pytest.raises(MediaError) as caught:
        cache.fetch(url, sha, size)
    assert caught.value.code is code
    assert cache_entries(cache) == before  # nothing cached, no partial left
    return caught.value.detail


# -- success ------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_bytes", [1000, 64 * 1024])
def test_fetch_stores_the_verified_file_under_its_hash(
    tmp_path: Path, media_server: MediaServer, chunk_bytes: int
) -> None:
    cache = MediaCache(tmp_path / "media", allow_http=True, chunk_bytes=chunk_bytes)
    path = cache.fetch(media_server.add("/news.mp3", MEDIUM), SHA, SIZE)

    assert path == cache.path_for(SHA) == tmp_path / "media" / SHA
    assert path.read_bytes() == MEDIUM
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert cache_entries(cache) == [SHA]
    assert cache.has(SHA, SIZE)
    assert not cache.has(SHA, SIZE + 1)


def test_a_cached_medium_is_not_fetched_again(cache: MediaCache, media_server: MediaServer) -> None:
    url = media_server.add("/news.mp3", MEDIUM)
    first = cache.fetch(url, SHA, SIZE)
    second = cache.fetch(url, SHA, SIZE)
    assert first == second
    assert media_server.hits("/news.mp3") == 1


def test_a_cached_medium_is_returned_even_if_its_url_is_gone(
    cache: MediaCache, media_server: MediaServer
) -> None:
    cache.fetch(media_server.add("/news.mp3", MEDIUM), SHA, SIZE)
    # Content addressing: the hash, not the URL, names the medium.
    assert cache.fetch(media_server.url("/moved.mp3"), SHA, SIZE) == cache.path_for(SHA)
    assert media_server.hits("/moved.mp3") == 0


def test_a_file_of_the_wrong_size_under_the_hash_is_replaced(
    cache: MediaCache, media_server: MediaServer
) -> None:
    cache.root.mkdir()
    cache.path_for(SHA).write_bytes(MEDIUM[:100])
    path = cache.fetch(media_server.add("/news.mp3", MEDIUM), SHA, SIZE)
    assert path.read_bytes() == MEDIUM


def test_an_http_redirect_is_followed(cache: MediaCache, media_server: MediaServer) -> None:
    target = media_server.add("/real.mp3", MEDIUM)
    url = media_server.add("/old.mp3", status=302, location=target)
    assert cache.fetch(url, SHA, SIZE).read_bytes() == MEDIUM


def test_an_empty_medium(cache: MediaCache, media_server: MediaServer) -> None:
    empty = hashlib.sha256(b"").hexdigest()
    assert cache.fetch(media_server.add("/silence", b""), empty, 0).read_bytes() == b""


# -- the medium is not what was announced --------------------------------------------------------


def test_too_large_by_body(cache: MediaCache, media_server: MediaServer) -> None:
    url = media_server.add("/big.mp3", MEDIUM + b"x" * 500_000, omit_length=True)
    detail = fetch_fails(cache, url, Code.MEDIA_TOO_LARGE)
    assert f"more than {SIZE} bytes" in detail


def test_too_large_by_content_length(cache: MediaCache, media_server: MediaServer) -> None:
    url = media_server.add("/big.mp3", MEDIUM, content_length=10 * SIZE)
    detail = fetch_fails(cache, url, Code.MEDIA_TOO_LARGE)
    assert "announces" in detail


def test_truncated_body(cache: MediaCache, media_server: MediaServer) -> None:
    # The server announces the right length but closes after fewer bytes.
    url = media_server.add("/cut.mp3", MEDIUM[:-10], content_length=SIZE)
    detail = fetch_fails(cache, url, Code.MEDIA_HASH_MISMATCH)
    assert f"{SIZE - 10} of {SIZE}" in detail


def test_short_content_length(cache: MediaCache, media_server: MediaServer) -> None:
    url = media_server.add("/short.mp3", MEDIUM, content_length=SIZE - 1)
    fetch_fails(cache, url, Code.MEDIA_HASH_MISMATCH)


def test_hash_mismatch(cache: MediaCache, media_server: MediaServer) -> None:
    other = MEDIUM[:-1] + b"X"
    url = media_server.add("/news.mp3", other)
    detail = fetch_fails(cache, url, Code.MEDIA_HASH_MISMATCH)
    assert hashlib.sha256(other).hexdigest() in detail


# -- the medium cannot be reached --------------------------------------------------------------


def test_not_found(cache: MediaCache, media_server: MediaServer) -> None:
    assert "404" in fetch_fails(cache, media_server.url("/nowhere.mp3"), Code.MEDIA_UNREACHABLE)


def test_server_error(cache: MediaCache, media_server: MediaServer) -> None:
    url = media_server.add("/news.mp3", MEDIUM, status=500)
    assert "500" in fetch_fails(cache, url, Code.MEDIA_UNREACHABLE)


def test_connection_refused(cache: MediaCache) -> None:
    url = f"http://127.0.0.1:{closed_port()}/news.mp3"
    assert "refused" in fetch_fails(cache, url, Code.MEDIA_UNREACHABLE).lower()


def test_http_refused_unless_allowed(tmp_path: Path, media_server: MediaServer) -> None:
    cache = MediaCache(tmp_path / "media")
    url = media_server.add("/news.mp3", MEDIUM)
    assert fetch_fails(cache, url, Code.MEDIA_UNREACHABLE) == "http not allowed"
    assert media_server.requests == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/news.mp3", "news.mp3"])
def test_other_schemes_refused(cache: MediaCache, url: str) -> None:
    assert "not allowed" in fetch_fails(cache, url, Code.MEDIA_UNREACHABLE)


@pytest.mark.parametrize(
    "location", ["file:///etc/passwd", "ftp://127.0.0.1/news.mp3", "data:,hello"]
)
def test_redirect_to_another_scheme_refused(
    cache: MediaCache, media_server: MediaServer, location: str
) -> None:
    url = media_server.add("/news.mp3", status=302, location=location)
    assert "not allowed" in fetch_fails(cache, url, Code.MEDIA_UNREACHABLE)


def test_redirect_from_https_down_to_http_refused() -> None:
    # No TLS server here: ask the redirect policy of an https-only opener, as urllib would.
    handler = _RedirectHandler(frozenset({"https"}))
    request = urllib.request.Request("https://media.example.vn/a.mp3")
    response = io.BytesIO(b"")
    with pytest.raises(_SchemeRefused):
        handler.redirect_request(
            request, response, 302, "Found", HTTPMessage(), "http://media.example.vn/a.mp3"
        )
    assert response.closed  # the refused redirect's response is not left open


@pytest.mark.parametrize("where", ["stall_before_headers", "stall_after"])
def test_stalled_server_times_out(tmp_path: Path, media_server: MediaServer, where: str) -> None:
    cache = MediaCache(tmp_path / "media", allow_http=True, timeout_s=FAST_TIMEOUT_S)
    knob: dict[str, object] = (
        {"stall_before_headers": True} if where == "stall_before_headers" else {"stall_after": 1000}
    )
    url = media_server.add("/slow.mp3", MEDIUM, **knob)
    assert "timed out" in fetch_fails(cache, url, Code.MEDIA_UNREACHABLE)


# -- housekeeping and input checks ----------------------------------------------------------------


def test_remove_partials(cache: MediaCache, media_server: MediaServer) -> None:
    assert cache.remove_partials() == 0  # no directory yet
    cache.fetch(media_server.add("/news.mp3", MEDIUM), SHA, SIZE)
    for suffix in ("abc", "def"):
        (cache.root / f"{PARTIAL_PREFIX}{SHA}-{suffix}").write_bytes(b"half")
    assert cache.remove_partials() == 2
    assert cache_entries(cache) == [SHA]
    assert cache.remove_partials() == 0


@pytest.mark.parametrize(
    "bad",
    [SHA.upper(), SHA[:-1], SHA + "0", "../" + SHA[3:], "g" * 64, "", f"{SHA[:63]}\n"],
)
def test_a_bad_hash_is_refused(cache: MediaCache, media_server: MediaServer, bad: str) -> None:
    with pytest.raises(ValueError):
        cache.path_for(bad)
    with pytest.raises(ValueError):
        cache.has(bad, SIZE)
    with pytest.raises(ValueError):
        cache.fetch(media_server.add("/news.mp3", MEDIUM), bad, SIZE)
    assert media_server.requests == []


def test_media_error_carries_only_media_codes() -> None:
    error = MediaError(Code.MEDIA_TOO_LARGE, "too big")
    assert (error.code, error.detail, str(error)) == (
        Code.MEDIA_TOO_LARGE,
        "too big",
        "media-too-large: too big",
    )
    with pytest.raises(ValueError):
        MediaError(Code.SCHEMA, "not a media fault")


# -- a full disk -----------------------------------------------------------------------------------

_CHILD = """
import json, os, sys
from pathlib import Path
from agent.cache import CacheFullError, MediaCache
root, url, sha, size = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
cache = MediaCache(root, allow_http=True)
try:
    cache.fetch(url, sha, size)
    outcome = "stored"
except CacheFullError as exc:
    outcome = f"full: {exc.detail} at {exc.path == root}"
print(json.dumps({"outcome": outcome, "left": sorted(os.listdir(root))}))
"""


def _in_small_tmpfs(mountpoint: Path, argv: list[str]) -> list[str]:
    # A user and mount namespace lets an unprivileged process mount a tmpfs that only it sees.
    script = 'mount -t tmpfs -o size=64k loa-test "$1" && shift && exec "$@"'
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh",
            str(mountpoint), *argv]  # fmt: skip


def _small_tmpfs_available(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run(_in_small_tmpfs(probe, ["true"]), capture_output=True, check=False)
    return done.returncode == 0


def test_a_full_disk_is_a_cache_full_error(tmp_path: Path, media_server: MediaServer) -> None:
    # A real ENOSPC needs a small file system; a throwaway tmpfs in a private mount namespace is
    # the only one we can have without touching the machine's mounts.
    if not _small_tmpfs_available(tmp_path):
        pytest.skip("needs `unshare --user --mount` to mount a small tmpfs (user namespaces off?)")
    root = tmp_path / "media"
    root.mkdir()
    url = media_server.add("/news.mp3", MEDIUM)
    argv = [sys.executable, "-c", _CHILD, str(root), url, SHA, str(SIZE)]
    done = subprocess.run(
        _in_small_tmpfs(root, argv), capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "outcome": "full: No space left on device at True",
        "left": [],
    }
    assert media_server.hits("/news.mp3") == 1
