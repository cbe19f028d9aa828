"""The station runtime: one thread owns the state and drains one queue.

paho, APScheduler, the media fetcher and the playback thread only put frozen messages on the
queue; ``Station.run`` takes them one at a time and decides. That is the whole concurrency
model: no locks around the station's state, because only this thread touches it.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cache import MediaCache
from agent.config import Config
from agent.core import cap, emergency, strict
from agent.core import live as live_policy
from agent.core.arbiter import closes_at, locate
from agent.core.clock import Clock
from agent.core.codes import Code
from agent.core.flood import FloodGate
from agent.core.models import Command, Keyring, MediaRef, Playlist
from agent.core.planner import Occurrence, occurrences
from agent.core.release import Release
from agent.core.reports import (
    AsRun,
    Health,
    birth_body,
    event_body,
    heartbeat_body,
    parse_receipt,
    signed_asrun,
    to_bytes,
)
from agent.core.timefmt import format_rfc3339
from agent.core.verify import Accepted, Rejection, Verdict
from agent.envelope_bound import EnvelopeBound
from agent.ingest import Ingestor
from agent.link import Connected, Disconnected, Link, Received
from agent.live import LiveRelay, LiveSignalled, LiveWake
from agent.loudness import LoudnessStore, db_to_gain
from agent.media_workers import MediaDone, MediaWorkers, Quarantined
from agent.outbox import DroppedRange, Outbox, OutboxError, Report
from agent.player import Player, PlayItem, PlayResult, RelayTestResult
from agent.programme import Outcome, Programme
from agent.quota import touch
from agent.scheduler import MISFIRE_GRACE_S, Timers
from agent.trust_store import StoreError
from agent.updater import ArtifactFetched, Updater
from agent.version import running_version
from hal.files import atomic_write
from hal.inputs import InputChange, InputError, Inputs

log = logging.getLogger("loa.station")
AGENT_VERSION = running_version()
HORIZON = timedelta(days=2)
CLOCK_JUMP_S = 2.0
MAX_HELD = 64
# Rejections that a later keyring can cure: the envelope is held and checked again after one.
WAIT_FOR_KEYRING = frozenset(
    {Code.VERSION_GAP, Code.UNKNOWN_KEY, Code.THRESHOLD_NOT_MET, Code.OUT_OF_SCOPE}
)
# Kinds a trusted clock can cure (section 9): one refused ``clock-untrusted`` (a clock set back
# below the floor, a boot at 1970) is held and checked again once the clock is trusted, not
# left until a reconnect delivers it again. Commands are not: one acted on late is wrong.
WAIT_FOR_CLOCK = frozenset({"playlist", "keyring", "release"})


def _waits_for_clock(verdict: Verdict) -> bool:
    return (
        isinstance(verdict, Rejection)
        and verdict.code == Code.CLOCK_UNTRUSTED
        and verdict.kind in WAIT_FOR_CLOCK
    )


# A relay test holds each zone on this long: the relay settles, the inputs' debounce passes.
RELAY_TEST_DWELL_S = 0.5


@dataclass(frozen=True, slots=True)
class Fire:
    key: str


@dataclass(frozen=True, slots=True)
class PlayDone:
    result: PlayResult


@dataclass(frozen=True, slots=True)
class Tick:
    what: str  # heartbeat | replan | watch | integrity | alive


@dataclass(frozen=True, slots=True)
class Stop:
    reason: str
    status: int = 0  # the process's exit status: 75 asks systemd for the boot guard (updates)


@dataclass(frozen=True, slots=True)
class ItemStarted:
    key: str  # the occurrence
    index: int  # which of its items is now sounding


@dataclass(frozen=True, slots=True)
class Silent:
    key: str  # the occurrence that should be sounding but is not


@dataclass(frozen=True, slots=True)
class Deferred:
    """Work of this thread's own that waits behind what is queued now: a command's verdict
    event after the emergency it carried has cut in (and, in the fan-out benchmark's shared
    runtime, after the other stations' verdicts, as on their own CPUs in the field)."""

    work: Callable[[], None]


@dataclass(frozen=True, slots=True)
class RelayTested:
    command_id: str
    result: RelayTestResult


INPUT_EVENTS = {  # input name -> (event code when lost, when back)
    "mains": ("mains-lost", "mains-restored"),
    "amp_power": ("amp-power-lost", "amp-power-restored"),
    "speaker_line": ("speaker-line-fault", "speaker-line-restored"),
}


Message = (
    Received
    | Connected
    | Disconnected
    | Fire
    | PlayDone
    | MediaDone
    | Tick
    | Stop
    | InputChange
    | Silent
    | Quarantined
    | ItemStarted
    | LiveSignalled
    | LiveWake
    | RelayTested
    | Deferred
    | ArtifactFetched
)


@dataclass
class Station:
    config: Config
    clock: Clock
    ingestor: Ingestor
    outbox: Outbox
    cache: MediaCache
    player_factory: Callable[[Callable[[PlayResult], None], Callable[[str], None]], Player]
    signing_key: Ed25519PrivateKey
    link_factory: Callable[[Callable[[Any], None]], Link] | None = None
    inputs_factory: Callable[[Callable[[InputChange], None]], Inputs] | None = None
    loudness: LoudnessStore | None = None
    inbox: queue.Queue[Message] = field(default_factory=queue.Queue)
    # state owned by the runtime thread
    playlists: dict[tuple[str, str], Playlist] = field(default_factory=dict)
    session: int = 0
    # Report id -> monotonic time it was last sent; unacknowledged ones are sent again later.
    _published: dict[int, float] = field(default_factory=dict)
    # Connected without a session (a broker that restarted, or lost us): its collectors may
    # subscribe after what we sent first, which it then dropped. Until a receipt finds nothing
    # left behind, each receipt sends again what the previous one (monotonic time of its
    # arrival) should have covered: receipts prove a collector listens.
    _fresh_session: bool = False
    _last_receipt: float | None = None
    _clock_was_trusted: bool | None = None  # at the last watch tick
    # The restart's catch-up, put off while the clock is behind the last alive mark.
    _catch_up_after: datetime | None = None
    _data_version: int = -1
    _started_mono: float = 0.0
    _clock_offset: float | None = None
    _held: dict[str, bytes] = field(default_factory=dict)  # topic -> retained envelope
    _retry_unwritable: bool = False  # an envelope is held because the state was unwritable
    # EnvelopeBound.waited at the last resync after a flood, and at the last watch tick.
    _flood_waited_seen: int = 0
    _flood_waited_last: int = 0
    _inputs_reported: dict[str, bool] = field(default_factory=dict)  # input -> last said
    # Emergencies whose clip is being fetched: sha256 -> their occurrences.
    _awaiting_clip: dict[str, list[Occurrence]] = field(default_factory=dict)
    # CAP identifier -> command id of the emergencies heard, so a CAP Cancel/Update finds them.
    _cap_ids: dict[str, str] = field(default_factory=dict)
    flood: FloodGate = field(default_factory=FloodGate)
    volume: int = 100  # the station's volume (set_volume), read from its state at start
    # Hooks for whatever supervises the process (systemd, wired in agent/app.py); the station
    # knows nothing of it. on_ready: start-up is done and messages are about to be taken.
    # on_alive(status): every alive_every_s, called by this thread as it handles the tick, so a
    # stuck handler silences it; status is "idle" or "on air: <slot>". on_stopping: shutdown.
    on_ready: Callable[[], None] | None = None
    on_alive: Callable[[str], None] | None = None
    alive_every_s: float | None = None
    on_stopping: Callable[[], None] | None = None
    exit_status: int = 0  # what `loa-agent run` exits with once `run` returns

    def __post_init__(self) -> None:
        reports = self.config.reports
        self.flood = FloodGate(reports.rejection_events_per_minute, reports.rejection_window_s)
        self.timers = Timers(lambda key: self.inbox.put(Fire(key)))
        self.player = self.player_factory(
            lambda result: self.inbox.put(PlayDone(result)),
            lambda key: self.inbox.put(Silent(key)),
        )
        self.player.on_item = lambda key, index: self.inbox.put(ItemStarted(key, index))
        self.player.on_sounding = self._mark_sounding
        # The sound card failing or back (a playback thread, or the heartbeat's probe): the
        # event is written by this thread, in turn.
        self.player.on_device = lambda fault: self.inbox.put(
            Deferred(lambda: self._on_device(fault))
        )
        self.inputs = self.inputs_factory(self.inbox.put) if self.inputs_factory else None
        self.programme = Programme(
            self.clock,
            self.player,
            media_ready=lambda m: self.cache.has(m.sha256, m.bytes),
            media_path=self._play_item,
            volume=self._volume,
            report=self._asrun,
            resume_window=timedelta(seconds=self.config.schedule.resume_window_s),
            fallback=self.config.audio.fallback,
        )
        # At most 64 envelopes (8 MiB) from the link wait in the inbox; paho waits for room
        # (agent/envelope_bound.py): a flood can neither grow the agent's memory nor hold a
        # slot's timer back.
        self.envelopes = EnvelopeBound()
        self.link = self.link_factory(self._from_link) if self.link_factory else None
        self.volume = self._load_volume()
        self.live = LiveRelay(
            self.config.live,
            self.clock,
            self.programme,
            self.inbox.put,
            lambda code, detail, fields: self._event("live", code, detail, fields),
            self._volume,
            default_volume=self.config.audio.default_volume,
        )
        self.media = MediaWorkers(
            self.cache,
            self.loudness,
            self.inbox.put,
            parallel=self.config.media.parallel,
            quota_bytes=int(self.config.media.quota_mb * 1024 * 1024),
            monotonic=self.clock.monotonic,
        )
        self.updater = Updater(
            self.config,
            self.clock,
            self.ingestor.version,
            report=lambda code, detail, fields: self._event("update", code, detail, fields),
            deliver=self.inbox.put,
            stop=lambda status, reason: self.stop(reason, status),
            raise_floor=lambda v: self.ingestor.store.raise_release_floor(v, self.clock.now()),
            reverify=self.ingestor.ingest,
        )

    # lifecycle -------------------------------------------------------------------------------

    def run(self) -> None:
        self._started_mono = self.clock.monotonic()
        self.player.close()  # safe-off: relays start in a known state
        self.media.start()  # clears half-written downloads and sidecars first
        self._reload_playlists()
        self._catch_up()
        self._event(
            "boot", None, f"agent {AGENT_VERSION} started", {"plan": len(self.programme.plan)}
        )
        # A missing sound card is reported now, not at the first heartbeat (5 minutes by
        # default) nor at the first slot; the heartbeat looks again while it stays bad.
        self.player.probe_device()
        self._reconcile_inputs()
        self.updater.start()
        self.timers.every("heartbeat", self.config.reports.heartbeat_s, self._tick("heartbeat"))
        self.timers.every("replan", 3600, self._tick("replan"))
        self.timers.every("watch", 5, self._tick("watch"))
        self.timers.every("integrity", 86400, self._tick("integrity"))
        if self.on_alive is not None and self.alive_every_s:
            self.timers.every("alive", self.alive_every_s, self._tick("alive"))
        self.timers.start()
        if self.link is not None:
            self._follow_clock_trust()
            self.link.start()
        if self.on_ready is not None:
            self.on_ready()
        self.updater.ready()
        try:
            while True:
                message = self.inbox.get()
                if isinstance(message, Stop):
                    log.info("stopping: %s", message.reason)
                    self.exit_status = message.status
                    self._run_deferred()
                    break
                self._handle(message)
        finally:
            self._shutdown()

    def stop(self, reason: str, status: int = 0) -> None:
        self.inbox.put(Stop(reason, status))

    def _run_deferred(self) -> None:
        """Reports already promised are written before the station stops."""
        while True:
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(message, Deferred):
                message.work()

    def _shutdown(self) -> None:
        self.envelopes.close()  # a paho thread waiting for room must not hold the stop
        if self.on_stopping is not None:
            self.on_stopping()
        self.timers.stop()
        self.live.close()
        self.player.close()
        if self.inputs is not None:
            self.inputs.close()
        self.media.stop()
        if self.link is not None:
            offline = {
                "online": False,
                "station": self.config.station.path,
                "session": self.session,
            }
            self.link.stop(to_bytes(offline))

    def _tick(self, what: str) -> Callable[[], None]:
        return lambda: self.inbox.put(Tick(what))

    def _from_link(self, event: Any) -> None:
        """paho's thread: an envelope waits for room in the inbox (``EnvelopeBound``)."""
        if isinstance(event, Received) and not self.envelopes.admit(len(event.payload)):
            return  # the station is stopping
        self.inbox.put(event)

    # dispatch --------------------------------------------------------------------------------

    def _handle(self, message: Message) -> None:
        match message:
            case Received():
                try:
                    self._on_received(message)
                finally:
                    self.envelopes.done(len(message.payload))
            case Connected():
                self._fresh_session, self._last_receipt = not message.session_present, None
                self._on_connected()
            case Disconnected():
                log.info("link down: %s", message.reason)
            case Fire():
                self.programme.fire(message.key)
            case PlayDone():
                self.programme.done(message.result)
            case MediaDone():
                self._on_media_done(message)
            case Quarantined():
                why = "cached file no longer matches its hash: quarantined, fetched again"
                for sha in message.sha256s:
                    self._event("media", "media-corrupt", why, {"sha256": sha})
                self._fetch_missing()
            case ItemStarted():
                self._on_item_started(message)
            case LiveSignalled():
                self.live.on_signal(message)
            case LiveWake():
                self.live.on_wake(message)
            case RelayTested():
                self._on_relay_tested(message)
            case Deferred():
                message.work()
            case ArtifactFetched():
                self.updater.on_fetched(message)
            case Tick(what="integrity"):
                self.media.check_integrity()
            case Tick(what="alive"):
                if self.on_alive is not None:
                    self.on_alive(self._status_line())
            case InputChange():
                self._on_input(message)
            case Silent():
                playing = self.programme.playing
                slot = playing.slot_id if playing else None
                self._event("hw", "output-silent", "the input channel hears nothing while on air",
                            {"slot": slot, "key": message.key})  # fmt: skip
            case Tick(what="heartbeat"):
                self.player.probe_device()  # only while the card's state is unknown or bad
                if self._catch_up_after is None:  # never lowered by a clock still at 1970
                    self.outbox.set_alive(self.clock.now())
                self._enforce_outbox_cap()
                self._heartbeat()
                self._flush()
                self._fetch_missing()
            case Tick(what="replan"):
                self._replan()
            case Tick(what="watch"):
                if self._retry_unwritable:  # held by a full disk: room may be back
                    self._retry_unwritable = False
                    self._retry_held()
                if self.ingestor.store.unwritten:  # a command that acted on a full disk
                    self.ingestor.store.write_kept()
                if self.ingestor.store.data_version() != self._data_version:
                    self._reload_playlists()  # `loa-agent ingest` changed the state
                self._check_clock_jump()
                if self._catch_up_after is not None and self.clock.now() >= self._catch_up_after:
                    self._catch_up()  # the clock has come right: what was missed can be seen
                self._summarise_floods()
                self._resync_after_flood()
                self._reconcile_inputs()
                self._follow_clock_trust()
                self._retry_emergency_clips()
                self.updater.on_watch(self._busy(), self.programme.plan.values())

    def _on_received(self, message: Received) -> None:
        station = self.config.station
        if not message.payload:
            # An empty retained message is how a topic is cleared (a stream withdrawn, a test
            # cleaning up); a persistent session may deliver it later. It is not an envelope.
            return
        if message.topic == f"{station.prefix}/ack":
            self._on_ack(message.payload)
            return
        try:
            verdict = self.ingestor.ingest(message.payload, message.topic)
        except StoreError as exc:
            self._unwritable(message.topic, message.payload, exc)
            return
        if isinstance(verdict, Accepted) and isinstance(verdict.message, Command):
            # The loudspeaker first, the paperwork after: an emergency cuts in before its
            # verdict event is written (an outbox commit, an fsync on an SD card).
            self._on_command(verdict, verdict.message)
            topic = message.topic
            self.inbox.put(Deferred(lambda: self._report_verdict(topic, verdict)))
            return
        self._report_verdict(message.topic, verdict)
        if isinstance(verdict, Rejection):
            if (message.retained and verdict.code in WAIT_FOR_KEYRING) or _waits_for_clock(verdict):
                self._hold(message.topic, message.payload)
            return
        if isinstance(verdict.message, Keyring) and not verdict.noop:
            self._retry_held()
        if isinstance(verdict.message, Playlist) and not verdict.noop:
            self._reload_playlists()
        if isinstance(verdict.message, Release):
            self.updater.on_release(verdict.message, message.payload, verdict.noop)

    def _busy(self) -> bool:
        """Whether anything sounds or is about to (the update window stays shut meanwhile)."""
        return (
            self.player.busy
            or self.programme.on_air is not None
            or bool(self.programme.segments)
            or self.live.active
            or bool(self._awaiting_clip)
        )

    def _verify(self, topic: str, payload: bytes) -> Verdict | None:
        """One envelope through the trust core, and the event that says what became of it
        (None: the state could not be written, the envelope is held)."""
        try:
            verdict = self.ingestor.ingest(payload, topic)
        except StoreError as exc:
            self._unwritable(topic, payload, exc)
            return None
        self._report_verdict(topic, verdict)
        return verdict

    def _unwritable(self, topic: str, payload: bytes, exc: StoreError) -> None:
        """The state database refused the write (a full disk): nothing was accepted (rolled
        back; the store's snapshot did not move) and the playlists in force play on. It raised
        out of the runtime and stopped the agent (tests/e2e/test_fault_disk.py). Said as an
        event; the envelope is held and tried again at every watch tick (held whether or not
        it came retained: one delivered live is not delivered again before a reconnect)."""
        if self.flood.admit("state-unwritable", self.clock.monotonic()):
            self._event("envelope", "state-unwritable", str(exc), {"topic": topic})
        self._hold(topic, payload)
        self._retry_unwritable = True

    def _report_verdict(self, topic: str, verdict: Verdict) -> None:
        fields = {"topic": topic}
        # Rejections and repeats of what is held already are what a flood is made of: only the
        # first few per code and minute are reported one by one (section 7), the rest counted.
        if isinstance(verdict, Rejection):
            gate_code = str(verdict.code)
        else:
            gate_code = "accepted-noop" if verdict.noop else ""
        if gate_code and not self.flood.admit(gate_code, self.clock.monotonic()):
            return
        if isinstance(verdict, Rejection):
            fields["payload_kind"] = verdict.kind or "unknown"
            self._event("envelope", str(verdict.code), verdict.detail, fields)
        else:
            fields |= {
                "payload_kind": verdict.kind,
                "issuer": verdict.issuer,
                "label": verdict.label,
            }
            self._event("envelope", "accepted", verdict.line(), fields)

    def _follow_clock_trust(self) -> None:
        """The time beacon only while the clock is untrusted (section 9): a trusted station
        raises its floor from its own clock, and a beacon a minute is most of a day's bytes."""
        trusted = self.ingestor.trust()[0]
        if trusted and self._clock_was_trusted is False and self._held:
            self._retry_held()  # what came while the clock was untrusted (WAIT_FOR_CLOCK)
        self._clock_was_trusted = trusted
        if self.link is not None:
            always = self.config.broker.time_beacons == "always"
            self.link.set_want_time(always or not trusted)
            self.link.set_clock_trusted(trusted)

    def _resync_after_flood(self) -> None:
        """Once a flood is over (the link waited for room in the inbox, and no longer does),
        take the retained state again: the broker drops from a full queue whatever came behind
        the flood, a real playlist too (tests/e2e/test_attack_flood.py, long mode)."""
        waited = self.envelopes.waited
        if waited != self._flood_waited_seen and waited == self._flood_waited_last:
            self._flood_waited_seen = waited
            if self.link is not None:
                log.warning("an envelope flood is over: taking the retained state again")
                self.link.resync()
        self._flood_waited_last = waited

    def _summarise_floods(self) -> None:
        for held in self.flood.due(self.clock.monotonic()):
            self._event(
                "envelope",
                "rejections-suppressed",
                f"{held.count} more '{held.code}' in {held.window_s:.0f} s, counted, not sent "
                "one by one",
                {"rejected_code": held.code, "count": held.count, "window_s": held.window_s},
            )

    def _hold(self, topic: str, payload: bytes) -> None:
        """Retained messages arrive in no particular order after a reconnect: a keyring ahead of
        ours, or a playlist signed by a key only the next keyring brings, waits here until a
        keyring is applied (section 4: walk the chain), then goes through the checks again."""
        if topic in self._held or len(self._held) < MAX_HELD:
            self._held[topic] = payload

    def _retry_held(self) -> None:
        def order(topic: str) -> tuple[int, int]:
            # Keyrings first, in version order; then everything else.
            version = topic.rsplit("/", 1)[-1]
            is_keyring = "/keyring/" in topic and version.isdigit()
            return (0, int(version)) if is_keyring else (1, 0)

        held, self._held = self._held, {}
        for topic in sorted(held, key=order):
            verdict = self._verify(topic, held[topic])
            if isinstance(verdict, Rejection) and (
                verdict.code in WAIT_FOR_KEYRING or _waits_for_clock(verdict)
            ):
                self._held[topic] = held[topic]
            elif isinstance(verdict, Accepted) and isinstance(verdict.message, Playlist):
                self._reload_playlists()
            elif isinstance(verdict, Accepted) and isinstance(verdict.message, Release):
                self.updater.on_release(verdict.message, held[topic], verdict.noop)

    def _on_command(self, verdict: Accepted, command: Command) -> None:
        if command.action == "stop":
            self.live.stop_all(f"stopped by command {command.id}")  # or it would come back
            self.programme.stop_all(f"stopped by command {command.id}")
        elif command.action in ("live_start", "live_stop", "set_volume", "relay_test"):
            self._on_station_command(command)
        elif command.action == "resync":
            self._on_connected(resync=True)
        elif command.action == "emergency":
            self._on_emergency(command)
        elif command.action == "cancel":
            self._cancel(command.doc.get("references"), command.id)
        else:
            # An action this version does not know (a newer schema): accepting the envelope
            # without acting would be a lie, so the event says so.
            self._event(
                "command", "unsupported", f"{command.action} is not implemented yet",
                {"id": command.id},
            )  # fmt: skip

    # emergencies ------------------------------------------------------------------------------

    def _on_emergency(self, command: Command) -> None:
        """Section 6: CAP decides whether it sounds; the clip is verified before it does
        (cached ahead, or fetched whole now, ahead of every other download)."""
        fields: dict[str, Any] = {"id": command.id}
        try:
            decision = cap.decide(
                command.doc, command.expires, sound_tests=self.config.emergency.sound_tests
            )
        except cap.CapError as exc:
            self._event("emergency", "emergency-refused", f"CAP: {exc}", fields)
            return
        fields |= {"cap_status": decision.status, "cap_msg_type": decision.msg_type,
                   "headline": decision.headline}  # fmt: skip
        for earlier in decision.cancels:
            self._cancel(self._cap_ids.get(earlier, earlier), command.id)
        if decision.identifier is not None and len(self._cap_ids) < MAX_HELD * 16:
            self._cap_ids[decision.identifier] = command.id
        if decision.action == "cancel":
            return
        if decision.action == "silent":
            self._event("emergency", "emergency-silent", decision.reason or "silent", fields)
            return
        now = self.clock.now()
        end = emergency.ends_at(command, decision.expires, now, self.ingestor.trust()[0])
        if end <= now:
            self._event("emergency", "expired", "its expiry has passed", fields)
            return
        try:
            media = emergency.clip(command)
        except (KeyError, ValueError, TypeError) as exc:
            self._event("emergency", "emergency-refused", f"media: {exc}", fields)
            return
        em = self.config.emergency
        defaults = emergency.EmergencyDefaults(em.volume, em.repeat, em.gap_s)
        occurrence = emergency.occurrence(command, media, end, now, defaults)
        if self.cache.has(media.sha256, media.bytes):
            self.programme.cut_in(occurrence)
            return
        self._awaiting_clip.setdefault(media.sha256, []).append(occurrence)
        self._event("emergency", "emergency-fetching", "fetching its clip before it sounds",
                    fields | {"sha256": media.sha256, "url": media.url})  # fmt: skip
        self.media.fetch_now(media)

    def _emergency_clip_done(self, done: MediaDone) -> None:
        """The clip came (it sounds now), or its fetch failed: while the emergency is valid the
        fetch is tried again (a 503 from a server a thousand stations hit at once must not
        silence the ones that got it), after the media workers' backoff."""
        valid = self._still_valid(self._awaiting_clip.pop(done.media.sha256, []))
        if not valid:
            return
        if done.error is None:
            for occurrence in valid:
                self.programme.cut_in(occurrence)
            return
        self._awaiting_clip[done.media.sha256] = valid
        detail = f"{done.code}: {done.error}"[:300]
        for occurrence in valid:
            fields = {"id": emergency.command_id(occurrence.slot_id), "url": done.media.url}
            self._event("emergency", "emergency-fetch-retry", detail, fields)

    def _still_valid(self, waiting: list[Occurrence]) -> list[Occurrence]:
        """Those not expired; the others get their as-run (failed) now."""
        now = self.clock.now()
        valid = [o for o in waiting if o.end is not None and now < o.end]
        for occurrence in waiting:
            if occurrence not in valid:
                reason = "expired before its clip could be fetched"
                self._asrun(Outcome(occurrence, "failed", reason))
        return valid

    def _retry_emergency_clips(self) -> None:
        """Fetch again what waiting emergencies need (the workers' backoff decides when);
        give up on those whose expiry has passed."""
        for sha, waiting in list(self._awaiting_clip.items()):
            valid = self._still_valid(waiting)
            if not valid:
                del self._awaiting_clip[sha]
                continue
            self._awaiting_clip[sha] = valid
            self.media.fetch_missing([(-1.0, valid[0].items[0])])

    def _cancel(self, reference: object, by: str) -> None:
        if not isinstance(reference, str):
            self._event("emergency", "cancel-unmatched", "cancel names no command", {"id": by})
            return
        slot = emergency.slot_id(reference)
        reason = f"cancelled by {by}"
        for sha, waiting in list(self._awaiting_clip.items()):
            kept = [o for o in waiting if o.slot_id != slot]
            for occurrence in waiting:
                if occurrence.slot_id == slot:
                    self._asrun(Outcome(occurrence, "skipped", reason))
            if len(kept) != len(waiting):
                self._awaiting_clip[sha] = kept
                return
        if not self.programme.cancel(slot, reason):
            self._event("emergency", "cancel-unmatched", f"no emergency {reference} is on",
                        {"id": by, "references": reference})  # fmt: skip

    def _on_item_started(self, started: ItemStarted) -> None:
        occurrence = self.programme.plan.get(started.key)
        if occurrence is None:
            return
        on_air = (occurrence.key, self.clock.now())
        if not emergency.is_emergency(occurrence.slot_id):
            try:
                self.outbox.mark_on_air(*on_air)
            except sqlite3.Error as exc:
                log.error("cannot record %s on air: %s", occurrence.key, exc)
            return
        first = started.index == 0
        self._event(
            "emergency",
            "emergency-started" if first else "emergency-repeated",
            f"repetition {started.index + 1} of {len(occurrence.items)} sounding",
            {"id": emergency.command_id(occurrence.slot_id), "repetition": started.index + 1,
             "of": len(occurrence.items), "volume": occurrence.volume,
             "zones": list(occurrence.zones)},
            on_air=on_air,
        )  # fmt: skip

    def _mark_sounding(self, key: str) -> None:
        """On the playback thread, just before a play's first sample (``Player.on_sounding``):
        its on-air mark, committed through a connection of that thread's own (the runtime's
        Outbox belongs to the runtime thread). The runtime's own mark (``ItemStarted``) comes
        after the sample: killed in between, the restart found no mark and reported 'missed'
        what had sounded (tests/e2e/test_crash_points.py, play-started). A failure here only
        loses the early mark; the runtime still makes its own."""
        try:
            outbox = Outbox(self.config.paths.outbox)
        except OutboxError as exc:
            log.error("cannot record %s on air before it sounds: %s", key, exc)
            return
        try:
            outbox.mark_on_air(key, self.clock.now())
        except sqlite3.Error as exc:
            log.error("cannot record %s on air before it sounds: %s", key, exc)
        finally:
            outbox.close()

    # live relay and station commands (issue 9) -------------------------------------------------

    def _on_station_command(self, command: Command) -> None:
        if command.action == "live_start":
            keyring = self.ingestor.store.snapshot().keyring
            self.live.start(command, keyring.live_hosts if keyring else ())
        elif command.action == "live_stop":
            self.live.stop(command)
        elif command.action == "set_volume":
            self._set_volume(command)
        else:
            self._relay_test(command)

    def _volume_path(self) -> Path:
        return self.config.paths.state / "volume.json"

    def _load_volume(self) -> int:
        """The volume the last `set_volume` left, else the configured one."""
        try:
            doc = json.loads(self._volume_path().read_bytes())
            volume = doc["volume"]
        except FileNotFoundError:
            return self.config.audio.station_volume
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("unreadable %s, using the configured volume: %s", self._volume_path(), exc)
            return self.config.audio.station_volume
        if isinstance(volume, int) and not isinstance(volume, bool) and 0 <= volume <= 100:
            return volume
        return self.config.audio.station_volume

    def _set_volume(self, command: Command) -> None:
        """From now on: the next item that starts plays at it, a live stretch on air follows
        at once; kept in the station's state so a restart keeps it."""
        previous, self.volume = self.volume, int(command.doc["volume"])
        record = {"volume": self.volume, "command": command.id,
                  "set_at": format_rfc3339(self.clock.now())}  # fmt: skip
        persisted = True
        try:
            atomic_write(self._volume_path(), json.dumps(record).encode())
        except OSError as exc:
            log.error("volume %d not persisted: %s", self.volume, exc)
            persisted = False
        self.live.volume_changed()
        self._event(
            "volume", "volume-set", f"station volume {previous} -> {self.volume}",
            {"id": command.id, "volume": self.volume, "previous": previous,
             "persisted": persisted},
        )  # fmt: skip

    def _relay_test(self, command: Command) -> None:
        """Section 6 ladder: a test ranks 0, below everything, so it never interrupts anything
        and is refused while anything is on air, waits to resume or finishes its hold time;
        a slot or emergency that starts during the test ends it (reported interrupted)."""
        fields: dict[str, Any] = {"id": command.id}
        playing = self.programme.playing
        blocker = None
        if playing is not None and self.player.busy:
            blocker = f"{playing.slot_id} is on air"
        elif self.live.active:
            blocker = "a live relay is on (waiting for its stream)"
        elif self.programme.segments:
            blocker = f"{next(iter(self.programme.segments.values())).occurrence.slot_id} waits"
        elif self.player.busy:
            blocker = "the relays are busy (a play's hold time, or a test already running)"
        configured = list(self.config.zones)
        asked = list(command.doc.get("zones", ["all"]))
        zones = configured if "all" in asked else asked
        unknown = [z for z in zones if z not in configured]
        if blocker is None and unknown:
            blocker = f"unknown zones: {', '.join(unknown)}"
        if blocker is not None:
            self._event("relay-test", "relay-test-refused", f"relay test refused: {blocker}",
                        fields | {"reason": blocker})  # fmt: skip
            return
        self.player.relay_test(
            tuple(zones),
            dwell_s=RELAY_TEST_DWELL_S,
            read_inputs=self._read_inputs,
            on_result=lambda result: self.inbox.put(RelayTested(command.id, result)),
        )

    def _read_inputs(self) -> dict[str, bool]:
        """The health inputs now (gpiozero reads only: also called on a relay test's thread)."""
        if self.inputs is None:
            return {}
        try:
            return self.inputs.states()
        except InputError as exc:
            log.error("health inputs unreadable: %s", exc)
            return {}

    def _on_relay_tested(self, tested: RelayTested) -> None:
        result = tested.result
        zones = [
            {"zone": c.zone, "ok": c.ok, "on": c.on, "off": c.off, "others_off": c.others_off,
             "inputs": dict(c.inputs)}
            for c in result.zones
        ]  # fmt: skip
        summary = ", ".join(f"{c.zone} {'ok' if c.ok else 'FAILED'}" for c in result.zones)
        detail = result.error or result.interrupted or summary or "no zone relays configured"
        self._event(
            "relay-test", "relay-test", f"relay test: {detail}",
            {"id": tested.command_id, "ok": result.ok, "amp": result.amp, "zones": zones,
             "inputs": dict(result.inputs_before), "interrupted": result.interrupted,
             "error": result.error},
        )  # fmt: skip

    def _on_ack(self, payload: bytes) -> None:
        try:
            # ``true`` is not 1, nor -1 a watermark: the outbox deletes on a receipt's strength.
            watermarks = parse_receipt(payload)
        except ValueError as exc:
            log.warning("receipt ignored: %s", exc)
            return
        self.outbox.acknowledge(watermarks)
        self.updater.on_receipt(watermarks)
        pending = self.outbox.pending_ids()
        self._published = {i: t for i, t in self._published.items() if i in pending}
        if self._fresh_session:
            self._resend_left_behind()
        # A receipt makes room: a long backlog drains a batch per receipt, not per heartbeat.
        self._flush()

    def _on_connected(self, resync: bool = False) -> None:
        if not resync:
            self.session = self.outbox.next_session()
        if self.link is None:
            return
        health = self._health()
        birth = birth_body(self.config.station, self.session, self.clock.now(), health)
        self.link.publish(self.link.state_topic, to_bytes(birth), retain=True)
        self._published.clear()
        self._heartbeat()
        self._flush()

    # schedule --------------------------------------------------------------------------------

    def _reload_playlists(self) -> None:
        self._data_version = self.ingestor.store.data_version()
        playlists = {}
        for stream, body in self.ingestor.store.playlist_bodies().items():
            # Verified bytes, stored by the trust store after every check passed.
            playlists[stream] = Playlist.from_body(strict.loads(body))
        self.playlists = playlists
        self._replan()
        self._fetch_missing()

    def _replan(self) -> None:
        now = self.clock.now()
        upcoming = occurrences(
            self.playlists.values(), now - timedelta(seconds=MISFIRE_GRACE_S), now + HORIZON
        )
        overdue = now - timedelta(seconds=MISFIRE_GRACE_S)
        self.programme.replace_plan(upcoming, overdue, self.outbox.was_reported)
        # Timers fire early by the pre-roll (amplifier warm-up plus decoder start), so that the
        # first sample reaches the sound card at the scheduled instant.
        lead = self.config.audio.warmup_s + self.config.audio.decoder_lead_s
        # An occurrence already reported (at its pre-roll, before a restart) never fires again.
        unreported = [o for o in upcoming if not self.outbox.was_reported(o.key)]
        self.timers.replace_plan(unreported, now, lead_s=lead)

    def _catch_up(self) -> None:
        """After a restart: join what is on air at the right offset, report what was missed."""
        now = self.clock.now()
        alive = self.outbox.last_alive()
        if alive is not None and now < alive:
            # The clock is behind the last moment the station was known running (a Pi booted
            # at 1970): the occurrences it missed are out of its sight. The catch-up waits for
            # the clock to pass that moment (watch tick); a catch-up on the wrong clock left
            # them without an as-run for good (found by tests/e2e/test_fault_clock.py).
            self._catch_up_after = alive
            return
        self._catch_up_after = None
        oldest = now - timedelta(days=self.config.schedule.lookback_days)
        cut_short = self._on_air_when_stopped(now, oldest)
        marked = {occurrence.key for occurrence, _ in cut_short}

        def settled(key: str) -> bool:  # reported, or left to the cut-short rule below
            return key in marked or self.outbox.was_reported(key)

        down_since = max(self._open_at(self.outbox.last_alive() or now, settled), oldest)
        past = occurrences(self.playlists.values(), down_since, now)
        self.programme.catch_up(past, down_since, settled)
        window = timedelta(seconds=self.config.schedule.resume_window_s)
        for occurrence, started in cut_short:
            if (
                self.outbox.was_reported(occurrence.key)
                or occurrence.key in self.programme.segments
            ):
                continue  # joined by the catch-up above
            # Still open: joined at its offset (partial), as any occurrence on at a restart;
            # over: reported cut short. Never "missed": it was heard, in part at least.
            closes = closes_at(occurrence, window)
            position = locate(occurrence, (now - occurrence.start).total_seconds())
            still_on = position is not None and (closes is None or now < closes)
            if still_on and self.programme.on_air is None:
                self.programme.catch_up([occurrence], occurrence.start, self.outbox.was_reported)
            else:
                reason = "cut short: the station stopped while it was on air"
                self._asrun(Outcome(occurrence, "partial", reason, started_at=started))
        self.outbox.set_alive(now)

    def _open_at(self, alive: datetime, settled: Callable[[str], bool]) -> datetime:
        """Where the catch-up starts: ``alive`` (the last instant the station was known to run),
        or the start of an occurrence still open then that has no as-run and no on-air mark.
        Such an occurrence (joined late, or fired and killed before its first sample was
        marked) lived only in the dead process; a catch-up from ``alive`` would never see it,
        and it would get no as-run at all (found by tests/e2e/test_crash_points.py)."""
        window = timedelta(seconds=self.config.schedule.resume_window_s)
        earliest = alive
        for occurrence in occurrences(self.playlists.values(), alive - timedelta(days=1), alive):
            closes = closes_at(occurrence, window)
            if closes is not None and closes > alive and not settled(occurrence.key):
                earliest = min(earliest, occurrence.start)
        return earliest

    def _on_air_when_stopped(
        self, now: datetime, oldest: datetime
    ) -> list[tuple[Occurrence, datetime]]:
        """Occurrences that began to sound before the station stopped (killed, power cut) and
        got no as-run: the outbox's on-air marks, matched against the playlists in force."""
        marked = self.outbox.on_air()
        if not marked:
            return []
        since = max(oldest, min(marked.values()) - timedelta(days=1))
        found = {o.key: o for o in occurrences(self.playlists.values(), since, now)}
        # A mark whose playlist is gone cannot be reported against anything: let it go.
        self.outbox.forget_on_air([key for key in marked if key not in found])
        return [(found[key], at) for key, at in sorted(marked.items()) if key in found]

    def _check_clock_jump(self) -> None:
        """A wall clock that moved against the monotonic one (NTP step, a wrong RTC set right)
        makes every timer wrong: rebuild them from the playlists."""
        offset = self.clock.now().timestamp() - self.clock.monotonic()
        if self._clock_offset is not None and abs(offset - self._clock_offset) > CLOCK_JUMP_S:
            jump = offset - self._clock_offset
            self._event("clock", "clock-jump", f"wall clock moved {jump:+.1f} s", {"jump_s": jump})
            self._replan()
        self._clock_offset = offset

    def _on_input(self, change: InputChange) -> None:
        """A health input changed (gpiozero's thread only enqueued it): say so at once, unless
        it is what was last said (a flapping input, a simulated pin set at start). Until said
        otherwise an input is taken to be present, as on a healthy station."""
        if self._inputs_reported.get(change.name, True) == change.value:
            return
        self._inputs_reported[change.name] = change.value
        lost, back = INPUT_EVENTS.get(change.name, (f"{change.name}-off", f"{change.name}-on"))
        playing = self.programme.playing
        self._event(
            "hw" if change.name != "mains" else "power",
            back if change.value else lost,
            f"{change.name} is {'present' if change.value else 'absent'}",
            {"input": change.name, "value": change.value,
             "slot": playing.slot_id if playing else None},
        )  # fmt: skip

    def _reconcile_inputs(self) -> None:
        """Edges are for promptness, ``states()`` is the truth (hal/inputs.py): at start (an
        input already absent at boot has no edge) and at every watch tick (an edge the debounce
        dropped), what differs from what was last said is said now."""
        for name, value in self._read_inputs().items():
            self._on_input(InputChange(name, value, self.clock.monotonic()))

    def _on_device(self, fault: str | None) -> None:
        """The sound card failed (``fault`` says why) or works again: say so once a change."""
        device = self.config.audio.device
        if fault is None:
            self._event("hw", "audio-device-restored", f"audio device {device!r} works again",
                        {"device": device, "reason": None})  # fmt: skip
        else:
            self._event("hw", "audio-device-lost", fault, {"device": device, "reason": fault})

    def _volume(self, occurrence: Occurrence) -> int:
        """Slot and live volumes are percentages of the station's volume (section 5: "of the
        station's configured maximum", which `set_volume` sets); an emergency's is not: a
        station turned down for a quiet evening must still be heard when the river rises."""
        volume = (
            occurrence.volume if occurrence.volume is not None else self.config.audio.default_volume
        )
        if emergency.is_emergency(occurrence.slot_id):
            return volume
        return round(volume * self.volume / 100)

    # media -----------------------------------------------------------------------------------

    def _play_item(self, media: MediaRef) -> PlayItem:
        """A cached medium as the player takes it: its loudness correction (never waited for:
        an unmeasured file plays as it is) and whether it gets the attention chimes."""
        if media.category == "live":
            return self.live.play_item(media)  # not a file: the stream's own PCM
        audio = self.config.audio
        gain = 1.0
        if self.loudness is not None and audio.loudness_target_lufs is not None:
            correction = self.loudness.correction_db(
                media.sha256, audio.loudness_target_lufs, max_gain_db=audio.loudness_max_gain_db
            )
            gain = db_to_gain(correction)
        chime = media.category in audio.chime_categories or (
            media.category == "emergency" and self.config.emergency.chime
        )
        touch(self.cache.path_for(media.sha256))  # least recently used is evicted first
        return PlayItem(media.name, media.sha256, self.cache.path_for(media.sha256), gain, chime)

    def _fetch_missing(self) -> None:
        """Everything the next ``media.lookahead_days`` need, nearest start first; media of
        category ``emergency`` always (they must be ready before anyone knows when)."""
        keep = {m.sha256 for p in self.playlists.values() for m in p.media.values()}
        needed = self._needed(timedelta(days=self.config.media.lookahead_days))
        for sha in self.media.fetch_missing(needed, keep):
            self._event(
                "media", "evicted", "evicted to stay under the cache quota", {"sha256": sha}
            )

    def _needed(self, within: timedelta) -> list[tuple[float, MediaRef]]:
        now = self.clock.now()
        first_need: dict[str, tuple[float, MediaRef]] = {}
        for occurrence in occurrences(self.playlists.values(), now, now + within):
            due_in = (occurrence.start - now).total_seconds()
            for media in occurrence.items:
                if media.sha256 not in first_need or due_in < first_need[media.sha256][0]:
                    first_need[media.sha256] = (due_in, media)
        for playlist in self.playlists.values():
            for media in playlist.media.values():
                if media.category == "emergency":
                    first_need.setdefault(media.sha256, (0.0, media))
        return list(first_need.values())

    def _on_media_done(self, done: MediaDone) -> None:
        self.media.fetched(done)
        if done.media.sha256 in self._awaiting_clip:
            self._emergency_clip_done(done)
        fields = {"media": done.media.name, "url": done.media.url, "sha256": done.media.sha256}
        if done.error is None:
            self._event("media", "cached", f"{done.media.name} verified and cached", fields)
        else:
            self._event("media", done.code, done.error, fields)

    # reports ---------------------------------------------------------------------------------

    def _asrun(self, done: Outcome) -> None:
        done = self.live.finished(done)  # a live stretch: how the relay ended it
        occurrence, last = done.occurrence, done.last
        record = AsRun(
            slot=occurrence.slot_id,
            stream=occurrence.stream_name,
            playlist_version=occurrence.playlist_version,
            media=",".join(m.name for m in occurrence.items),
            sha256=",".join(m.sha256 for m in occurrence.items),
            scheduled_at=occurrence.start,
            started_at=done.started_at,
            ended_at=last.ended_at if last else None,
            played_s=done.played_s,
            outcome=done.outcome,
            reason=done.reason,
            zones=occurrence.zones,
            volume=self._volume(occurrence),
            relay_ok=last.relay_ok if last else None,
            amp_power_ok=self._amp_power_ok(last),
            output_level_db=last.output_level_db if last else None,
            clock_trusted=self.ingestor.trust()[0],
        )
        station, session, key = self.config.station, self.session, self.signing_key
        self._report(
            "asrun",
            lambda seq: signed_asrun(station, seq, session, record, key),
            occurrence=(occurrence.key, done.outcome),
        )
        if emergency.is_emergency(occurrence.slot_id):
            self._event(
                "emergency", "emergency-ended", f"{done.outcome}: {done.reason or 'played out'}",
                {"id": emergency.command_id(occurrence.slot_id), "outcome": done.outcome,
                 "reason": done.reason, "played_s": done.played_s},
            )  # fmt: skip

    def _amp_power_ok(self, last: PlayResult | None) -> bool | None:
        """The relay's read-back, and the amplifier's own power-good input where there is one."""
        relay = last.amp_power_ok if last else None
        if self.inputs is None or "amp_power" not in self.inputs.states():
            return relay
        sensed = self.inputs.states()["amp_power"]
        return sensed if relay is None else relay and sensed

    def _event(
        self,
        event: str,
        code: str | None,
        detail: str,
        fields: dict[str, Any] | None = None,
        *,
        on_air: tuple[str, datetime] | None = None,
    ) -> None:
        station, session, now = self.config.station, self.session, self.clock.now()
        # Every event carries the trust alerts (keyring expired, clock untrusted) while they last.
        framed = {**(fields or {}), "alerts": list(self.ingestor.trust()[1])}
        self._report(
            "event",
            lambda seq: to_bytes(
                event_body(station, seq, session, now, event, code, detail, framed)
            ),
            on_air=on_air,
        )

    def _heartbeat(self) -> None:
        if self.ingestor.trust()[0]:
            self.ingestor.store.raise_floor(self.clock.now())
        station, session, now, health = (
            self.config.station,
            self.session,
            self.clock.now(),
            self._health(),
        )
        report = self._report(
            "heartbeat", lambda seq: to_bytes(heartbeat_body(station, seq, session, now, health))
        )
        if report is not None:
            self.updater.heartbeat_sent(report.seq)

    def _report(
        self,
        kind: str,
        build: Callable[[int], bytes],
        *,
        occurrence: tuple[str, str] | None = None,
        on_air: tuple[str, datetime] | None = None,
    ) -> Report | None:
        topic = f"{self.config.station.prefix}/telemetry/{kind}"
        try:
            report = self.outbox.append(
                kind, topic, build, self.clock.now(), occurrence=occurrence, on_air=on_air
            )
        except OutboxError as exc:
            log.error("report lost to a failing outbox: %s", exc)
            return None
        if report is None:  # held in memory (disk full): stored and sent once there is room
            return None
        if self.link is not None and self.link.publish(report.topic, report.payload):
            self._published[report.id] = self.clock.monotonic()
        return report

    def _enforce_outbox_cap(self) -> None:
        """The outbox's retention policy (agent/outbox.py), and the loss reported as an event so
        the province knows which reports it will never see."""
        cap = int(self.config.reports.outbox_max_mb * 1024 * 1024)
        try:
            dropped = self.outbox.enforce_cap(cap)
        except OutboxError as exc:
            log.error("%s", exc)
            return
        for loss in dropped:
            self._report_dropped(loss, cap)
        for kind, count in self.outbox.take_unkept().items():  # held in memory, given up
            self._event("outbox", "reports-unkept",
                        f"{count} {kind} reports given up unstored: the disk stayed full",
                        {"report_kind": kind, "count": count})  # fmt: skip

    def _report_dropped(self, loss: DroppedRange, cap: int) -> None:
        self._event(
            "outbox",
            "reports-dropped",
            f"{loss.count} {loss.kind} reports (seq {loss.first_seq}..{loss.last_seq}) dropped "
            f"unsent: the outbox was over its cap of {cap} bytes",
            {"report_kind": loss.kind, "first_seq": loss.first_seq, "last_seq": loss.last_seq,
             "count": loss.count, "bytes": loss.bytes},
        )  # fmt: skip

    def _resend_left_behind(self) -> None:
        """After a connect without a session: what was sent before the previous receipt came
        and is still unreceipted was dropped (or sits behind a report that was); it goes again
        at the next flush. The first receipt may be an old one the collector still owed."""
        now, previous = self.clock.monotonic(), self._last_receipt
        self._last_receipt = now
        if previous is None:
            return
        behind = {i for i, sent in self._published.items() if sent < previous}
        self._published = {i: t for i, t in self._published.items() if i not in behind}
        self._fresh_session = bool(behind)

    def _flush(self) -> None:
        """Send what was never sent in this session, and again what stayed unacknowledged too
        long: a broker that took a report no collector was subscribed for dropped it."""
        if self.link is None:
            return
        resend_before = self.clock.monotonic() - max(10.0, 3 * self.config.reports.heartbeat_s)
        for report in self.outbox.pending():
            sent = self._published.get(report.id)
            if sent is not None and sent > resend_before:
                continue
            if self.link.publish(report.topic, report.payload):
                self._published[report.id] = self.clock.monotonic()

    def _cache_facts(self) -> dict[str, int]:
        files = [p for p in self.cache.root.iterdir() if len(p.name) == 64] if (
            self.cache.root.is_dir()
        ) else []  # fmt: skip
        missing = {
            m.sha256
            for _, m in self._needed(timedelta(hours=24))
            if not self.cache.has(m.sha256, m.bytes)
        }
        return {
            "files": len(files),
            "bytes": sum(p.stat().st_size for p in files),
            "missing_24h": len(missing),
            "fetching": len(self.media.fetching),
            "quota_bytes": self.media.quota_bytes,  # 0: no quota
        }

    def _status_line(self) -> str:
        playing = self.programme.playing
        if playing is None or not self.player.busy:
            return "idle"
        return f"on air: {playing.slot_id}"

    def _state_word(self) -> str:
        playing = self.programme.playing
        if self.player.testing and self.player.busy:
            return "test"
        if playing is None or not self.player.busy:
            return "idle"
        if live_policy.is_live(playing.slot_id):
            return "live"
        return "emergency" if emergency.is_emergency(playing.slot_id) else "scheduled"

    def _health(self) -> Health:
        state = self.ingestor.store.snapshot()
        view = self.ingestor.clock_view()
        trusted, alerts = self.ingestor.trust()
        return Health(
            uptime_s=self.clock.monotonic() - self._started_mono,
            state=self._state_word(),
            streams={f"{i}@{t}": r.version for (i, t), r in state.streams.items()},
            keyring=state.keyring.version if state.keyring else 0,
            volume=self.volume,
            agent_version=AGENT_VERSION,
            cache=self._cache_facts(),
            clock={
                "synchronised": view.synchronised,
                "trusted": trusted,
                "floor": str(state.time_floor),
            },
            link={"session": self.session, "connected": bool(self.link and self.link.connected)},
            outbox={
                **self.outbox.backlog(),
                "bytes": self.outbox.stored_bytes(),
                "cap_bytes": int(self.config.reports.outbox_max_mb * 1024 * 1024),
            },
            hw={
                "inputs": self.inputs.states() if self.inputs else None,
                "level": "measured" if self.config.capture.device else "digital",
            },
            alerts=alerts,
        )
