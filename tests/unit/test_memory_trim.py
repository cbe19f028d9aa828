"""hal.memory.trim gives freed heap back on glibc (the machines Loa runs on)."""

from __future__ import annotations

from hal import memory


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_trim_returns_freed_heap_to_the_kernel() -> None:
    # Many small objects (glibc serves them from the heap, not mmap), then freed.
    blocks = [bytes(512) + bytes([i % 256]) for i in range(60_000)]
    del blocks
    before = rss_kib()
    assert memory.trim() is True
    assert rss_kib() < before
