"""Where envelopes from the link wait for the runtime: bounded, and behind the station's timers.

A station's down topics can be flooded by anyone holding a province operator's certificate (a
stolen laptop), faster than the trust core can verify. Before this queue every message went
into the runtime's one unbounded inbox, so a flood beyond the verify rate grew the agent's
memory without limit (+185 MiB in 9 s at 12,000 messages a second) and put every slot's timer
behind the backlog: the flooded slots never sounded (tests/e2e/test_attack_flood.py).

Two rules fix both:

- **Bounded, with backpressure.** ``put`` (paho's network thread) blocks while ``max_messages``
  or ``max_bytes`` are queued. paho then stops reading its socket, TCP pushes back, and the
  excess waits at the broker, whose per-client queue is the province's to bound; the station
  drops nothing it was sent and its memory stays flat. One envelope larger than ``max_bytes``
  still gets in when the queue is empty (an envelope may be 3 MiB).
- **Batches between everything else.** The runtime's inbox only ever holds one wake-up token
  for this queue (``wake``, called when the queue goes from empty to non-empty). The runtime
  takes at most ``batch`` envelopes per token and, when more wait, hands itself a new token at
  the back of its inbox: a timer, a finished play or a heartbeat waits for one batch at most.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_MESSAGES = 256
MAX_BYTES = 8 * 1024 * 1024
BATCH = 32
# How long ``put`` waits between looks at ``closed``: a blocked paho thread notices a shutdown.
_POLL_S = 0.5


class EnvelopeQueue(Generic[T]):
    def __init__(
        self,
        wake: Callable[[], None],
        size: Callable[[T], int],
        *,
        max_messages: int = MAX_MESSAGES,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("an envelope queue holds at least one message and one byte")
        self._wake = wake
        self._size = size
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._items: deque[tuple[T, int]] = deque()
        self._bytes = 0
        self._signalled = False
        self._closed = False
        self._cond = threading.Condition()
        self.waited = 0  # puts that found the queue full and waited (a flood is on)

    def _full(self, size: int) -> bool:
        if not self._items:
            return False
        return len(self._items) >= self.max_messages or self._bytes + size > self.max_bytes

    def put(self, item: T) -> bool:
        """Queue ``item``, waiting while the queue is full; False (dropped) once closed."""
        size = self._size(item)
        with self._cond:
            if self._full(size):
                self.waited += 1
            while self._full(size) and not self._closed:
                self._cond.wait(_POLL_S)
            if self._closed:
                return False
            self._items.append((item, size))
            self._bytes += size
            wake = not self._signalled
            self._signalled = True
        if wake:
            self._wake()
        return True

    def take(self, batch: int = BATCH) -> tuple[list[T], bool]:
        """Up to ``batch`` items, oldest first, and whether more wait (the caller then owes the
        queue a new turn: it is still signalled, and ``put`` will not wake it again)."""
        with self._cond:
            taken: list[T] = []
            while self._items and len(taken) < batch:
                item, size = self._items.popleft()
                self._bytes -= size
                taken.append(item)
            more = bool(self._items)
            self._signalled = more
            self._cond.notify_all()
        return taken, more

    def close(self) -> None:
        """Release a blocked ``put`` and refuse the ones after it (the station is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
