"""The capture process: ``parec`` from the null sink's monitor into a raw file, and for every
read the monotonic instant it returned and the byte count so far into a timestamp file.

It runs as its own process so that the benchmark's threads (the player's among them) never hold
up a timestamp behind Python's GIL. ``bench.paced_sink.MonitorCapture`` starts it and reads both
files. Usage: ``python -m bench.capture SOURCE LATENCY_MS RAW_PATH STAMPS_PATH``.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from types import FrameType

STAMP = struct.Struct("<dq")  # monotonic seconds, bytes captured so far


def main(argv: list[str]) -> int:
    source, latency_ms, raw_path, stamps_path = argv
    parec = subprocess.Popen(
        ["parec", f"--device={source}", "--raw", "--format=s16le", "--rate=48000",
         "--channels=2", f"--latency-msec={latency_ms}"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert parec.stdout is not None

    def stop(signum: int, frame: FrameType | None) -> None:
        parec.terminate()

    signal.signal(signal.SIGTERM, stop)
    fd = parec.stdout.fileno()
    total = 0
    with open(raw_path, "wb", buffering=0) as raw, open(stamps_path, "wb", buffering=0) as stamps:
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except InterruptedError:
                continue
            now = time.monotonic()
            if not data:
                break
            raw.write(data)
            total += len(data)
            stamps.write(STAMP.pack(now, total))
    return parec.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
