"""A tiny file system for the full-disk tests (tests/e2e/test_fault_disk.py, issue 13).

``tiny_fs(directory, size_mib)`` mounts a loop-mounted ext4 image of a few MiB at
``directory`` (falling back to a size-limited tmpfs when loop devices are not available) and
always unmounts it. ``TinyFs.fill_to(n)`` grows one filler file until exactly ``n`` bytes are
left free (as ``statvfs`` reports to an unprivileged writer), ``TinyFs.free()`` gives the room
back. Where neither mount is possible (not root, no mount binary) the test is skipped with
the reason; nothing here is faked: the agent meets the kernel's own ENOSPC.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

FILLER = ".filler"
_CHUNK = 1 << 20


@dataclass
class TinyFs:
    root: Path
    kind: str  # "ext4" or "tmpfs"
    size_bytes: int

    @property
    def filler(self) -> Path:
        return self.root / FILLER

    def available(self) -> int:
        """Bytes an unprivileged writer may still use (ext4 keeps a root reserve: mkfs -m 0)."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def fill_to(self, left: int) -> int:
        """Grow the filler until at most ``left`` bytes are free; returns what is free then.

        Block granularity: the file system hands out whole blocks, so ``left`` is met to the
        block (a multiple of the block size is met exactly)."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:  # unbuffered: a buffered close would fail on the last, full write
            while (room := self.available() - left) > 0:
                try:
                    os.write(fd, b"\0" * min(room, _CHUNK))
                    os.fsync(fd)
                except OSError:
                    break  # full to the last block
        finally:
            os.close(fd)
        return self.available()

    def free(self) -> None:
        """Give all the filler's room back."""
        self.filler.unlink(missing_ok=True)
        os.sync()


def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, timeout=60, check=False)


@contextlib.contextmanager
def tiny_fs(directory: Path, size_mib: int = 8) -> Iterator[TinyFs]:
    """Mount a ``size_mib`` MiB file system at ``directory`` (created); unmount on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    size = size_mib * 1024 * 1024
    image = directory.with_name(directory.name + ".img")
    reasons: list[str] = []
    kind = ""
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny file system needs root (loop ext4 or tmpfs)")
    if shutil.which("mkfs.ext4") and shutil.which("mount"):
        with image.open("wb") as out:
            out.truncate(size)
        # -m 0: no root reserve (the agent runs as root on a station; free means free).
        made = _run("mkfs.ext4", "-q", "-m", "0", "-F", str(image))
        mounted = made.returncode == 0 and _run(
            "mount", "-o", "loop", str(image), str(directory)
        ).returncode == 0  # fmt: skip
        if mounted:
            kind = "ext4"
        else:
            reasons.append(f"loop ext4: {(made.stderr or b'mount failed').decode().strip()}")
            image.unlink(missing_ok=True)
    if not kind:
        done = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory))
        if done.returncode == 0:
            kind = "tmpfs"
        else:
            reasons.append(f"tmpfs: {done.stderr.decode().strip()}")
    if not kind:
        pytest.skip("no tiny file system could be mounted: " + "; ".join(reasons))
    try:
        yield TinyFs(directory, kind, size)
    finally:
        # Lazy: a process the test could not stop must not leave the mount behind.
        _run("umount", "-l", str(directory))
        image.unlink(missing_ok=True)
