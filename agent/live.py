"""The live relay at work (PROTOCOL.md section 6, ``live_start`` / ``live_stop``): the runtime
glue between an accepted command, the pure decisions of ``agent.core.live``, the stream
(``hal.live_source``) and the programme.

Owns: checking a ``live_start`` (http(s) only, plain http only where configured, no
credentials in the URL, its host on the station's ``[live] allowed_hosts`` or the keyring's
``live_hosts``), one live session at a time (a new ``live_start`` replaces the one on), carrying
out the machine's actions (connect, disconnect, a stretch on air as an occurrence cut into the
programme at live priority, its end), waking the machine at its deadline, the ``live`` events
(``live-started``, ``live-stalled``, ``live-fallback``, ``live-resumed``, ``live-stopped``,
``live-refused``, each with ``id``, ``url`` and ``reason``) and what each stretch's as-run
says (``sha256`` is ``unverified-live-stream``: live audio has nothing to be checked against).

Leaves to others: the policy (``agent.core.live``), ffmpeg and the watchdog
(``hal.live_source``), arbitration with the schedule and emergencies (the programme: an
emergency cuts in on a live stretch like on anything else, which rejoins the stream after it),
signing and sending reports (the station).

Runs on the station's thread; the receiver's thread and the wake-up timer only enqueue
(``LiveSignalled``, ``LiveWake``).
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit

from agent.config import LiveConfig
from agent.core import live as policy
from agent.core.clock import Clock
from agent.core.models import Command, MediaRef
from agent.core.planner import Occurrence
from agent.player import PcmSource, PlayItem
from agent.programme import Outcome, Programme
from hal.live_source import DEMUXERS, LiveReceiver, LiveSignal

_URL = re.compile(r"\Ahttps?://[\x21-\x7e]+\Z", re.ASCII | re.IGNORECASE)
STALL_AFTER_S = 1.0  # no data this long is a stall (shorter gaps are the network's jitter)
SILENT_AFTER_S = 3.0  # quiet this long is silence (a pause between sentences is not)


@dataclass(frozen=True, slots=True)
class LiveSignalled:
    session: int
    signal: LiveSignal


@dataclass(frozen=True, slots=True)
class LiveWake:
    session: int


class Receiver(Protocol):
    gain: float

    def connect(self) -> int: ...

    def disconnect(self) -> None: ...

    def close(self) -> None: ...

    def source(self, gain: float) -> PcmSource: ...


# url, format or None, where its signals go -> the receiver
ReceiverFactory = Callable[[str, str | None, Callable[[LiveSignal], None]], Receiver]


def refusal(url: str, allow_http: bool, allowed: Iterable[str]) -> str | None:
    """Why the station will not relay ``url``; None when it will."""
    if not _URL.match(url):
        return "not an http(s) URL of printable ASCII"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_http:
        return "plain http is not allowed on this station (live.allow_http): use https"
    if parts.username is not None or parts.password is not None:
        # It would be repeated in every event and as-run about the stream.
        return "a URL with credentials in it is refused"
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        return f"bad URL: {exc}"
    if not host:
        return "the URL names no host"
    if not policy.host_allowed(scheme, host, port, allowed):
        return f"host {host} is not on the station's or the keyring's live allowlist"
    return None


@dataclass
class _Session:
    number: int
    command: Command
    url: str
    machine: policy.LiveSession
    receiver: Receiver
    generation: int = 0  # the connection whose signals count (0: none)
    stretch: Occurrence | None = None  # on air, or waiting behind an emergency


class _Nothing:
    """A source that ends at once: a stretch of a session that is already over."""

    def chunks(self) -> Iterator[bytes]:
        return iter(())

    def close(self) -> None:
        return None

    def __enter__(self) -> _Nothing:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class LiveRelay:
    def __init__(
        self,
        config: LiveConfig,
        clock: Clock,
        programme: Programme,
        deliver: Callable[[LiveSignalled | LiveWake], None],
        event: Callable[[str, str, dict[str, Any]], None],
        volume: Callable[[Occurrence], int],
        *,
        default_volume: int,
        receiver_factory: ReceiverFactory | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._config = config
        self._clock = clock
        self._programme = programme
        self._deliver = deliver
        self._event = event
        self._volume = volume
        self._default_volume = default_volume
        self._receiver_factory = receiver_factory or self._receiver
        self._jitter = jitter
        self._session: _Session | None = None
        self._sessions = 0
        self._timer: threading.Timer | None = None
        # Stretch key -> (outcome, reason) decided when the station ended it; its as-run
        # comes later, when the player's result is handled.
        self._endings: dict[str, tuple[str, str]] = {}

    @property
    def active(self) -> bool:
        return self._session is not None

    # commands ---------------------------------------------------------------------------------

    def start(self, command: Command, keyring_hosts: Iterable[str]) -> None:
        stream = command.doc.get("stream")
        url = stream.get("url") if isinstance(stream, dict) else None
        fmt = stream.get("format") if isinstance(stream, dict) else None
        fields: dict[str, Any] = {"id": command.id, "url": url}
        why: str | None = "the command names no stream"
        if isinstance(url, str):
            allowed = (*self._config.allowed_hosts, *keyring_hosts)
            why = refusal(url, self._config.allow_http, allowed)
            if why is None and fmt is not None and fmt not in DEMUXERS:
                why = f"unknown stream format {fmt!r}"
        if why is not None or not isinstance(url, str):
            why = why or "the command names no stream"
            self._event("live-refused", why, fields | {"reason": why})
            return
        if self._session is not None:
            self._handle(self._session, policy.Stopped(f"replaced by {command.id}"))
        self._sessions += 1
        number = self._sessions
        receiver = self._receiver_factory(
            url, fmt, lambda signal: self._deliver(LiveSignalled(number, signal))
        )
        now_mono, now = self._clock.monotonic(), self._clock.now()
        expires_at = now_mono + (command.expires - now).total_seconds()
        settings = policy.Settings(
            self._config.hold_s, self._config.retry_s, self._config.retry_max_s,
            self._config.stable_s,
        )  # fmt: skip
        machine = policy.LiveSession(settings, expires_at, self._jitter)
        session = _Session(number, command, url, machine, receiver)
        self._session = session
        self._apply(session, machine.start(now_mono))
        if machine.state is policy.State.IDLE:  # expired before it could start
            receiver.close()
            self._session = None

    def stop(self, command: Command) -> None:
        """``live_stop``: the live relay it ``references``, or whichever is on."""
        reference = command.doc.get("references")
        session = self._session
        if session is None or (reference is not None and reference != session.command.id):
            why = f"no live relay {reference} is on" if reference else "no live relay is on"
            self._event(
                "live-refused", why,
                {"id": command.id, "url": None, "references": reference, "reason": why},
            )  # fmt: skip
            return
        self._handle(session, policy.Stopped(f"stopped by {command.id}"))

    def stop_all(self, reason: str) -> None:
        """A ``stop`` command: everything is cut short, the live relay too (and stays off)."""
        if self._session is not None:
            self._handle(self._session, policy.Stopped(reason, complete=False))

    def volume_changed(self) -> None:
        """``set_volume``: a live stretch on air follows at once (its view reads the gain per
        chunk); files take it from their next play."""
        session = self._session
        if session is not None:
            session.receiver.gain = self._gain(session)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._session is not None:
            self._session.receiver.close()
            self._session = None

    # what arrives from the receiver, the timer and the programme ---------------------------

    def on_signal(self, message: LiveSignalled) -> None:
        session = self._session
        signal = message.signal
        if session is None or message.session != session.number:
            return
        if signal.generation != session.generation:
            return  # a connection given up already
        event: policy.Event
        if signal.kind == "flowing":
            event = policy.Flowing(signal.since)
        elif signal.kind == "stalled":
            event = policy.Stalled(signal.since)
        elif signal.kind == "silent":
            event = policy.Silent(signal.since)
        else:
            session.generation = 0
            event = policy.Ended(signal.detail or "the stream ended")
        self._handle(session, event)

    def on_wake(self, message: LiveWake) -> None:
        session = self._session
        if session is not None and message.session == session.number:
            self._handle(session, policy.Tick())

    def play_item(self, media: MediaRef) -> PlayItem:
        """The PlayItem of a live stretch: the current session's stream."""
        session = self._session
        if session is None or session.url != media.url:
            return PlayItem(media.name, media.sha256, Path("live"), source=lambda g: _Nothing())
        return PlayItem(media.name, media.sha256, Path("live"), source=session.receiver.source)

    def finished(self, done: Outcome) -> Outcome:
        """A live stretch's as-run, as the live relay knows it ended (the programme only saw a
        play cut); a stretch that ended without being asked to ends the session too."""
        occurrence = done.occurrence
        if not policy.is_live(occurrence.slot_id):
            return done
        session = self._session
        current = session is not None and session.stretch is not None and (
            session.stretch.key == occurrence.key
        )  # fmt: skip
        ending = self._endings.pop(occurrence.key, None)
        if ending is not None:
            outcome, reason = ending
            if done.outcome == "skipped":
                outcome = "skipped"  # it was waiting behind an emergency: never sounded
        elif done.reason == "slot end reached":
            outcome, reason = "complete", "its expiry was reached"
            if current and session is not None:
                session.stretch = None
                self._handle(session, policy.Expired())
        else:
            outcome, reason = done.outcome, (done.reason or done.outcome)
            if current and session is not None:
                session.stretch = None
                self._handle(session, policy.Stopped(f"ended on air: {reason}", complete=False))
        return replace(done, outcome=outcome, reason=reason[:200])

    # carrying out the machine's word -------------------------------------------------------

    def _handle(self, session: _Session, event: policy.Event) -> None:
        self._apply(session, session.machine.handle(event, self._clock.monotonic()))

    def _apply(self, session: _Session, actions: list[policy.Action]) -> None:
        for action in actions:
            match action:
                case policy.Connect():
                    session.receiver.gain = self._gain(session)
                    session.generation = session.receiver.connect()
                case policy.Disconnect():
                    session.generation = 0
                    session.receiver.disconnect()
                case policy.OnAir():
                    session.stretch = self._stretch(session)
                    self._programme.cut_in(session.stretch)
                case policy.OffAir(outcome=outcome, reason=reason):
                    self._end_stretch(session, outcome, reason)
                case policy.Finish(outcome=outcome, reason=reason):
                    self._end_stretch(session, outcome, reason)
                    session.generation = 0
                    session.receiver.close()
                    if self._session is session:
                        self._session = None
                case policy.Report(code=code, reason=reason):
                    self._report(session, code, reason)
        self._wake_at(session)

    def _end_stretch(self, session: _Session, outcome: str, reason: str) -> None:
        stretch, session.stretch = session.stretch, None
        if stretch is None:
            return
        self._endings[stretch.key] = (outcome, reason)
        if not self._programme.end(stretch.key, reason):
            self._endings.pop(stretch.key, None)  # already reported

    def _stretch(self, session: _Session) -> Occurrence:
        command = session.command
        doc = command.doc
        media = MediaRef(
            name=session.url, url=session.url, sha256=policy.UNVERIFIED_SHA256, bytes=0,
            duration_s=None, title=None, category="live",
        )  # fmt: skip
        return Occurrence(
            stream=(command.issuer, command.target),
            playlist_version=0,
            slot_id=policy.slot_id(command.id),
            start=self._clock.now(),
            end=command.expires,
            items=(media,),
            priority=policy.priority(doc.get("priority")),
            zones=tuple(doc.get("zones", ("all",))),
            volume=int(doc["volume"]) if "volume" in doc else None,
            gap_s=0.0,
        )

    def _gain(self, session: _Session) -> float:
        stretch = session.stretch or self._stretch(session)
        return self._volume(stretch) / 100

    def _report(self, session: _Session, code: str, reason: str | None) -> None:
        fields: dict[str, Any] = {"id": session.command.id, "url": session.url, "reason": reason}
        if code == "live-stopped":
            fields["fallbacks"] = session.machine.fallbacks
        self._event(code, reason or _DETAILS.get(code, code), fields)

    def _wake_at(self, session: _Session) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = session.machine.deadline()
        if when is None or self._session is not session:
            return
        delay = max(0.0, when - self._clock.monotonic())
        number = session.number
        self._timer = threading.Timer(delay, lambda: self._deliver(LiveWake(number)))
        self._timer.daemon = True
        self._timer.start()

    def _receiver(
        self, url: str, fmt: str | None, on_signal: Callable[[LiveSignal], None]
    ) -> Receiver:
        config = self._config
        return LiveReceiver(
            url,
            on_signal,
            fmt=fmt,
            silence_dbfs=config.silence_db,
            stall_after_s=STALL_AFTER_S,
            silent_after_s=min(SILENT_AFTER_S, config.hold_s),
            # ffmpeg's own read timeout: a half-open connection ends by itself, at the latest
            # when the station would have given it up anyway.
            rw_timeout_s=max(2.0, config.hold_s),
            ca_file=config.ca_file,
            monotonic=self._clock.monotonic,
        )


_DETAILS = {
    "live-started": "the live relay is on air",
    "live-resumed": "the stream flowed again: back on air",
}
