"""The live relay without a network: its state machine (agent/core/live.py) on a fake clock
(times are plain numbers passed in, nothing sleeps; hold 10 s, first retry 5 s doubling to 40 s,
stable 15 s), the stream watchdog's rule and the ffmpeg command (hal/live_source.py), the URL
check and the glue (agent/live.py) with fakes, and the player's and programme's hooks (a relay
test, a live stretch cut in on). Named apart from tests/integration/test_live.py: the two test
directories are not packages, and pytest cannot collect two modules of one basename."""

from __future__ import annotations

import itertools
import queue
import threading
from array import array
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.config import LiveConfig
from agent.core import live
from agent.core.live import (
    Connect,
    Disconnect,
    Ended,
    Expired,
    Finish,
    Flowing,
    LiveSession,
    OffAir,
    OnAir,
    Report,
    Settings,
    Silent,
    Stalled,
    State,
    Stopped,
    Tick,
)
from agent.core.models import Command, MediaRef
from agent.core.planner import Occurrence
from agent.live import LiveRelay, LiveSignalled, LiveWake, refusal
from agent.player import Player, PlayItem, PlayResult, RelayTestResult
from agent.programme import Outcome, Programme
from hal.live_source import LiveReceiver, LiveSignal, StreamWatch, scale_pcm
from hal.relays import GpioRelays
from tests.unit.test_player import RecordingSink, ScriptedSource, make_player, request

SETTINGS = Settings(hold_s=10, retry_s=5, retry_max_s=40, stable_s=15)
T0 = 1000.0


def session(expires_in: float = 3600, **changes: float) -> LiveSession:
    settings = Settings(**{**SETTINGS.__dict__, **changes}) if changes else SETTINGS
    return LiveSession(settings, T0 + expires_in)


def codes(actions: list[live.Action]) -> list[str]:
    return [a.code for a in actions if isinstance(a, Report)]


def on_air(started: LiveSession) -> LiveSession:
    """Started at T0 and flowing from T0 + 1."""
    started.start(T0)
    started.handle(Flowing(T0 + 1), T0 + 1)
    return started


def tick_until_deadline(s: LiveSession) -> tuple[float, list[live.Action]]:
    when = s.deadline()
    assert when is not None
    return when, s.handle(Tick(), when)


# -- allowlist and priority ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "host", "port", "allowed", "expected"),
    [
        ("https", "live.vov.vn", None, ["live.vov.vn"], True),
        ("https", "live.vov.vn", 8443, ["live.vov.vn"], True),  # a bare name: any port
        ("https", "live.vov.vn", None, ["live.vov.vn:443"], True),  # the scheme's port
        ("http", "live.vov.vn", None, ["live.vov.vn:443"], False),
        ("http", "127.0.0.1", 8000, ["127.0.0.1:8000"], True),
        ("http", "127.0.0.1", 8001, ["127.0.0.1:8000"], False),
        ("https", "evil.live.vov.vn", None, ["live.vov.vn"], False),  # no subdomains
        ("https", "vov.vn", None, ["live.vov.vn"], False),
        ("https", "live.vov.vn", None, [" LIVE.VOV.VN "], True),
        ("https", "live.vov.vn", None, [], False),
    ],
)
def test_host_allowlist(
    scheme: str, host: str, port: int | None, allowed: list[str], expected: bool
) -> None:
    assert live.host_allowed(scheme, host, port, allowed) is expected


def test_priority_stays_between_the_schedule_and_emergencies() -> None:
    assert live.priority(None) == 80
    assert live.priority(70) == 70
    assert live.priority(100) == 89  # never ties with an emergency
    assert live.priority(10) == 61  # never ties with a slot
    assert live.priority(True) == 80


def test_slot_names() -> None:
    assert live.slot_id("live-1") == "live:live-1"
    assert live.is_live("live:live-1") and not live.is_live("emergency:live-1")
    assert live.command_id("live:live-1") == "live-1"


# -- starting and stopping -------------------------------------------------------------------


def test_start_connects_and_goes_on_air_at_once() -> None:
    s = session()
    actions = s.start(T0)
    assert actions == [Connect(), OnAir(resumed=False), Report("live-started", None)]
    assert s.state is State.LIVE
    assert s.deadline() == T0 + 10  # it must deliver audio within the hold time


def test_a_stream_that_never_starts_falls_back_as_failed() -> None:
    s = session()
    s.start(T0)
    assert s.handle(Ended("Connection refused"), T0 + 0.2) == []  # no event while starting
    when, actions = tick_until_deadline(s)
    assert when == T0 + 5.2 and actions == [Connect()]  # retried within the hold time
    assert s.handle(Ended("Connection refused"), T0 + 5.3) == []
    when, actions = tick_until_deadline(s)
    assert when == T0 + 10
    off = next(a for a in actions if isinstance(a, OffAir))
    assert off.outcome == "failed" and "Connection refused" in off.reason
    assert codes(actions) == ["live-fallback"]
    assert s.state is State.FALLBACK


def test_live_stop_finishes_complete_and_a_stop_command_partial() -> None:
    s = on_air(session())
    actions = s.handle(Stopped("stopped by live-stop-1"), T0 + 30)
    assert actions == [
        Finish("complete", "stopped by live-stop-1"),
        Report("live-stopped", "stopped by live-stop-1"),
    ]
    assert s.state is State.IDLE and s.deadline() is None
    assert s.handle(Flowing(T0 + 31), T0 + 31) == []  # over is over
    cut = on_air(session()).handle(Stopped("stopped by command c-1", complete=False), T0 + 30)
    assert cut[0] == Finish("partial", "stopped by command c-1")


def test_stopped_while_not_on_air_has_no_stretch_to_end() -> None:
    s = on_air(session())
    s.handle(Ended("closed"), T0 + 20)
    tick_until_deadline(s)  # retry at 25
    s.handle(Ended("refused"), T0 + 25.1)
    tick_until_deadline(s)  # fallback at 30
    assert s.state is State.FALLBACK
    actions = s.handle(Stopped("stopped by x"), T0 + 31)
    assert actions[0] == Finish("skipped", "stopped by x")
    assert codes(actions) == ["live-stopped"]


def test_expiry_ends_it_wherever_it_is() -> None:
    s = on_air(session(expires_in=60))
    assert s.deadline() == T0 + 60
    when, actions = tick_until_deadline(s)
    assert when == T0 + 60
    assert actions[0] == Finish("complete", "its expiry was reached")
    assert on_air(session(expires_in=60)).handle(Expired(), T0 + 30)[0].outcome == "complete"  # type: ignore[union-attr]


def test_a_start_after_expiry_does_nothing() -> None:
    s = session(expires_in=-1)
    assert codes(s.start(T0)) == ["live-stopped"]
    assert s.state is State.IDLE


# -- stalls, silence and the hold time -------------------------------------------------------


def test_a_short_stall_stays_on_air() -> None:
    s = on_air(session())
    assert codes(s.handle(Stalled(T0 + 20), T0 + 21)) == ["live-stalled"]
    assert s.deadline() == T0 + 30  # hold counted from when it stalled, not when told
    assert s.handle(Flowing(T0 + 25), T0 + 25) == []
    assert s.state is State.LIVE and s.fallbacks == 0
    assert s.deadline() == T0 + 3600


def test_a_long_stall_falls_back_after_the_hold_and_drops_the_connection() -> None:
    s = on_air(session())
    s.handle(Stalled(T0 + 20), T0 + 21)
    assert s.handle(Tick(), T0 + 29.9) == []
    actions = s.handle(Tick(), T0 + 30)
    assert actions[0] == Disconnect()
    why = "the stream stalled (no data): fell back to the schedule"
    assert actions[1] == OffAir("partial", why)
    assert codes(actions) == ["live-fallback"]
    assert s.state is State.FALLBACK and s.deadline() == T0 + 35  # first retry


def test_a_dropped_connection_is_retried_inside_the_hold_time() -> None:
    s = on_air(session())
    actions = s.handle(Ended("the stream ended"), T0 + 20)
    assert codes(actions) == ["live-stalled"]
    assert s.deadline() == T0 + 25
    assert s.handle(Tick(), T0 + 25) == [Connect()]
    assert s.handle(Flowing(T0 + 26), T0 + 26) == []  # back before the hold ran out
    assert s.state is State.LIVE and s.fallbacks == 0


def test_silence_falls_back_but_keeps_listening_and_resumes_when_heard() -> None:
    s = on_air(session())
    s.handle(Silent(T0 + 20), T0 + 23)
    actions = s.handle(Tick(), T0 + 30)
    assert Disconnect() not in actions  # the connection is alive: keep it
    assert actions[0] == OffAir("partial", "the stream is silent: fell back to the schedule")
    assert s.state is State.RETRYING and s.connected
    s.handle(Flowing(T0 + 40), T0 + 40)
    assert s.deadline() == T0 + 55
    _, actions = tick_until_deadline(s)
    assert actions == [OnAir(resumed=True), Report("live-resumed", None)]
    assert s.state is State.LIVE


# -- retries, backoff and no flapping --------------------------------------------------------


def fall_back(s: LiveSession) -> float:
    """On air, then the connection drops for good: returns the time it fell back."""
    on_air(s)
    s.handle(Ended("closed"), T0 + 20)
    tick_until_deadline(s)  # reconnect at 25
    s.handle(Ended("refused"), T0 + 25.1)
    when, _ = tick_until_deadline(s)
    assert s.state is State.FALLBACK
    return when


def test_it_comes_back_only_after_flowing_for_the_stable_time() -> None:
    s = session()
    fell = fall_back(s)
    when, actions = tick_until_deadline(s)
    assert actions == [Connect()] and s.state is State.RETRYING
    s.handle(Flowing(when + 0.5), when + 0.5)
    assert s.handle(Tick(), when + 15) == []  # not yet: 14.5 s of flow
    assert codes(s.handle(Tick(), when + 15.5)) == ["live-resumed"]
    assert when > fell


def test_a_flapping_source_never_reaches_the_air_and_backs_off() -> None:
    s = session()
    fall_back(s)
    retries: list[float] = []
    for _ in range(6):
        when, actions = tick_until_deadline(s)
        assert actions == [Connect()]
        retries.append(when)
        s.handle(Flowing(when + 1), when + 1)  # flows for 10 s (< stable_s)...
        s.handle(Ended("closed"), when + 11)  # ...then drops again
        assert s.state is State.FALLBACK
    gaps = [round(b - a - 11, 3) for a, b in itertools.pairwise(retries)]
    assert gaps == [20, 40, 40, 40, 40]  # doubling from the third failure, capped at 40
    assert s.fallbacks == 1  # it fell back once and never flapped on air


def test_a_connection_that_delivers_nothing_is_given_up_after_the_hold() -> None:
    s = session()
    fall_back(s)
    when, _ = tick_until_deadline(s)
    assert s.deadline() == when + 10
    assert s.handle(Stalled(when + 1), when + 1) == []
    assert s.handle(Tick(), when + 10) == [Disconnect()]
    assert s.state is State.FALLBACK


def test_backoff_resets_once_back_on_air_and_stable() -> None:
    s = session()
    fall_back(s)
    when, _ = tick_until_deadline(s)
    s.handle(Flowing(when), when)
    tick_until_deadline(s)  # resumed
    assert s.state is State.LIVE and s.failures > 0
    when, _ = tick_until_deadline(s)  # another stable_s on air
    assert s.failures == 0
    s.handle(Ended("closed"), when + 1)
    assert s.deadline() == when + 1 + 5  # the first retry is short again


def test_jitter_spreads_the_wait_over_its_upper_half() -> None:
    s = LiveSession(SETTINGS, T0 + 3600, jitter=lambda: 0.0)
    on_air(s)
    s.handle(Ended("closed"), T0 + 20)
    assert s.deadline() == T0 + 22.5  # half of retry_s


def test_emergency_like_interruptions_do_not_matter_to_the_machine() -> None:
    # The machine decides what the programme should be; whether an emergency is sounding over
    # it is the programme's business. Signals keep coming and are judged the same way.
    s = on_air(session())
    assert s.handle(Tick(), T0 + 100) == []
    assert s.state is State.LIVE


# -- the stream's watchdog rule and the URL check (hal.live_source, agent.live) ----------------


def test_stream_watch_tells_stalled_silent_and_flowing_apart() -> None:
    watch = StreamWatch(stall_after_s=1.0, silent_after_s=3.0, started=0.0)
    assert watch.judge(0.5) is None  # connecting: too early to say
    assert watch.judge(1.0) == ("stalled", 0.0)  # nothing since it connected
    watch.data(1.2, loud=False)
    assert watch.judge(1.3) is None  # audio, but not yet long enough quiet to be silence
    watch.data(1.4, loud=True)
    assert watch.judge(1.4) == ("flowing", 1.4)
    for t in (2.0, 3.0, 4.0):
        watch.data(t, loud=False)  # a pause between sentences...
    assert watch.judge(4.0) == ("flowing", 1.4)
    watch.data(4.4, loud=False)
    assert watch.judge(4.4) == ("silent", 1.4)  # ...that went on for 3 s
    watch.data(5.0, loud=True)
    assert watch.judge(5.0) == ("flowing", 5.0)  # counts afresh from the sound
    assert watch.judge(6.0) == ("stalled", 5.0)  # the data stopped
    watch.data(6.5, loud=True)
    assert watch.judge(6.5) == ("flowing", 6.5)


def test_scaling_pcm_clips_and_silences() -> None:
    pcm = array("h", [1000, -1000, 32767, -32768]).tobytes()
    assert array("h", scale_pcm(pcm, 0.5)).tolist() == [500, -500, 16383, -16384]
    assert array("h", scale_pcm(pcm, 2.0)).tolist() == [2000, -2000, 32767, -32768]
    assert scale_pcm(pcm, 0.0) == bytes(len(pcm))


@pytest.mark.parametrize(
    ("url", "allow_http", "why"),
    [
        ("https://live.vov.vn/vov1.mp3", False, None),
        ("https://LIVE.VOV.VN:443/vov1.mp3", False, None),
        ("http://live.vov.vn/vov1.mp3", False, "plain http"),
        ("http://live.vov.vn/vov1.mp3", True, None),
        ("https://other.vn/vov1.mp3", False, "allowlist"),
        ("https://u:p@live.vov.vn/vov1.mp3", False, "credentials"),
        ("https://live.vov.vn:99999/x", False, "bad URL"),
        ("ftp://live.vov.vn/x", False, "http(s)"),
        ("https://live.vov.vn/a\x01b", False, "http(s)"),
        ("https:///x.mp3", False, "no host"),
    ],
)
def test_urls_a_station_will_relay(url: str, allow_http: bool, why: str | None) -> None:
    found = refusal(url, allow_http, ["live.vov.vn"])
    assert (found is None) if why is None else (found is not None and why in found), found


def test_the_live_ffmpeg_command_leaves_reconnecting_to_the_station() -> None:
    ca = "/etc/ssl/certs/ca-certificates.crt"
    receiver = LiveReceiver(
        "https://live.vov.vn/vov1", lambda s: None, fmt="aac", ca_file=ca, rw_timeout_s=10
    )
    command = receiver.command()
    for option in ("-reconnect", "-reconnect_streamed", "-reconnect_at_eof"):
        assert command[command.index(option) + 1] == "0"
    assert command[command.index("-rw_timeout") + 1] == "10000000"
    assert command[command.index("-tls_verify") + 1] == "1"
    assert command[command.index("-f") + 1] == "aac"
    plain = LiveReceiver("http://127.0.0.1:8000/live.mp3", lambda s: None).command()
    assert "-tls_verify" not in plain and plain[plain.index("-i") + 1].startswith("http://")


# -- the player and programme hooks (fakes: mock pins, a scripted source, a fake clock) --------


def test_a_relay_test_cycles_zones_and_a_play_ends_it(mock_pins: Any, fake_clock: Any) -> None:
    sink = RecordingSink()
    player, done, relays = make_player(mock_pins, fake_clock, sink, None)
    tested: queue.Queue[RelayTestResult] = queue.Queue()
    inputs = {"speaker_line": True}
    player.relay_test(("north", "south"), dwell_s=0, read_inputs=lambda: inputs,
                      on_result=tested.put)  # fmt: skip
    result = tested.get(timeout=10)
    assert result.ok and result.amp is True and result.inputs_before == inputs
    assert [(z.zone, z.ok, dict(z.inputs)) for z in result.zones] == [
        ("north", True, inputs), ("south", True, inputs),
    ]  # fmt: skip
    assert relays.states() == {"amp": False, "north": False, "south": False}
    # A test that a play overtakes (the ladder: a test ranks 0) says so, and the play plays.
    gate = threading.Event()
    player.relay_test(("north",), dwell_s=30, read_inputs=lambda: gate.set() or {},
                      on_result=tested.put)  # fmt: skip
    assert gate.wait(10)
    player.play(request())  # no `replacing`: the test gives way by itself
    interrupted = tested.get(timeout=10)
    assert interrupted.interrupted and not interrupted.ok
    player.cut("partial", "over")
    assert done.get(timeout=10).outcome == "partial"
    player.close()
    relays.close()


def test_a_live_stretch_cut_in_on_rejoins_the_stream(mock_pins: Any, fake_clock: Any) -> None:
    results: queue.Queue[PlayResult] = queue.Queue()
    reported: list[Outcome] = []
    relays = GpioRelays(17, {"north": 27})
    sink = RecordingSink()
    player = Player(relays, lambda: sink, lambda p, g, s: ScriptedSource(fake_clock, 3),
                    fake_clock, results.put, warmup_s=0, hold_s=0)  # fmt: skip
    stream = ScriptedSource(fake_clock, None)  # a live stream never ends by itself

    def item(media: MediaRef) -> PlayItem:
        if media.category == "live":
            return PlayItem(media.name, media.sha256, Path("live"), source=lambda g: stream)
        return PlayItem(media.name, media.sha256, Path(media.name))

    programme = Programme(fake_clock, player, media_ready=lambda m: True, media_path=item,
                          volume=lambda o: 80, report=reported.append,
                          resume_window=timedelta(minutes=15))  # fmt: skip
    now = fake_clock.now()
    url = "http://127.0.0.1:8000/live.mp3"
    feed = MediaRef(url, url, live.UNVERIFIED_SHA256, 0, None, None, "live")
    clip = MediaRef("alarm", "https://m/a.mp3", "ab" * 32, 1, 0.3, None, "emergency")
    stretch = Occurrence(("25", "25/08230"), 0, "live:l-1", now, now + timedelta(hours=1),
                         (feed,), 80, ("all",), None, 0.0)  # fmt: skip
    alarm = Occurrence(("25", "25/08230"), 0, "emergency:e-1", now, now + timedelta(hours=1),
                       (clip,), 100, ("all",), 100, 0.0)  # fmt: skip
    programme.cut_in(stretch)
    assert sink.first_write.wait(10)
    programme.cut_in(alarm)
    cut = results.get(timeout=10)
    assert cut.key == stretch.key and cut.outcome == "preempted"
    programme.done(cut)
    assert reported == []  # the stretch waits for the emergency, it is not over
    finished = results.get(timeout=10)
    programme.done(finished)
    assert [o.occurrence.slot_id for o in reported] == ["emergency:e-1"]
    assert programme.on_air == stretch.key  # back on the stream
    assert programme.end(stretch.key, "stopped by l-stop")
    programme.done(results.get(timeout=10))
    assert [(o.occurrence.slot_id, o.reason) for o in reported][-1] == (
        "live:l-1", "stopped by l-stop",
    )  # fmt: skip
    player.close()
    relays.close()


# -- the runtime glue (agent/live.py) with a fake receiver, programme and clock ---------------


class FakeReceiver:
    def __init__(self) -> None:
        self.gain = 1.0
        self.log: list[str] = []
        self.generation = 0

    def connect(self) -> int:
        self.generation += 1
        self.log.append("connect")
        return self.generation

    def disconnect(self) -> None:
        self.log.append("disconnect")

    def close(self) -> None:
        self.log.append("close")

    def source(self, gain: float) -> ScriptedSource:
        raise AssertionError("not played here")


class FakeProgramme:
    def __init__(self) -> None:
        self.cut_ins: list[Occurrence] = []
        self.ended: list[tuple[str, str]] = []

    def cut_in(self, occurrence: Occurrence) -> None:
        self.cut_ins.append(occurrence)

    def end(self, key: str, reason: str) -> bool:
        self.ended.append((key, reason))
        return True


class Glue:
    def __init__(self, clock: Any, **config: Any) -> None:
        self.clock = clock
        self.receiver = FakeReceiver()
        self.programme = FakeProgramme()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.inbox: list[Any] = []
        settings = {"allowed_hosts": ("127.0.0.1",), "allow_http": True, "hold_s": 10.0,
                    "retry_s": 5.0, "retry_max_s": 40.0, "stable_s": 15.0, **config}  # fmt: skip
        self.relay = LiveRelay(
            LiveConfig(**settings), clock, self.programme,  # type: ignore[arg-type]
            self.inbox.append, lambda code, detail, fields: self.events.append((code, fields)),
            lambda occurrence: 80, default_volume=80,
            receiver_factory=lambda url, fmt, on_signal: self.receiver, jitter=lambda: 1.0,
        )  # fmt: skip

    def command(self, cid: str, action: str, **fields: Any) -> Command:
        now = self.clock.now()
        return Command(cid, "25", "25/08230", now - timedelta(seconds=1),
                       now + timedelta(minutes=10), action, fields)  # fmt: skip

    def signal(self, kind: str, detail: str | None = None) -> None:
        session = self.relay._session
        assert session is not None
        signal = LiveSignal(self.receiver.generation, kind, self.clock.monotonic(), detail)
        self.relay.on_signal(LiveSignalled(session.number, signal))

    def wake_after(self, seconds: float) -> None:
        self.clock.advance(seconds)
        session = self.relay._session
        assert session is not None
        self.relay.on_wake(LiveWake(session.number))

    def codes(self) -> list[str]:
        return [code for code, _ in self.events]


def test_glue_refuses_what_it_may_not_relay(fake_clock: Any) -> None:
    glue = Glue(fake_clock, allow_http=False)
    glue.relay.start(glue.command("l-1", "live_start",
                                  stream={"url": "http://127.0.0.1:8000/a.mp3"}), ())  # fmt: skip
    vov = glue.command("l-2", "live_start", stream={"url": "https://live.vov.vn/a"})
    glue.relay.start(vov, ("live.vov.vn",))  # the keyring's hosts count too
    assert [(c, f["id"]) for c, f in glue.events] == [
        ("live-refused", "l-1"), ("live-started", "l-2"),
    ]  # fmt: skip
    assert "plain http" in glue.events[0][1]["reason"]
    glue.relay.stop(glue.command("ls-1", "live_stop", references="l-other"))
    assert glue.events[-1][0] == "live-refused" and glue.relay.active
    glue.relay.close()


def test_glue_carries_a_fallback_and_return_to_the_programme(fake_clock: Any) -> None:
    glue = Glue(fake_clock)
    url = "http://127.0.0.1:8000/a.mp3"
    glue.relay.start(glue.command("l-1", "live_start", stream={"url": url}, zones=["north"]), ())
    first = glue.programme.cut_ins[0]
    assert first.slot_id == "live:l-1" and first.priority == 80 and first.zones == ("north",)
    assert first.items[0].sha256 == "unverified-live-stream" and glue.receiver.gain == 0.8
    glue.signal("flowing")
    glue.signal("ended", "the stream ended")
    glue.wake_after(5)  # a reconnect inside the hold time, refused at once
    glue.signal("ended", "Connection refused")
    glue.wake_after(5)  # the hold time is over: the schedule
    assert glue.codes() == ["live-started", "live-stalled", "live-fallback"]
    assert glue.programme.ended[0][0] == first.key
    # The as-run of the stretch says how it ended, whatever the player saw.
    cut = Outcome(first, "partial", "the cut's reason", played_s=12.0)
    told = glue.relay.finished(cut)
    assert (told.outcome, told.reason) == (
        "partial", "the stream's connection ended: Connection refused: fell back to the schedule",
    )  # fmt: skip
    glue.wake_after(10)  # retry (the third failure in a row waits 10 s)
    glue.signal("flowing")
    glue.wake_after(15)
    assert glue.codes()[-1] == "live-resumed" and len(glue.programme.cut_ins) == 2
    glue.relay.stop(glue.command("ls-1", "live_stop", references="l-1"))
    second = glue.programme.cut_ins[1]
    done = glue.relay.finished(Outcome(second, "partial", "cut", played_s=3.0))
    assert (done.outcome, done.reason) == ("complete", "stopped by ls-1")
    assert glue.codes()[-1] == "live-stopped" and not glue.relay.active
    assert glue.receiver.log.count("connect") == 3 and glue.receiver.log[-1] == "close"
    # Signals of a session that is over change nothing.
    glue.relay.on_signal(LiveSignalled(1, LiveSignal(3, "flowing", 0.0)))
    assert glue.codes()[-1] == "live-stopped"


def test_glue_ends_the_session_when_its_stretch_ends_unasked(fake_clock: Any) -> None:
    glue = Glue(fake_clock)
    glue.relay.start(glue.command("l-1", "live_start",
                                  stream={"url": "http://127.0.0.1:8000/a.mp3"}), ())  # fmt: skip
    stretch = glue.programme.cut_ins[0]
    glue.signal("flowing")
    done = glue.relay.finished(Outcome(stretch, "partial", "slot end reached", played_s=600))
    assert (done.outcome, done.reason) == ("complete", "its expiry was reached")
    assert glue.codes()[-1] == "live-stopped" and not glue.relay.active
    glue.relay.start(glue.command("l-2", "live_start",
                                  stream={"url": "http://127.0.0.1:8000/a.mp3"}), ())  # fmt: skip
    failed = glue.relay.finished(Outcome(glue.programme.cut_ins[1], "failed", "audio: card gone"))
    assert failed.outcome == "failed" and not glue.relay.active


def test_glue_a_command_that_expired_on_the_way_leaves_nothing_on(fake_clock: Any) -> None:
    glue = Glue(fake_clock)
    now = fake_clock.now()
    late = Command("l-9", "25", "25/08230", now - timedelta(minutes=2), now, "live_start",
                   {"stream": {"url": "http://127.0.0.1:8000/a.mp3"}})  # fmt: skip
    glue.relay.start(late, ())
    assert glue.codes() == ["live-stopped"] and not glue.relay.active
    assert glue.programme.cut_ins == [] and glue.receiver.log == ["close"]
