"""The cache's disk quota: room is made by evicting media that no playlist in force needs,
least recently used first (by modification time: the player touches a file when it plays it).

Nothing a current or future occurrence needs is ever evicted; when room cannot be made, the
download is refused cleanly (``cache-full``) rather than fill the disk the state database and the
outbox live on.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SHA = re.compile(r"\A[0-9a-f]{64}\Z")


@dataclass(frozen=True, slots=True)
class Room:
    ok: bool
    evicted: tuple[str, ...]
    used_bytes: int


def cached_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if _SHA.match(p.name) and p.is_file()]


def make_room(root: Path, quota_bytes: int, wanted_bytes: int, keep: Iterable[str]) -> Room:
    """Evict unneeded files, oldest use first, until ``wanted_bytes`` more fit under the quota."""
    keep = set(keep)
    files = cached_files(root)
    used = sum(p.stat().st_size for p in files)
    evicted: list[str] = []
    if used + wanted_bytes <= quota_bytes:
        return Room(True, (), used)
    for path in sorted((p for p in files if p.name not in keep), key=lambda p: p.stat().st_mtime):
        size = path.stat().st_size
        path.unlink(missing_ok=True)
        sidecar = path.with_name(f"{path.name}.loudness.json")
        sidecar.unlink(missing_ok=True)
        used -= size
        evicted.append(path.name)
        if used + wanted_bytes <= quota_bytes:
            return Room(True, tuple(evicted), used)
    return Room(False, tuple(evicted), used)


def touch(path: Path) -> None:
    """Mark a medium as just used (LRU); a missing file is not an error here."""
    with contextlib.suppress(OSError):
        path.touch(exist_ok=True)
