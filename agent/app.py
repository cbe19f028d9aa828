"""The one composition root: builds a running station from its config, real parts or simulated.

Nothing else in the agent decides which implementation of a port is used. ``LOA_HAL=sim``
(``config.sim``) swaps GPIO for gpiozero's MockFactory and, by default, the sound card for a
WAV file per station, so the whole station runs on a laptop; on shutdown it leaves the relay
history beside the WAV file for whoever wants to see what the relays did.

Under systemd (``Type=notify``) it also tells the service manager how the station is:
``READY=1`` once config, relays, sound card and trust store are loaded and the runtime is about
to take messages, ``WATCHDOG=1`` from the runtime thread itself (every half ``WatchdogSec``, so
a stuck handler starves the watchdog and systemd restarts the agent), ``STOPPING=1`` when
shutdown starts, and a ``STATUS=`` line. ``safe_off`` switches every relay off for the unit's
``ExecStopPost``, after the agent is gone, however it went.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from agent import faults, keyfiles
from agent.cache import MediaCache
from agent.config import Config
from agent.core.clock import Clock
from agent.ingest import Ingestor
from agent.link import Link, LinkEvent, TlsFiles
from agent.loudness import LoudnessStore
from agent.outbox import Outbox
from agent.player import Player, PlayResult
from agent.station import Station
from agent.trust_store import TrustStore
from hal import memory
from hal.audio import Decoder, PyAudioSink, open_sink
from hal.capture import CaptureError, PyAudioProbe
from hal.chimes import PcmClip, chime_pcm
from hal.files import atomic_write
from hal.inputs import HealthInputs, InputChange
from hal.relays import GpioRelays, pin_history, use_mock_pins
from hal.systemd import Notifier, watchdog_interval

log = logging.getLogger("loa.app")


def build_station(config: Config, clock: Clock) -> tuple[Station, Callable[[], None]]:
    """The station and a cleanup to call after it stopped."""
    factory: Any = use_mock_pins() if config.sim else None
    relays = GpioRelays(config.amp_pin, config.zones, active_high=config.active_high)
    store = TrustStore(config.paths.trust_db)
    outbox = Outbox(config.paths.outbox)
    cache = MediaCache(
        config.paths.cache, allow_http=config.media.allow_http, timeout_s=config.media.timeout_s
    )
    wav = config.audio.wav or config.paths.state / "speaker.wav"

    probe = _open_probe(config)
    sink = open_sink(config.audio.output, config.audio.device, wav)

    def player(on_done: Callable[[PlayResult], None], on_silence: Callable[[str], None]) -> Player:
        return Player(
            relays,
            lambda: sink,  # one sink for the life of the station: the device stays ready
            # 20 ms chunks: a cut takes effect within one chunk (preemption latency).
            lambda path, gain, start_s: Decoder(path, gain, start_s=start_s, chunk_frames=960),
            clock,
            on_done,
            warmup_s=config.audio.warmup_s,
            hold_s=config.audio.hold_s,
            amp_linger_s=config.audio.amp_linger_s,
            probe=probe,
            silence=(config.capture.silence_threshold_dbfs, config.capture.silence_after_s),
            on_silence=on_silence,
            chimes=lambda kind, gain: PcmClip(chime_pcm(kind), gain, chunk_frames=960),
        )

    inputs_factory = None
    if config.inputs.pins:

        def inputs_factory(deliver: Callable[[InputChange], None]) -> HealthInputs:
            inputs = HealthInputs(
                config.inputs.pins,
                deliver,
                active_high=config.inputs.active_high,
                bounce_s=config.inputs.bounce_s,
            )
            if factory is not None:  # simulated inputs read "present", as on a healthy station
                for pin in config.inputs.pins.values():
                    mock = factory.pin(pin)
                    (mock.drive_high if config.inputs.active_high else mock.drive_low)()
            return inputs

    link_factory = None
    if config.broker.urls:
        tls = TlsFiles(config.paths.ca_certificate, config.paths.certificate, config.paths.tls_key)
        offline = json.dumps({"online": False, "station": config.station.path}).encode()

        def link_factory(deliver: Callable[[LinkEvent], None]) -> Link:
            return Link(
                config.station,
                config.broker.urls,
                tls,
                deliver,
                will_payload=offline,
                keepalive_s=config.broker.keepalive_s,
                will_delay_s=config.broker.will_delay_s,
                session_expiry_s=config.broker.session_expiry_s,
            )

    station = Station(
        config=config,
        clock=clock,
        ingestor=Ingestor(config, store, clock),
        outbox=outbox,
        cache=cache,
        player_factory=player,
        signing_key=keyfiles.load_private(config.paths.signing_key),
        link_factory=link_factory,
        inputs_factory=inputs_factory,
        loudness=LoudnessStore(config.paths.cache),
    )

    def cleanup() -> None:
        relays.close()
        if isinstance(sink, PyAudioSink):
            sink.release()
        if probe is not None:
            with contextlib.suppress(CaptureError):
                probe.close()
        if factory is not None:
            _write_pin_history(factory, config.paths.state / "sim-pins.json")
            factory.reset()
        outbox.close()
        store.close()

    return station, cleanup


def _open_probe(config: Config) -> PyAudioProbe | None:
    """The input channel, if configured; a card that fails to open never stops the station
    from playing: it runs without proof of sound and says so."""
    if not config.capture.device:
        return None
    probe = PyAudioProbe(config.capture.device)
    try:
        probe.open()
    except CaptureError as exc:
        log.error("input channel unavailable, playing without measuring: %s", exc)
        return None
    return probe


def _write_pin_history(factory: Any, path: Path) -> None:
    """The simulated pins' history for tests to read; a test aid, so a full disk only warns."""
    history = {
        str(pin): [[stamp, state] for stamp, state in states]
        for pin, states in pin_history(factory).items()
    }
    try:
        atomic_write(path, json.dumps(history, indent=1).encode())
    except OSError as exc:
        log.warning("simulated pin history not written to %s: %s", path, exc)


def run(config: Config, clock: Clock, notifier: Notifier | None = None) -> int:
    """Run the station until it stops; returns the exit status it asked for (0, or 75 when an
    update is staged: the unit's RestartForceExitStatus brings it back through the boot guard)."""
    notifier = Notifier.from_environ() if notifier is None else notifier
    for name in sorted(faults.unknown()):
        log.error("%s names an unknown fault %r (known: %s)", faults.ENV, name,
                  ", ".join(sorted(faults.KNOWN)))  # fmt: skip
    station, cleanup = build_station(config, clock)
    stopping = threading.Event()
    supervise(station, notifier, watchdog_interval(), stopping)

    # The handler runs on the main thread between two bytecodes, possibly while that thread
    # holds the inbox's lock inside ``Queue.get``: putting on the inbox from there deadlocked
    # the agent on SIGTERM (caught by py-spy under tests/e2e/test_fault_clock.py). It only puts
    # on a SimpleQueue (reentrant); a thread of its own passes the stop on.
    signals: queue.SimpleQueue[str] = queue.SimpleQueue()

    def forward_signals() -> None:
        name = signals.get()
        stopping.set()
        station.stop(name)

    threading.Thread(target=forward_signals, name="loa-signals", daemon=True).start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals.put(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        station.run()
    finally:
        cleanup()
        notifier.close()
    return station.exit_status


def supervise(
    station: Station, notifier: Notifier, watchdog_s: float | None, stopping: threading.Event
) -> None:
    """Wire the station's hooks to the service manager. The watchdog is fed only by the
    runtime thread handling its tick: a timer thread pinging on its own would keep a station
    whose every message waits behind a hung handler looking alive for ever."""
    last_status = ""

    def ready() -> None:
        nonlocal last_status
        last_status = "idle"
        memory.trim()  # what start-up parsed and freed leaves the resident set
        notifier.ready(status=last_status)
        log.info("ready%s", f" (watchdog every {watchdog_s:g} s)" if watchdog_s else "")

    def alive(status: str) -> None:
        nonlocal last_status
        if faults.active(faults.STALL_MAIN_LOOP):
            log.warning("fault %s: the runtime thread stops here until told to stop",
                        faults.STALL_MAIN_LOOP)  # fmt: skip
            stopping.wait()
            return
        changed = status != last_status
        if changed and status == "idle":
            memory.trim()  # a play's buffers, freed
        last_status = status
        notifier.watchdog(status=status if changed else None)

    def stopping_now() -> None:
        notifier.stopping(status="stopping")

    station.on_ready = ready
    station.on_stopping = stopping_now
    if watchdog_s is not None:
        station.on_alive = alive
        station.alive_every_s = watchdog_s / 2


def safe_off(config: Config) -> dict[str, bool]:
    """Claim the amplifier and every zone relay, switch them off (honouring ``active_high``)
    and let go; returns the states read back (all False). For ``ExecStopPost``: after a crash
    or a watchdog kill the pins are whatever the dead process left. With ``LOA_HAL=sim`` the
    mock pins' history goes to ``state/sim-pins-safe-off.json``, beside the agent's own."""
    factory: Any = use_mock_pins() if config.sim else None
    relays = GpioRelays(config.amp_pin, config.zones, active_high=config.active_high)
    try:
        relays.all_off()  # claiming already drove them off; this says so explicitly
        states = relays.states()
    finally:
        relays.close()
    if factory is not None:
        _write_pin_history(factory, config.paths.state / "sim-pins-safe-off.json")
        factory.reset()
    return states
