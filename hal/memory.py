"""Giving freed heap back to the kernel on glibc (``malloc_trim``): start-up parses schemas,
the keyring and the playlists, and the freed arenas stay in the process's resident set unless
glibc is asked to return them. On a Pi with 512 MB to 1 GB that is worth a call after start-up
and now and then; elsewhere (musl, macOS) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Iterator
from functools import cache
from typing import Any


@cache
def _libc() -> Any:
    # glibc's soname first: find_library runs ldconfig in a subprocess.
    def names() -> Iterator[str | None]:
        yield "libc.so.6"
        yield ctypes.util.find_library("c")

    for name in names():
        if name is None:
            continue
        try:
            libc = ctypes.CDLL(name)
        except OSError:
            continue
        return libc if hasattr(libc, "malloc_trim") else None
    return None


def trim() -> bool:
    """Collect garbage, then return the free heap to the kernel; True if glibc did."""
    gc.collect()
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
