"""A live relay's decisions (PROTOCOL.md section 6, ``live_start`` / ``live_stop``), pure.

A live relay puts an HTTP stream (a province studio, VOV) on air above the schedule (priority
80 on the ladder: below every emergency, above every slot). Streams stall and studios fall
silent; the station must neither keep dead air on its loudspeakers nor jump back and forth
between the stream and the schedule. This module is that policy, as a state machine fed with
what the runtime observed and the monotonic time, answering with actions; it reads no clock
and opens no connection (``agent.live`` carries the actions out, ``hal.live_source`` watches
the stream).

States:
- ``live``: the stream is the programme. When it stalls, goes silent or its connection ends,
  the air stays with the stream for ``hold_s`` (counted from when the trouble began) while the
  connection is retried; still in trouble after that, it falls back.
- ``fallback``: the schedule is the programme and no connection is open; the next attempt
  waits ``retry_s``, doubling after each failed attempt up to ``retry_max_s``.
- ``retrying``: the schedule is the programme and a connection is open and watched. The stream
  goes back on air only once it has flowed, audibly, for ``stable_s`` without a break: a
  source that comes and goes never makes the station flap.
- ``idle``: over (``live_stop``, a ``stop`` command, ``expires`` reached, replaced).

Every stretch on air is an occurrence of its own (slot ``live:<command id>``) with its own
as-run record; the machine says how each stretch ended (``OffAir`` / ``Finish`` carry the
outcome and reason) because only it knows whether the stream ever delivered audio.

Also here, because they are decisions: which hosts a station may relay (``host_allowed``) and
the priority a live relay gets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

SLOT_PREFIX = "live:"
DEFAULT_PRIORITY = 80
# The ladder (section 6): slots 1-60, live 80, emergencies 90-100. A province tool may ask for
# another live priority inside the gap between them, never one that ties with either side.
PRIORITY_RANGE = (61, 89)
# What an as-run says instead of a hash: live audio cannot be checked against anything.
UNVERIFIED_SHA256 = "unverified-live-stream"
DEFAULT_PORTS = {"http": 80, "https": 443}


def slot_id(command_id: str) -> str:
    return f"{SLOT_PREFIX}{command_id}"


def is_live(slot: str) -> bool:
    return slot.startswith(SLOT_PREFIX)


def command_id(slot: str) -> str:
    return slot[len(SLOT_PREFIX) :]


def priority(asked: object) -> int:
    """The command's priority held inside the live band; the default when it names none."""
    if not isinstance(asked, int) or isinstance(asked, bool):
        return DEFAULT_PRIORITY
    low, high = PRIORITY_RANGE
    return min(high, max(low, asked))


def host_allowed(scheme: str, host: str, port: int | None, allowed: Iterable[str]) -> bool:
    """Whether ``host`` (lower case, as parsed from the URL) at ``port`` (None: the scheme's
    default) is on the allowlist. An entry ``host`` allows that host on any port, an entry
    ``host:port`` that port only. Names compare exactly: ``example.vn`` does not allow
    ``live.example.vn`` (a subdomain may be run by someone else)."""
    effective = port if port is not None else DEFAULT_PORTS.get(scheme)
    for entry in allowed:
        name, _, entry_port = entry.strip().lower().rpartition(":")
        if not name or not entry_port.isdigit():  # no port in the entry (or an IPv6 oddity)
            name, entry_port = entry.strip().lower(), ""
        if name != host:
            continue
        if not entry_port or int(entry_port) == effective:
            return True
    return False


class State(StrEnum):
    IDLE = "idle"
    LIVE = "live"
    FALLBACK = "fallback"
    RETRYING = "retrying"


@dataclass(frozen=True, slots=True)
class Settings:
    hold_s: float  # trouble this long on air: fall back to the schedule
    retry_s: float  # first wait before connecting again
    retry_max_s: float  # the backoff's cap
    stable_s: float  # flowing this long, audibly and unbroken, before it goes back on air


# What the runtime observed (``since``: monotonic time the condition began) ------------------


@dataclass(frozen=True, slots=True)
class Flowing:
    since: float


@dataclass(frozen=True, slots=True)
class Stalled:
    since: float


@dataclass(frozen=True, slots=True)
class Silent:
    since: float


@dataclass(frozen=True, slots=True)
class Ended:
    reason: str  # the connection is over (refused, closed, ffmpeg gave up)


@dataclass(frozen=True, slots=True)
class Stopped:
    reason: str
    complete: bool = True  # live_stop ends it as asked; a `stop` command cuts it short


@dataclass(frozen=True, slots=True)
class Expired:
    pass


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed (the runtime wakes the machine at its ``deadline()``)."""


Event = Flowing | Stalled | Silent | Ended | Stopped | Expired | Tick


# What the runtime must do -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    pass


@dataclass(frozen=True, slots=True)
class OnAir:
    resumed: bool  # False: the first stretch


@dataclass(frozen=True, slots=True)
class OffAir:
    """Fall back: the stretch on air ends (its as-run says ``outcome``), the schedule resumes."""

    outcome: str
    reason: str


@dataclass(frozen=True, slots=True)
class Finish:
    """Over: a stretch on air ends with ``outcome``; any connection is closed."""

    outcome: str
    reason: str


@dataclass(frozen=True, slots=True)
class Report:
    code: str  # live-started, live-stalled, live-fallback, live-resumed, live-stopped
    reason: str | None


Action = Connect | Disconnect | OnAir | OffAir | Finish | Report


@dataclass(slots=True)
class _Trouble:
    kind: str  # starting | stalled | silent | ended | connecting
    since: float
    detail: str | None = None


_WHY = {
    "starting": "the stream has not started",
    "connecting": "the stream has not started",
    "stalled": "the stream stalled (no data)",
    "silent": "the stream is silent",
    "ended": "the stream's connection ended",
}


class LiveSession:
    """One live relay, from ``start`` to ``Finish``. ``expires_at`` is monotonic (the runtime
    converts the command's ``expires`` once). ``jitter()`` returns a number in [0, 1): each
    backoff wait is spread over its upper half, so stations that lost the same studio do not
    all knock again in the same second; the default (always 1) keeps it exact."""

    def __init__(
        self,
        settings: Settings,
        expires_at: float,
        jitter: Callable[[], float] = lambda: 1.0,
    ) -> None:
        self.settings = settings
        self.expires_at = expires_at
        self._jitter = jitter
        self.state = State.IDLE
        self.connected = False
        self.failures = 0  # attempts in a row that did not bring the stream back
        self.fallbacks = 0
        self._trouble: _Trouble | None = None
        self._flowing_since: float | None = None
        self._retry_at: float | None = None
        self._stretch_flowed = False  # the stretch on air carried audio at some point

    # the machine ---------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        if now >= self.expires_at:
            return [Report("live-stopped", "its expiry was reached before it started")]
        self.state = State.LIVE
        self.connected = True
        self._trouble = _Trouble("starting", now)
        self._stretch_flowed = False
        return [Connect(), OnAir(resumed=False), Report("live-started", None)]

    def handle(self, event: Event, now: float) -> list[Action]:
        if self.state is State.IDLE:
            return []
        if isinstance(event, Stopped):
            return self._finish(event.reason, event.complete)
        if isinstance(event, Expired) or now >= self.expires_at:
            return self._finish("its expiry was reached", True)
        if self.state is State.LIVE:
            return self._live(event, now)
        if self.state is State.RETRYING:
            return self._retrying(event, now)
        return self._fallback(event, now)

    def deadline(self) -> float | None:
        """The next instant at which ``Tick`` may change something; None when idle."""
        if self.state is State.IDLE:
            return None
        hold, stable = self.settings.hold_s, self.settings.stable_s
        times = [self.expires_at]
        if not self.connected and self._retry_at is not None:
            times.append(self._retry_at)
        trouble = self._trouble
        if trouble is not None and self.state is State.LIVE:
            times.append(trouble.since + hold)
        if self.state is State.RETRYING:
            if trouble is not None and trouble.kind in ("stalled", "connecting"):
                times.append(trouble.since + hold)
            if self._flowing_since is not None:
                times.append(self._flowing_since + stable)
        if self.state is State.LIVE and self.failures and self._flowing_since is not None:
            times.append(self._flowing_since + stable)
        return min(times)

    # per state -------------------------------------------------------------------------------

    def _live(self, event: Event, now: float) -> list[Action]:
        actions: list[Action] = []
        match event:
            case Flowing(since=since):
                self._trouble = None
                self._stretch_flowed = True
                if self._flowing_since is None:
                    self._flowing_since = since
            case Stalled(since=since) | Silent(since=since):
                kind = "stalled" if isinstance(event, Stalled) else "silent"
                actions += self._trouble_begins(kind, since, None)
            case Ended(reason=reason):
                self._connection_failed(now)
                actions += self._trouble_begins("ended", now, reason)
        actions += self._connect_if_due(now)
        trouble = self._trouble
        if trouble is not None and now >= trouble.since + self.settings.hold_s:
            return actions + self._fall_back(trouble, now)
        if (
            self._flowing_since is not None
            and self._trouble is None
            and now >= self._flowing_since + self.settings.stable_s
        ):
            self.failures = 0  # back on air and it held: the next trouble starts the backoff anew
        return actions

    def _retrying(self, event: Event, now: float) -> list[Action]:
        match event:
            case Flowing(since=since):
                self._trouble = None
                if self._flowing_since is None:
                    self._flowing_since = since
            case Stalled(since=since) | Silent(since=since):
                self._flowing_since = None
                kind = "stalled" if isinstance(event, Stalled) else "silent"
                before = self._trouble
                if before is not None and before.kind == "connecting" and kind == "stalled":
                    before.kind = kind  # nothing since it connected: the hold runs from then
                elif before is None or before.kind != kind:
                    self._trouble = _Trouble(kind, since)
            case Ended(reason=reason):
                self._flowing_since = None
                self._connection_failed(now)
                self.state = State.FALLBACK
                self._trouble = _Trouble("ended", now, reason)
                return []
        if self._flowing_since is not None and now >= self._flowing_since + self.settings.stable_s:
            self.state = State.LIVE
            self._trouble = None
            self._stretch_flowed = True
            return [OnAir(resumed=True), Report("live-resumed", None)]
        trouble = self._trouble
        # A connection that delivers nothing is given up after the hold time and retried later
        # (ffmpeg's own read timeout may be longer); a silent one stays open: it is alive, and
        # the studio may start talking any moment.
        if (
            trouble is not None
            and trouble.kind in ("stalled", "connecting")
            and now >= trouble.since + self.settings.hold_s
        ):
            self._connection_failed(now)
            self.state = State.FALLBACK
            return [Disconnect()]
        return []

    def _fallback(self, event: Event, now: float) -> list[Action]:
        # Nothing is connected: only time matters (late signals of a closed connection are
        # dropped by the runtime, and would change nothing here).
        return self._connect_if_due(now)

    # helpers ---------------------------------------------------------------------------------

    def _trouble_begins(self, kind: str, since: float, detail: str | None) -> list[Action]:
        self._flowing_since = None
        trouble = self._trouble
        if trouble is not None:
            # Already in trouble (or not started yet): the hold counts from its beginning, the
            # reason is the latest one.
            trouble.kind, trouble.detail = kind, detail or trouble.detail
            return []
        self._trouble = _Trouble(kind, since, detail)
        return [Report("live-stalled", self._why(self._trouble))]

    def _connect_if_due(self, now: float) -> list[Action]:
        if self.connected or self._retry_at is None or now < self._retry_at:
            return []
        self.connected = True
        self._retry_at = None
        self._flowing_since = None
        if self.state is State.FALLBACK:
            self.state = State.RETRYING
            self._trouble = _Trouble("connecting", now)
        return [Connect()]

    def _fall_back(self, trouble: _Trouble, now: float) -> list[Action]:
        self.fallbacks += 1
        why = self._why(trouble)
        outcome = "partial" if self._stretch_flowed else "failed"
        actions: list[Action] = [OffAir(outcome, f"{why}: fell back to the schedule")]
        actions.append(Report("live-fallback", why))
        self._flowing_since = None
        if self.connected and trouble.kind == "silent":
            # Alive but quiet: keep listening, it goes back on air once it is heard again.
            self.state = State.RETRYING
            return actions
        if self.connected:
            actions.insert(0, Disconnect())
            self._connection_failed(now)
        elif self._retry_at is None:
            self._retry_at = now + self._backoff()
        self.state = State.FALLBACK
        self._trouble = None
        return actions

    def _finish(self, reason: str, complete: bool) -> list[Action]:
        on_air = self.state is State.LIVE
        self.state = State.IDLE
        self.connected = False
        self._retry_at = None
        actions: list[Action] = []
        if on_air:
            if not self._stretch_flowed:
                outcome = "failed"
                reason = f"{reason}; the stream never delivered audio"
            else:
                outcome = "complete" if complete else "partial"
            actions.append(Finish(outcome, reason))
        else:
            actions.append(Finish("skipped", reason))  # nothing of it is on air
        actions.append(Report("live-stopped", reason))
        return actions

    def _connection_failed(self, now: float) -> None:
        """A connection ended or was given up: the next one waits, longer each time."""
        self.connected = False
        self.failures += 1
        self._retry_at = now + self._backoff()

    def _backoff(self) -> float:
        doublings = min(max(0, self.failures - 1), 30)
        base = min(self.settings.retry_max_s, self.settings.retry_s * (1 << doublings))
        spread: float = min(1.0, max(0.0, self._jitter()))
        return base * (0.5 + 0.5 * spread)

    def _why(self, trouble: _Trouble) -> str:
        why = _WHY.get(trouble.kind, trouble.kind)
        return f"{why}: {trouble.detail}" if trouble.detail else why
