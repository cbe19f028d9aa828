"""A little disk space kept in reserve for the station's own databases (issue 13, part "disk").

SQLite in WAL mode needs room to *open* a database whose ``-shm`` file went with the last clean
close (it writes into the new file), so an agent restarted on a full disk could not open its
state at all ("disk I/O error") and never came up: nothing played, though the cache and the
card were fine (tests/e2e/test_fault_disk.py, restart scenario). The reserve is one file of
zeros, ``.disk-reserve`` beside the databases, written while there is plenty of room; when a
database will not open, the reserve is given up and the open tried again. It comes back once
the disk has room again.

Owns: the reserve file, its size, when it is written and when it is given up. Best effort
throughout: no failure here is the station's failure.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

NAME = ".disk-reserve"
SIZE = 512 * 1024  # two databases' -shm (32 KiB each) and a few hundred commits of WAL
# Written only when this many times its size is free: never the write that fills the disk.
ROOM_FACTOR = 8
_CHUNK = 64 * 1024

log = logging.getLogger(__name__)


def path_in(directory: Path) -> Path:
    return directory / NAME


def release(directory: Path) -> bool:
    """Give the reserve up (a database would not open); True when there was one."""
    try:
        path_in(directory).unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.error("cannot give up the disk reserve: %s", exc)
        return False
    log.warning("disk full: the %d-byte reserve in %s given up", SIZE, directory)
    return True


def ensure(directory: Path) -> bool:
    """Write the reserve if it is missing and the disk has room for it many times over;
    True when it is in place afterwards."""
    target = path_in(directory)
    try:
        if target.stat().st_size >= SIZE:
            return True
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        st = os.statvfs(directory)
        if st.f_bavail * st.f_frsize < ROOM_FACTOR * SIZE:
            return False
        temporary = directory / f"{NAME}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            written = 0
            while written < SIZE:  # real blocks: a sparse file would free nothing
                written += os.write(fd, b"\0" * min(_CHUNK, SIZE - written))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except OSError as exc:
        log.warning("cannot write the disk reserve in %s: %s", directory, exc)
        (directory / f"{NAME}.tmp").unlink(missing_ok=True)
        return False
    return True


def open_database(path: Path, schema: str, busy_timeout_s: float = 30.0) -> sqlite3.Connection:
    """A station database (the outbox, the trust store) in WAL mode with its schema; when it
    will not open (on a full disk the open itself needs room for the ``-shm`` file), once more
    after giving up the reserve. Raises sqlite3.Error."""
    try:
        return _connect(path, schema, busy_timeout_s)
    except sqlite3.Error:
        if not release(path.parent):
            raise
    return _connect(path, schema, busy_timeout_s)


def _connect(path: Path, schema: str, busy_timeout_s: float) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db
