"""A crash at any moment of a download leaves the old state or the new one: at each named
crash point the process dies (os._exit, like a power cut); after a restart the cache is
consistent, nothing half-written is used, and nothing complete is fetched again."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cache import CRASH_EXIT, MediaCache
from tests.harness.media_server import MediaServer

pytestmark = pytest.mark.integration
BODY = bytes(range(256)) * 1024  # 256 KiB: large enough that the partial is kept to resume
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.mark.parametrize("point", ["after-download", "before-rename", "after-rename"])
def test_crash_then_restart(tmp_path: Path, point: str) -> None:
    cache_dir = tmp_path / "cache"
    with MediaServer() as server:
        url = server.add("/news.mp3", BODY, ranges=True)
        code = (
            "import sys; from pathlib import Path; from agent.cache import MediaCache;"
            f"MediaCache(Path({str(cache_dir)!r}), allow_http=True).fetch({url!r}, {SHA!r}, "
            f"{len(BODY)})"
        )
        env = dict(os.environ, LOA_CRASH_AT=point)
        died = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              timeout=60, check=False)  # fmt: skip
        assert died.returncode == CRASH_EXIT, died.stderr.decode()
        assert server.hits("/news.mp3") == 1

        # Restart: the start-up clean-up, then the fetch the runtime would make.
        cache = MediaCache(cache_dir, allow_http=True)
        cache.remove_partials()
        cached = cache.path_for(SHA)
        assert not cached.exists() or cached.read_bytes() == BODY  # never a half file in use
        path = cache.fetch(url, SHA, len(BODY))
        assert path.read_bytes() == BODY
        # The whole file had arrived before every crash point: it is never fetched again.
        assert server.hits("/news.mp3") == 1
        assert cache.verify_all(quick=False) == []
