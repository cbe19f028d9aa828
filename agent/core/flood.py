"""Aggregation of repeated rejections (PROTOCOL.md section 7): the first few per code and minute
go out as single events, the rest only as counts, so a flood of bogus messages can fill neither
the outbox nor a 4G data plan.

Pure: the caller passes monotonic seconds in, and asks for the summaries that are due.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WINDOW_S = 60.0
PER_WINDOW = 5


@dataclass(frozen=True, slots=True)
class Suppressed:
    """How many events of ``code`` were held back during one window of ``window_s``."""

    code: str
    count: int
    window_s: float


@dataclass
class _Window:
    started: float
    passed: int = 0
    held: int = 0


@dataclass
class FloodGate:
    per_window: int = PER_WINDOW
    window_s: float = WINDOW_S
    _windows: dict[str, _Window] = field(default_factory=dict)
    # Counts of windows that ended before ``due`` was asked: never lost to a new window.
    _ended: dict[str, int] = field(default_factory=dict)

    def admit(self, code: str, now: float) -> bool:
        """True when an event with ``code`` should be reported on its own; False when it is
        only counted (it appears in a later ``due`` summary)."""
        window = self._windows.get(code)
        if window is None or now - window.started >= self.window_s:
            if window is not None and window.held:
                self._ended[code] = self._ended.get(code, 0) + window.held
            window = _Window(now)
            self._windows[code] = window
        if window.passed < self.per_window:
            window.passed += 1
            return True
        window.held += 1
        return False

    def due(self, now: float) -> list[Suppressed]:
        """Summaries of the windows that have ended with events held back; each only once.
        A window that ends without anything held back says nothing."""
        held, self._ended = self._ended, {}
        for code, window in list(self._windows.items()):
            if now - window.started < self.window_s:
                continue
            if window.held:
                held[code] = held.get(code, 0) + window.held
            del self._windows[code]
        return [Suppressed(code, held[code], self.window_s) for code in sorted(held)]

    def pending(self) -> int:
        """Events counted but not yet summarised (a heartbeat can show the flood as it runs)."""
        return sum(w.held for w in self._windows.values()) + sum(self._ended.values())
