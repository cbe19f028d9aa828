"""How many envelopes from the link may wait in the runtime's inbox: a bound, with backpressure.

A station's down topics can be flooded by anyone holding a province operator's certificate (a
stolen laptop), faster than the trust core can verify. Before this bound every message went
into the runtime's unbounded inbox, so a flood beyond the verify rate grew the agent's memory
without limit (+185 MiB in 9 s at 12,000 messages a second) and put every slot's timer behind
the backlog: the flooded slots sounded seconds late or never (tests/e2e/test_attack_flood.py).

``admit`` (paho's network thread, before it puts a message on the inbox) waits while
``max_messages`` envelopes or ``max_bytes`` of them are in the inbox; ``done`` (the runtime,
once it has dealt with one) lets the next in. While paho waits it reads nothing more from its
socket, TCP pushes back, and the excess waits at the broker, whose per-client queue is the
province's to bound: the station drops nothing it was sent and its memory stays flat. A timer,
a finished play or a heartbeat is behind at most ``max_messages`` envelopes (64 verifications,
tens of milliseconds; the pre-roll starts a play half a second ahead). One envelope larger than
``max_bytes`` still gets in when none waits (an envelope may be 3 MiB).
"""

from __future__ import annotations

import threading

MAX_MESSAGES = 64
MAX_BYTES = 8 * 1024 * 1024
# How long ``admit`` waits between looks at ``closed``: a blocked paho thread sees a shutdown.
_POLL_S = 0.5


class EnvelopeBound:
    def __init__(self, *, max_messages: int = MAX_MESSAGES, max_bytes: int = MAX_BYTES) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("the bound must let at least one message and one byte in")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._messages = 0
        self._bytes = 0
        self._closed = False
        self._cond = threading.Condition()
        self.waited = 0  # admissions that found the inbox full and waited (a flood is on)

    def _full(self, size: int) -> bool:
        if self._messages == 0:
            return False
        return self._messages >= self.max_messages or self._bytes + size > self.max_bytes

    def admit(self, size: int) -> bool:
        """Wait until an envelope of ``size`` bytes may go on the inbox; False once closed."""
        with self._cond:
            if self._full(size):
                self.waited += 1
            while self._full(size) and not self._closed:
                self._cond.wait(_POLL_S)
            if self._closed:
                return False
            self._messages += 1
            self._bytes += size
            return True

    def done(self, size: int) -> None:
        """One envelope of ``size`` bytes has left the inbox. (A message a test put on the inbox
        directly was never admitted: it frees a place early, or nothing when none is taken.)"""
        with self._cond:
            if self._messages:
                self._messages -= 1
                self._bytes = max(0, self._bytes - size)
                self._cond.notify_all()

    def close(self) -> None:
        """Release a waiting ``admit`` and refuse those after it (the station is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def waiting(self) -> tuple[int, int]:
        """(envelopes, bytes) admitted and not yet done."""
        with self._cond:
            return self._messages, self._bytes
