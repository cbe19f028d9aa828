"""hal/files.atomic_write on a full disk (issue 13, part "disk"): the write that meets ENOSPC
raises it, leaves the old file whole and no temporary file behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hal import files


def test_enospc_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    files.atomic_write(target, b"old")
    real_write = os.write
    calls = []

    def full_after_one_chunk(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, bytes(data)[:3])  # a short write: the rest must be retried

    monkeypatch.setattr(os, "write", full_after_one_chunk)
    with pytest.raises(OSError) as raised:
        files.atomic_write(target, b"new content")
    assert raised.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
