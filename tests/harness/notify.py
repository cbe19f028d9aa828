"""A datagram socket in the abstract namespace standing in for systemd's notification socket
(``NOTIFY_SOCKET=@name``): it keeps every message with the monotonic time it arrived, for the
tests and benchmarks that watch an agent's READY, WATCHDOG and STOPPING."""

from __future__ import annotations

import socket
import threading
import time
import uuid


class NotifyListener:
    def __init__(self, prefix: str = "loa-test-notify") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex}"
        self.received: list[tuple[float, str]] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(b"\0" + self.name.encode())
        self._socket.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return "@" + self.name

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data.decode(errors="replace")))

    def lines(self, key: str, after: float = 0.0) -> list[tuple[float, str]]:
        """Every assignment ``key=…`` received after ``after`` (monotonic)."""
        return [
            (stamp, line)
            for stamp, message in list(self.received)
            for line in message.split("\n")
            if line.startswith(key + "=") and stamp > after
        ]

    def first(self, key: str) -> float | None:
        """When the first ``key=…`` arrived (monotonic), if one did."""
        found = self.lines(key)
        return found[0][0] if found else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()
