"""Emergency fan-out: one emergency published on the province's command topic, to the first PCM
frame of its clip at each of N simulated stations (N = 100, 500, 1000) on one local broker,
against bare MQTT delivery of a plain message to the same N clients, same topic, same run.

What is real, per simulated station: its own provisioned directory (``loa-provision``'s
``provision``: its own Ed25519 signing key, TLS key and CSR, the keyring of
``shared/vectors/keyring-v1.json`` installed in its own ``TrustStore``), its own client
certificate signed by the broker's CA, its own MQTT connection through the agent's ``Link``
(its paho client, MQTT 5, mutual TLS, the station's subscriptions and callbacks), and the
agent's ``Station`` object handling every message through its own dispatch
(``Station._handle``): the envelope goes through ``Ingestor`` (the real ``verify``: DSSE
signature by the keyring's ``emergency`` role, schema, scope, audience, time window, replay,
and the command id persisted in SQLite before the verdict), events and the as-run through its
``Outbox`` and its link, CAP (``cap.decide``), ``agent.core.emergency``, ``Programme.cut_in``,
and the ``Player``'s own playback thread up to ``sink.write``. The broker is a real mosquitto
configured as the province's (``province.mosquitto``: mutual TLS, the ACL of
``province.acl`` naming every station, ``log_type all``); the emergency is published by the
province's own ``route`` and ``Publisher`` (QoS 1, Message Expiry from the command).

What is simulated: the hardware, and how many stations one machine hosts.

- Relays: a null ``Relays`` (no GPIO). Sound card: a sink that timestamps its first ``write``
  and then takes PCM at a card's pace (a write returns once its chunk is due less than
  ``CARD_BUFFER_S`` ahead). Decoder: the clip decoded once by the real ``Decoder`` (ffmpeg)
  before the run and streamed from memory by ``PcmClip`` (what the chimes use): a thousand
  ffmpeg starts on two cores would measure ``fork`` (``bench.preemption`` measures that start
  on one station). The clip is 0.1 s: the stations' plays overlap, and a thousand plays
  metered at once would need more than two cores.
- Configured waits: amplifier warm-up, hold and linger 0, no chime around the emergency
  (``[audio] warmup_s``, ``hold_s``, ``amp_linger_s``, ``[emergency] chime``), so the first
  frame is the clip's and the figure is the pipeline's. With the defaults, the amplifier's 2 s
  warm-up comes on top when it is off, and a 0.8 s chime before the clip.
- Threads: ``Station.run`` is one runtime thread per station, and ``Link.start`` one paho
  thread per station. Here each worker process has one runtime thread that drains the queues
  of all its stations, each message through its own station's dispatch (``Runtime``), and one
  network thread that drives all its stations' paho clients through paho's external-loop API
  (``Network``). A fan-out wakes every station of a process at once: with a thread each, some
  hundred threads queue for one GIL and their hand-overs cost more CPU than the stations' work
  (a first version of this benchmark, built that way, spent more CPU in the kernel than in
  Python, and its N = 500 took seconds). The stations' timers
  (heartbeat, replan, watch) and media workers are not started: the window needs none of them.
- State lives on tmpfs (``/dev/shm`` when there is one). A thousand stations share this
  machine's one disk, where each real station has its own, so their fsyncs would queue here as
  they never do in the field.

The method. The stations are spread over ``WORKERS`` processes, so the figure is not one GIL's;
the main process publishes and hosts none. Time is ``time.monotonic()`` everywhere:
CLOCK_MONOTONIC is one clock for every process of the machine, so the publish instant (in the
main process, just before ``Publisher.send``) and the instants taken in the workers compare
directly. Each round publishes one emergency (a fresh command id, issued now, target the
province, on ``loa/v1/25/cmd``, signed by the test ``emergency`` key) and one bare message (the
same topic, QoS and Message Expiry, a payload as long); the order alternates round by round,
and each message waits until every station is idle again. Bare delivery is the instant the
station's ``Link`` hands the message over (paho's ``on_message``), the emergency's figure the
instant its clip's first frame reaches the station's sink. A warm-up round is not counted.
Percentiles are over all (station, round) pairs.

Every station's work shares this machine's two cores here, where each station in the field
has its own CPU: the figure is the machine's capacity to host N stations as much as the
system's latency. ``detail`` says where the time goes (delivery of the emergency, the
station's own handling and its CPU time, how busy the machine and the broker were).

    .venv/bin/python -m bench.emergency_fanout [--quick] [--sizes 100,500] [--results DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from paho.mqtt.client import Client

from agent import keyfiles
from agent.cache import MediaCache
from agent.config import read_config
from agent.core import emergency
from agent.core.targets import StationId
from agent.core.timefmt import format_rfc3339
from agent.ingest import Ingestor
from agent.link import Connected, Link, LinkEvent, Received, TlsFiles
from agent.loudness import LoudnessStore
from agent.outbox import Outbox
from agent.player import Player, PlayResult
from agent.station import Station, Stop
from agent.trust_store import TrustStore
from bench.common import RESULTS, ROOT, machine_info, percentile, summary, write_result
from hal.audio import FRAME_BYTES, SAMPLE_RATE, Decoder
from hal.chimes import PcmClip, chime_pcm
from hal.clock import SystemClock
from province.mosquitto import find_mosquitto
from province.publish import Outgoing, Publisher, route
from provisioning.init import InitRequest, provision
from tests.harness.broker import MosquittoBroker
from tests.harness.trust import VECTORS, envelope

COMMAND = ".venv/bin/python -m bench.emergency_fanout"
PROVINCE = "25"
OPERATOR = "province-25"
CMD_TOPIC = f"loa/v1/{PROVINCE}/cmd"
STATIONS_PER_COMMUNE = 50
WORKERS = 4
CLIP_S = 0.1
CHUNK_FRAMES = 960  # 20 ms, as agent.app gives the real Decoder
CARD_BUFFER_S = 0.1  # how far ahead of the card's clock the simulated card takes PCM
BARE_MARK = b"BARE "
CONNECT_TIMEOUT_S = 120.0
MISC_EVERY_S = 1.0  # paho's keepalive bookkeeping (loop_misc), as its own loop does it
ROUND_TIMEOUT_S = 60.0
PAUSE_S = 0.5  # between messages, once every station is idle again
TARGET_P99_MS = 1000.0
TARGET_RATIO = 2.0


@dataclass(frozen=True)
class Mode:
    sizes: tuple[int, ...]
    rounds: int  # counted rounds, each one emergency and one bare message
    warmups: int


FULL = Mode(sizes=(100, 500, 1000), rounds=5, warmups=1)
QUICK = Mode(sizes=(20, 50), rounds=2, warmups=1)


# -- the stations' directories --------------------------------------------------------------------


def station_ids(count: int) -> list[StationId]:
    """``count`` stations of province 25, ``STATIONS_PER_COMMUNE`` to a commune."""
    out = []
    for i in range(count):
        commune = f"{8230 + i // STATIONS_PER_COMMUNE:05d}"
        out.append(StationId(PROVINCE, commune, f"{commune}-{i % STATIONS_PER_COMMUNE + 1:02d}"))
    return out


@dataclass(frozen=True)
class Clip:
    medium: Path  # the MP3 the command names (cached at every station)
    sha256: str
    size: int
    pcm: Path  # the same clip decoded once by the real Decoder


def make_clip(directory: Path) -> Clip:
    """A short 880 Hz MP3 (``CLIP_S``), and its PCM as the station's own ``Decoder`` makes it."""
    medium = directory / "clip.mp3"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"sine=frequency=880:duration={CLIP_S}:sample_rate=48000", "-af", "volume=4",
         "-ac", "1", "-b:a", "64k", str(medium)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with Decoder(medium, 1.0, chunk_frames=CHUNK_FRAMES) as decoder:
        pcm = b"".join(decoder.chunks())
    (directory / "clip.pcm").write_bytes(pcm)
    data = medium.read_bytes()
    return Clip(medium, hashlib.sha256(data).hexdigest(), len(data), directory / "clip.pcm")


def provision_stations(
    base: Path, stations: list[StationId], broker: MosquittoBroker, clip: Clip
) -> list[Path]:
    """Each station as ``loa-provision init`` makes it, its CSR signed by the broker's CA, its
    configuration set for the bench, and the clip in its media cache."""
    url = f"mqtts://{broker.host}:{broker.port}"
    keyring = (VECTORS / "keyring-v1.json").read_bytes()
    ca = broker.ca_path.read_bytes()
    directories = []
    for station in stations:
        directory = base / station.path.replace("/", "_")
        result = provision(
            InitRequest(station, keyring, directory, brokers=(url,), clock_trust="system"),
            datetime.now(UTC),
        )
        keys = directory / "keys"
        (keys / "station.crt").write_bytes(broker.sign_csr(result.csr_path.read_bytes()))
        (keys / "ca.crt").write_bytes(ca)
        text = result.config_path.read_text()
        # No configured waits before the first frame (see the module's docstring).
        text = text.replace("[audio]\n", "[audio]\nwarmup_s = 0\nhold_s = 0\namp_linger_s = 0\n")
        result.config_path.write_text(text + "\n[emergency]\nchime = false\n")
        # Cached ahead, as a province pushes emergency clips in its playlists; a hard link
        # costs no space and `MediaCache.has` sees a regular file of the right size.
        cache = directory / "cache"
        os.link(clip.medium, cache / clip.sha256)
        directories.append(directory)
    return directories


# -- a simulated station (in a worker process) ----------------------------------------------------


class NullRelays:
    """The ``Relays`` port with no GPIO behind it: every switch succeeds at once."""

    def __init__(self) -> None:
        self._states: dict[str, bool] = {"amp": False}

    def set_amp(self, on: bool) -> None:
        self._states["amp"] = on

    def set_zones(self, names: Iterable[str], on: bool) -> None:
        pass

    def all_off(self) -> None:
        self._states["amp"] = False

    def states(self) -> dict[str, bool]:
        return dict(self._states)

    def close(self) -> None:
        pass


class FirstFrameSink:
    """The sound card: timestamps the first ``write`` of each play, then takes PCM at the
    card's pace (a write returns once its chunk is due at most ``CARD_BUFFER_S`` ahead), so a
    play lasts as long as its clip, as on a card."""

    latency_s = 0.0

    def __init__(self, on_first: Callable[[float], None]) -> None:
        self._on_first = on_first
        self._started: float | None = None
        self._frames = 0

    def open(self) -> None:
        self._started, self._frames = None, 0

    def write(self, pcm: bytes) -> None:
        now = time.monotonic()
        if self._started is None:
            self._started = now
            self._on_first(now)
        self._frames += len(pcm) // FRAME_BYTES
        due = self._started + self._frames / SAMPLE_RATE - CARD_BUFFER_S
        if due > now:
            time.sleep(due - now)

    def close(self) -> None:
        self._started = None


@dataclass
class Times:
    """What one worker saw, by label (a command id or a bare message's label) and station."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    received: dict[str, dict[str, float]] = field(default_factory=dict)
    frames: dict[str, dict[str, float]] = field(default_factory=dict)
    # CPU seconds the runtime thread spent on the emergency's message (verify to cut-in).
    handled: dict[str, dict[str, float]] = field(default_factory=dict)
    connected: set[str] = field(default_factory=set)
    armed: str = ""  # the command id the next envelope on the command topic carries

    def put(self, table: dict[str, dict[str, float]], label: str, station: str, t: float) -> None:
        with self.lock:
            table.setdefault(label, {}).setdefault(station, t)  # the first one counts


# The runtime thread's one queue: (station, message), or (None, None) to stop.
Shared = queue.SimpleQueue[tuple["SimStation | None", Any]]


class Inbox(queue.Queue[Any]):
    """A station's queue that hands what is put on it to its process's runtime thread, tagged
    with the station: one thread runs every station of the process (see ``Runtime``)."""

    def __init__(self, shared: Shared, owner: SimStation) -> None:
        super().__init__()
        self._shared = shared
        self._owner = owner

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self._shared.put((self._owner, item))


class SimStation:
    """The agent's ``Station`` built as ``agent.app.build_station`` builds it, with the
    simulated hardware and a tap between its link and its queue. It is built, and its messages
    handled, on its process's runtime thread (SQLite connections belong to the thread that
    opens them, and the station's state to the thread that drains its queue)."""

    def __init__(self, directory: Path, pcm: bytes, times: Times, shared: Shared) -> None:
        self.directory = directory
        self.pcm = pcm
        self.times = times
        self.shared = shared
        self.name = ""
        self._parts: tuple[Station, TrustStore, Outbox, bytes] | None = None

    @property
    def station(self) -> Station | None:
        return self._parts[0] if self._parts is not None else None

    def build(self) -> None:
        self._parts = self._build()

    def _build(self) -> tuple[Station, TrustStore, Outbox, bytes]:
        config = read_config(self.directory / "station.toml", {})
        self.name = config.station.path
        clock = SystemClock()
        store = TrustStore(config.paths.trust_db)
        outbox = Outbox(config.paths.outbox)
        cache = MediaCache(config.paths.cache)
        relays = NullRelays()
        sink = FirstFrameSink(self._first_frame)
        pcm = self.pcm

        def decoder(path: Path, gain: float, start_s: float) -> PcmClip:
            # The clip as the real Decoder produced it, from memory; a resumed play starts on
            # the right frame as ffmpeg's seek would.
            start = int(start_s * SAMPLE_RATE) * FRAME_BYTES
            return PcmClip(pcm[start:], gain, chunk_frames=CHUNK_FRAMES)

        def player(
            on_done: Callable[[PlayResult], None], on_silence: Callable[[str], None]
        ) -> Player:
            return Player(
                relays, lambda: sink, decoder, clock, on_done,
                warmup_s=config.audio.warmup_s, hold_s=config.audio.hold_s,
                amp_linger_s=config.audio.amp_linger_s,
                silence=(config.capture.silence_threshold_dbfs, config.capture.silence_after_s),
                on_silence=on_silence,
                chimes=lambda kind, gain: PcmClip(chime_pcm(kind), gain, chunk_frames=CHUNK_FRAMES),
            )  # fmt: skip

        tls = TlsFiles(config.paths.ca_certificate, config.paths.certificate, config.paths.tls_key)
        offline = json.dumps({"online": False, "station": self.name}).encode()

        def link(deliver: Callable[[LinkEvent], None]) -> Link:
            return Link(
                config.station, config.broker.urls, tls, self._tap(deliver),
                will_payload=offline, keepalive_s=config.broker.keepalive_s,
                will_delay_s=config.broker.will_delay_s,
                session_expiry_s=config.broker.session_expiry_s,
            )  # fmt: skip

        station = Station(
            config=config,
            clock=clock,
            ingestor=Ingestor(config, store, clock),
            outbox=outbox,
            cache=cache,
            player_factory=player,
            signing_key=keyfiles.load_private(config.paths.signing_key),
            link_factory=link,
            loudness=LoudnessStore(config.paths.cache),
            inbox=Inbox(self.shared, self),
        )
        return station, store, outbox, offline

    def _tap(self, deliver: Callable[[LinkEvent], None]) -> Callable[[LinkEvent], None]:
        """Timestamps what the link hands over (paho's ``on_message``, on the network thread): a
        bare message stops here; everything else goes on to the station's queue, unchanged."""

        def tapped(event: LinkEvent) -> None:
            if isinstance(event, Received) and event.topic == CMD_TOPIC:
                now = time.monotonic()
                if event.payload.startswith(BARE_MARK):
                    label = event.payload[len(BARE_MARK) :].split(b" ", 1)[0].decode()
                    self.times.put(self.times.received, label, self.name, now)
                    return
                self.times.put(self.times.received, self.times.armed, self.name, now)
            elif isinstance(event, Connected):
                with self.times.lock:
                    self.times.connected.add(self.name)
            deliver(event)

        return tapped

    def _first_frame(self, now: float) -> None:
        # The play on air is the one writing: its key names the emergency's command id.
        request = self.station.player.current if self.station is not None else None
        slot = request.key.split("/")[1] if request is not None else ""
        if emergency.is_emergency(slot):
            self.times.put(self.times.frames, emergency.command_id(slot), self.name, now)

    def start(self, network: Network) -> None:
        """What ``Station.run`` does first: safe-off, then the link, its client driven by the
        process's network thread. ``Link.start`` is ``_plan_retry`` (which broker, with what
        session) and paho's own thread; here the same ``_plan_retry``, then paho's connect
        (``reconnect`` uses what ``connect_async`` stored: TCP and the TLS handshake, on this
        thread) with the sockets handed to ``network``."""
        assert self._parts is not None and self._parts[0].link is not None
        self._parts[0].player.close()
        link = self._parts[0].link
        client = link._client
        network.attach(client)
        link._plan_retry(failed=False, first=True)
        client.reconnect()

    def handle(self, message: Any) -> None:
        """One message through the station's own dispatch; for the emergency, the CPU time
        it took on this thread (verification to cut-in) is kept."""
        assert self._parts is not None
        station = self._parts[0]
        if isinstance(message, Stop):
            self.close()
        elif isinstance(message, Received) and message.topic == CMD_TOPIC:
            cpu = time.thread_time()
            station._handle(message)
            cpu = time.thread_time() - cpu
            self.times.put(self.times.handled, self.times.armed, self.name, cpu)
        else:
            station._handle(message)

    def close(self) -> None:
        if self._parts is None:
            return
        station, store, outbox, offline = self._parts
        self._parts = None
        station.player.close()
        assert station.link is not None
        station.link.stop(offline)
        outbox.close()
        store.close()

    def busy(self) -> bool:
        station = self.station
        return station is not None and station.player.busy


class Network:
    """One thread that drives the paho clients of every station of the process, through
    paho's API for an external event loop (``loop_read``, ``loop_write``, ``loop_misc`` and the
    ``on_socket_*`` callbacks), in place of paho's thread per client (``loop_start``).

    Why: a fan-out wakes every client of the process at once; with a thread each, a hundred
    threads queue for the one GIL, and their hand-overs cost more CPU than the messages. One
    thread reading the sockets epoll says are ready does the same paho work (TLS, MQTT, the
    link's callbacks) in turn. Writes stay on this thread too: a publish from the runtime
    thread only queues the packet and asks (``on_socket_register_write``) for the socket to be
    watched for writing, so no TLS socket is ever used by two threads at once. What is not
    here is paho's reconnect: a connection lost fails the run (a station would miss a round).
    """

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()  # epoll: no FD_SETSIZE limit
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.clients: dict[Client, Any] = {}  # client -> its socket while open
        self.attached: list[Client] = []
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="network", daemon=True)
        self.thread.start()

    def attach(self, client: Client) -> None:
        self.attached.append(client)
        client.on_socket_open = lambda c, u, sock: self._call(lambda: self._open(c, sock))
        client.on_socket_close = lambda c, u, sock: self._call(lambda: self._close(c, sock))
        client.on_socket_register_write = lambda c, u, sock: self._call(
            lambda: self._watch(c, write=True)
        )
        client.on_socket_unregister_write = lambda c, u, sock: self._call(
            lambda: self._watch(c, write=False)
        )

    def _call(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the network thread (the selector is its alone): at once when paho
        calls from there (it is about to close the socket, say), else next time round."""
        if threading.current_thread() is self.thread:
            action()
            return
        self._calls.put(action)
        with contextlib.suppress(BlockingIOError):
            self._wake_w.send(b"!")

    def _open(self, client: Client, sock: Any) -> None:
        self.clients[client] = sock
        self.selector.register(sock, selectors.EVENT_READ, client)

    def _close(self, client: Client, sock: Any) -> None:
        if self.clients.pop(client, None) is not None:
            self.selector.unregister(sock)

    def _watch(self, client: Client, *, write: bool) -> None:
        sock = self.clients.get(client)
        if sock is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
            # A request from the runtime thread can come after paho closed the socket.
            with contextlib.suppress(OSError):
                self.selector.modify(sock, events, client)

    def _run(self) -> None:
        last_misc = time.monotonic()
        while not self._stopping.is_set():
            for key, events in self.selector.select(timeout=0.05):
                client = key.data
                if client is None:
                    with contextlib.suppress(BlockingIOError):
                        while self._wake_r.recv(4096):
                            pass
                    continue
                if events & selectors.EVENT_READ:
                    client.loop_read()
                    # TLS may hold whole records already read off the socket: epoll would
                    # not say so again, paho's own loop checks pending() the same way.
                    sock = self.clients.get(client)
                    while sock is not None and sock.pending():
                        client.loop_read()
                        sock = self.clients.get(client)
                if events & selectors.EVENT_WRITE and client in self.clients:
                    client.loop_write()
            while True:
                try:
                    action = self._calls.get_nowait()
                except queue.Empty:
                    break
                action()
            now = time.monotonic()
            if now - last_misc >= MISC_EVERY_S:
                last_misc = now
                for client in list(self.clients):
                    client.loop_misc()
                    # A publish racing paho's own "nothing left to write" can leave a packet
                    # unwatched; a second's look makes sure it goes.
                    if client.want_write():
                        self._watch(client, write=True)

    def stop(self) -> None:
        self._stopping.set()
        self.thread.join(10)
        for client in self.attached:  # paho calls them again when it is collected
            client.on_socket_open = client.on_socket_close = None
            client.on_socket_register_write = client.on_socket_unregister_write = None
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()


class Runtime:
    """The runtime thread of a worker process: it builds the process's stations and drains
    their one shared queue, each message through its own station's dispatch, as
    ``Station.run`` does for one station (``Station.run`` without its timers, media workers
    and boot catch-up, which nothing in the measured window needs).

    One thread for every station of the process rather than one each: the work per station is
    the same code in the same order, and a process runs one Python thread at a time anyway;
    with a hundred runtime threads woken by one fan-out, the GIL's hand-overs (every SQLite
    call and socket write lets it go) cost more CPU than the stations' own work."""

    def __init__(self, directories: list[Path], pcm: bytes, times: Times) -> None:
        self.shared: Shared = queue.SimpleQueue()
        self.stations = [SimStation(d, pcm, times, self.shared) for d in directories]
        self.built = threading.Event()
        self.error: BaseException | None = None
        self.handling = False
        self.thread = threading.Thread(target=self._run, name="runtime", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for sim in self.stations:
                sim.build()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.built.set()
        while True:
            owner, message = self.shared.get()
            if owner is None:
                break
            self.handling = True
            try:
                owner.handle(message)
            finally:
                self.handling = False

    def idle(self) -> bool:
        return (
            self.shared.empty() and not self.handling and not any(s.busy() for s in self.stations)
        )

    def stop(self) -> None:
        for sim in self.stations:
            if sim.station is not None:
                sim.station.stop("bench over")
        self.shared.put((None, None))
        self.thread.join(120)


def wait_until(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def cpu_per_station(rounds: list[dict[str, Any]], stations: int) -> dict[str, float]:
    """The whole machine's CPU (all processes, the broker's included) from a message's publish
    to the last station's answer, per station, averaged over the rounds of each kind: what one
    station's share of the work costs when nothing else runs (background not subtracted)."""
    cores = os.cpu_count() or 1
    out = {}
    for kind in ("emergency", "bare"):
        spent = [r["machine_busy"] * cores * r["window_s"] * 1000 / stations
                 for r in rounds if r["message"] == kind]  # fmt: skip
        out[kind] = round(sum(spent) / len(spent), 2) if spent else 0.0
    return out


def worker_main(job_path: Path) -> int:
    """One worker process: build and connect its stations, say ``ready``, then obey its input
    (``arm ID``, ``wait LABEL recv|frame``, ``idle``, ``end``), one JSON line per answer."""
    job = json.loads(job_path.read_text())
    pcm = Path(job["pcm"]).read_bytes()
    times = Times()
    started = time.monotonic()
    network = Network()
    runtime = Runtime([Path(d) for d in job["stations"]], pcm, times)
    stations = runtime.stations

    def say(doc: dict[str, Any]) -> None:
        print(json.dumps(doc), flush=True)

    runtime.built.wait()
    if runtime.error is not None:
        say({"ready": False, "error": repr(runtime.error)})
        return 1
    names = [s.name for s in stations]

    def connected(count: int) -> Callable[[], bool]:
        def done() -> bool:
            with times.lock:
                return len(times.connected) >= count

        return done

    # One station at a time (the TLS handshake runs on this thread), as stations in the field
    # do not all boot in the same second either; the measurement starts once all are in.
    for sim in stations:
        sim.start(network)
    ok = wait_until(connected(len(stations)), CONNECT_TIMEOUT_S)

    say({"ready": ok, "stations": len(stations), "connected": len(times.connected),
         "threads": threading.active_count(), "start_s": time.monotonic() - started})  # fmt: skip
    for line in sys.stdin:
        command, *args = line.split()
        if command == "arm":
            times.armed = args[0]
            say({"armed": args[0]})
        elif command == "wait":
            label, kind = args[0], args[1]
            # An emergency is done at a station once its first frame is out and its runtime
            # thread is through with the message (the frame can come first: another thread).
            tables = [times.frames, times.handled] if kind == "frame" else [times.received]

            def complete(
                label: str = label, tables: list[dict[str, dict[str, float]]] = tables
            ) -> bool:
                with times.lock:
                    return all(len(t.get(label, {})) == len(stations) for t in tables)

            wait_until(complete, float(args[2]) if len(args) > 2 else ROUND_TIMEOUT_S)
            with times.lock:
                got = {n: [times.received.get(label, {}).get(n), times.frames.get(label, {}).get(n),
                           times.handled.get(label, {}).get(n)] for n in names}  # fmt: skip
            say({"label": label, "times": got})
        elif command == "idle":
            # Idle for a while, not for an instant: a play's end is followed by its report.
            quiet = wait_until(runtime.idle, ROUND_TIMEOUT_S)
            time.sleep(0.1)
            say({"idle": quiet and runtime.idle()})
        else:
            break
    runtime.stop()
    network.stop()
    say({"ended": len(stations)})
    return 0


# -- the main process ---------------------------------------------------------------------------


class Workers:
    """The worker processes hosting ``directories`` between them, round robin."""

    def __init__(self, tmp: Path, directories: list[Path], pcm: Path, count: int) -> None:
        self.processes: list[subprocess.Popen[str]] = []
        self.logs: list[Path] = []
        for p in range(count):
            share = directories[p::count]
            if not share:
                continue
            job = tmp / f"worker-{len(directories)}-{p}.json"
            job.write_text(json.dumps({"pcm": str(pcm), "stations": [str(d) for d in share]}))
            log = tmp / f"worker-{len(directories)}-{p}.log"
            self.logs.append(log)
            with log.open("w") as stderr:
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.emergency_fanout", "--worker", str(job)],
                    cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                    text=True,
                ))  # fmt: skip
        try:
            self.ready = [self._read(p) for p in self.processes]
            if not all(r.get("ready") for r in self.ready):
                raise RuntimeError(f"stations did not all connect: {self.ready}\n{self.log_tail()}")
        except BaseException:
            self.close(kill=True)
            raise

    def _read(self, process: subprocess.Popen[str]) -> dict[str, Any]:
        stdout: IO[str] | None = process.stdout
        assert stdout is not None
        line = stdout.readline()
        try:
            doc: dict[str, Any] = json.loads(line)
        except ValueError as exc:
            raise RuntimeError(f"a worker failed: {line!r}\n{self.log_tail()}") from exc
        return doc

    def ask(self, command: str) -> list[dict[str, Any]]:
        """Send ``command`` to every worker, then read every answer (they work in parallel)."""
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(command + "\n")
            process.stdin.flush()
        return [self._read(p) for p in self.processes]

    def times(self, label: str, kind: str, timeout_s: float = ROUND_TIMEOUT_S) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for answer in self.ask(f"wait {label} {kind} {timeout_s}"):
            merged.update(answer["times"])
        return merged

    def log_tail(self) -> str:
        return "\n".join(log.read_text()[-1500:] for log in self.logs if log.exists())

    def close(self, kill: bool = False) -> None:
        for process in self.processes:
            if kill:
                process.kill()
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    if not kill:
                        process.stdin.write("end\n")
                    process.stdin.close()
        for process in self.processes:
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            if process.stdout is not None:
                process.stdout.close()


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def process_ticks(pid: int) -> int:
    """utime + stime of one process, in jiffies (its threads included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


@dataclass
class Window:
    """CPU use over one message's window: the machine's busy share and the broker's, in cores."""

    machine: tuple[int, int]
    broker: int
    started: float

    @classmethod
    def open(cls, broker_pid: int) -> Window:
        return cls(cpu_ticks(), process_ticks(broker_pid), time.monotonic())

    def close(self, broker_pid: int) -> dict[str, float]:
        busy, total = cpu_ticks()
        seconds = time.monotonic() - self.started
        hz = os.sysconf("SC_CLK_TCK")
        return {
            "window_s": round(seconds, 3),
            "machine_busy": round((busy - self.machine[0]) / max(1, total - self.machine[1]), 3),
            "broker_cores": round((process_ticks(broker_pid) - self.broker) / hz / seconds, 3),
        }


def emergency_envelope(command_id: str, clip: Clip) -> bytes:
    """A province-wide emergency issued now, signed by the test ``emergency`` key: the real
    keyring's emergency role, threshold 1."""
    now = datetime.now(UTC)
    body = {
        "kind": "command", "schema": 1, "id": command_id, "issuer": PROVINCE, "target": PROVINCE,
        "issued_at": format_rfc3339(now), "expires": format_rfc3339(now + timedelta(hours=1)),
        "action": "emergency", "zones": ["all"], "priority": 100, "volume": 100, "repeat": 1,
        "media": {"url": f"https://media.example.vn/{PROVINCE}/fanout.mp3",
                  "sha256": clip.sha256, "bytes": clip.size, "duration_s": CLIP_S},
    }  # fmt: skip
    return envelope("command", body, "emergency")


def bare_message(label: str, like: Outgoing) -> Outgoing:
    """A plain message on the same topic, QoS and Message Expiry as ``like``, and as long."""
    head = BARE_MARK + label.encode() + b" "
    payload = head + b"x" * max(0, len(like.envelope) - len(head))
    return Outgoing(like.topic, "bare", PROVINCE, PROVINCE, label, payload, payload, False,
                    like.expiry_s)  # fmt: skip


@dataclass
class Samples:
    latency_ms: list[float] = field(default_factory=list)  # publish to first frame
    delivery_ms: list[float] = field(default_factory=list)  # publish to the link's hand-over
    pipeline_ms: list[float] = field(default_factory=list)  # hand-over to first frame
    bare_ms: list[float] = field(default_factory=list)  # publish to the link's hand-over
    handle_cpu_ms: list[float] = field(default_factory=list)  # the runtime thread's CPU on it
    rounds: list[dict[str, Any]] = field(default_factory=list)  # each message's own figures


def one_size(
    tmp: Path, broker: MosquittoBroker, publisher: Publisher, directories: list[Path],
    clip: Clip, mode: Mode,
) -> tuple[Samples, dict[str, Any]]:  # fmt: skip
    n = len(directories)
    broker_pid = broker_process(broker)
    connect_started = time.monotonic()
    try:
        workers = Workers(tmp, directories, clip.pcm, WORKERS)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\nthe broker's log ends:\n{broker.log_text()[-3000:]}") from exc
    samples = Samples()
    facts: dict[str, Any] = {
        "connect_s": round(time.monotonic() - connect_started, 2),
        "worker_processes": len(workers.processes),
        "stations_per_worker": [r["stations"] for r in workers.ready],
        "threads_per_worker_idle": [r["threads"] for r in workers.ready],
    }
    try:
        sync_subscriptions(workers, publisher, clip, n)
        # What else keeps this machine busy while every station idles: other people's work
        # on a shared machine shows here, and in every figure below.
        before = cpu_ticks()
        time.sleep(1.0)
        after = cpu_ticks()
        facts["machine_busy_while_idle"] = round(
            (after[0] - before[0]) / max(1, after[1] - before[1]), 3
        )
        for number in range(mode.warmups + mode.rounds):
            counted = number >= mode.warmups
            command_id = f"fanout-{n}-{number}"
            outgoing = route(emergency_envelope(command_id, clip), datetime.now(UTC))
            bare = bare_message(f"bare-{n}-{number}", outgoing)
            order = ("emergency", "bare") if number % 2 == 0 else ("bare", "emergency")
            for which in order:
                if which == "emergency":
                    workers.ask(f"arm {command_id}")
                window = Window.open(broker_pid)
                sent_at = time.monotonic()
                publisher.send(outgoing if which == "emergency" else bare)
                label = command_id if which == "emergency" else bare.label
                got = workers.times(label, "frame" if which == "emergency" else "recv")
                use = window.close(broker_pid)
                missing = [
                    station
                    for station, (recv, frame, cpu) in got.items()
                    if recv is None or (which == "emergency" and None in (frame, cpu))
                ]
                if missing or len(got) != n:
                    raise RuntimeError(
                        f"{which} {label}: {len(missing)} of {n} stations saw nothing "
                        f"(e.g. {missing[:3]})\n{workers.log_tail()}"
                    )
                if counted:
                    ends = [
                        (frame if which == "emergency" else recv) for recv, frame, _ in got.values()
                    ]
                    own = [(t - sent_at) * 1000 for t in ends]
                    samples.rounds.append({
                        "message": which, "label": label,
                        "p50_ms": round(percentile(own, 50), 2), "max_ms": round(max(own), 2),
                        **use,
                    })  # fmt: skip
                    for recv, frame, cpu in got.values():
                        if which == "bare":
                            samples.bare_ms.append((recv - sent_at) * 1000)
                        else:
                            samples.latency_ms.append((frame - sent_at) * 1000)
                            samples.delivery_ms.append((recv - sent_at) * 1000)
                            samples.pipeline_ms.append((frame - recv) * 1000)
                            samples.handle_cpu_ms.append(cpu * 1000)
                if not all(a["idle"] for a in workers.ask("idle")):
                    raise RuntimeError(f"stations still busy after {label}")
                time.sleep(PAUSE_S)
    finally:
        workers.close()
    return samples, facts


def sync_subscriptions(workers: Workers, publisher: Publisher, clip: Clip, n: int) -> None:
    """The link subscribes after its CONNACK: a bare message every half second until every
    station has had one proves every subscription is in place."""
    like = route(emergency_envelope("sync", clip), datetime.now(UTC))
    for attempt in range(60):
        label = f"sync-{n}-{attempt}"
        publisher.send(bare_message(label, like))
        got = workers.times(label, "recv", timeout_s=0.5)
        if all(recv is not None for recv, _, _ in got.values()):
            return
    raise RuntimeError("not every station subscribed within 30 s")


def broker_process(broker: MosquittoBroker) -> int:
    # The harness keeps the process to itself; its pid is only read, for /proc.
    process = broker._broker._process if broker._broker is not None else None
    if process is None:
        raise RuntimeError("the broker is not running")
    return process.pid


def shm_dir() -> str | None:
    return "/dev/shm" if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None


@contextlib.contextmanager
def running_broker(tmp: Path, stations: list[StationId]) -> Iterator[MosquittoBroker]:
    executable = find_mosquitto()
    if executable is None:
        raise RuntimeError("mosquitto is not installed (make sysdeps)")
    broker = MosquittoBroker(
        tmp / "broker", stations=[s.path for s in stations], operators=[(OPERATOR, PROVINCE)],
        executable=executable,
    )  # fmt: skip
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def run(tmp: Path, mode: Mode, quick: bool) -> dict[str, Any]:
    started = time.monotonic()
    stations = station_ids(max(mode.sizes))
    clip = make_clip(tmp)
    results: dict[str, Any] = {}
    detail: dict[str, Any] = {}
    with running_broker(tmp, stations) as broker:
        provision_started = time.monotonic()
        directories = provision_stations(tmp / "stations", stations, broker, clip)
        provision_s = time.monotonic() - provision_started
        cert, key = broker.client_credentials(OPERATOR)
        url = f"mqtts://{broker.host}:{broker.port}"
        with Publisher(url, TlsFiles(broker.ca_path, cert, key), OPERATOR) as publisher:
            # Ascending N on one broker: every station of a smaller run is in the next one, so
            # no session a station left behind (session expiry 600 s) queues messages offline.
            for n in sorted(mode.sizes):
                samples, facts = one_size(tmp, broker, publisher, directories[:n], clip, mode)
                results[str(n)] = {
                    "p50_ms": round(percentile(samples.latency_ms, 50), 2),
                    "p99_ms": round(percentile(samples.latency_ms, 99), 2),
                    "max_ms": round(max(samples.latency_ms), 2),
                    "bare_p99_ms": round(percentile(samples.bare_ms, 99), 2),
                }
                detail[str(n)] = {
                    "pairs": len(samples.latency_ms),
                    "first_frame": summary(samples.latency_ms),
                    "bare_delivery": summary(samples.bare_ms),
                    "emergency_delivery": summary(samples.delivery_ms),
                    "station_pipeline": summary(samples.pipeline_ms),
                    "station_handle_cpu": summary(samples.handle_cpu_ms),
                    "machine_cpu_ms_per_station": cpu_per_station(samples.rounds, n),
                    "rounds": samples.rounds,
                    **facts,
                }
                print(f"N={n}: {results[str(n)]}", flush=True)
    return assemble(results, detail, mode, quick, clip, provision_s, time.monotonic() - started)


def assemble(
    results: dict[str, Any], detail: dict[str, Any], mode: Mode, quick: bool, clip: Clip,
    provision_s: float, wall_s: float,
) -> dict[str, Any]:  # fmt: skip
    largest = str(max(mode.sizes))
    top = results[largest]
    ratio = top["p99_ms"] / top["bare_p99_ms"]
    flat: dict[str, float] = {}
    figures: list[str] = []
    baselines: dict[str, str] = {}
    labels: dict[str, str] = {}
    pairs = f"{mode.rounds} emergencies x N stations"
    for n in sorted(mode.sizes):
        values = results[str(n)]
        for key in ("p50_ms", "p99_ms", "max_ms", "bare_p99_ms"):
            flat[f"n{n}_{key}"] = values[key]
        figures.append(f"n{n}_p99_ms")
        baselines[f"n{n}_p99_ms"] = f"n{n}_bare_p99_ms"
        labels[f"n{n}_p99_ms"] = (
            f"N={n}: p99 publish to the clip's first frame at each station's sink ({pairs})"
        )
        labels[f"n{n}_bare_p99_ms"] = "p99 bare MQTT delivery, same clients, same topic"
    figures += [f"n{largest}_p50_ms", f"n{largest}_max_ms", "ratio_to_bare"]
    labels[f"n{largest}_p50_ms"] = f"N={largest}: p50 publish to first frame"
    labels[f"n{largest}_max_ms"] = f"N={largest}: largest publish to first frame"
    labels["ratio_to_bare"] = (
        f"N={largest}: p99 / bare p99 (target: within {TARGET_RATIO:g}x, and p99 under "
        f"{TARGET_P99_MS / 1000:g} s at N=1000)"
    )
    return {
        "benchmark": "emergency_fanout",
        "title": "Emergency fan-out: publish to the first frame at N simulated stations",
        "command": COMMAND + (" --quick" if quick else ""),
        "quick": quick,
        **results,
        **flat,
        "ratio_to_bare": round(ratio, 2),
        "target": {
            "p99_ms_under": TARGET_P99_MS,
            "ratio_to_bare_within": TARGET_RATIO,
            "at_n": 1000,
            "met": (
                None
                if largest != "1000"
                else top["p99_ms"] < TARGET_P99_MS and ratio <= TARGET_RATIO
            ),
        },
        "figures": figures,
        "baselines": baselines,
        "labels": labels,
        "detail": {
            "sizes": detail,
            "rounds_counted": mode.rounds,
            "warmup_rounds": mode.warmups,
            "worker_processes": WORKERS,
            "clip": {"seconds": CLIP_S, "mp3_bytes": clip.size, "chunk_frames": CHUNK_FRAMES},
            "card_buffer_s": CARD_BUFFER_S,
            "provision_s": round(provision_s, 1),
            "state_dir": "tmpfs (/dev/shm)" if shm_dir() else "the default temporary directory",
            "real": [
                "loa-provision's provision() per station: its own keys, a CSR signed by the "
                "broker's CA, keyring-v1 installed in its own TrustStore (SQLite)",
                "mosquitto with the province's configuration and ACL (province.mosquitto, "
                "province.acl), every station its own TLS connection",
                "the province's route() and Publisher (QoS 1, Message Expiry)",
                "agent.link.Link per station: its paho client, subscriptions and callbacks",
                "agent.station.Station per station, every message through Station._handle: "
                "Ingestor/verify (signature, schema, scope, audience, window, replay, command id "
                "persisted), events and as-run via Outbox and the link, cap.decide, "
                "agent.core.emergency, Programme.cut_in, the Player's playback thread to "
                "sink.write",
            ],
            "simulated": [
                "relays: a null Relays (no GPIO)",
                "sound card: a sink that timestamps its first write, then takes PCM at a "
                f"card's pace, {CARD_BUFFER_S:g} s ahead",
                "decoder: the clip decoded once by the real Decoder, streamed from memory by "
                "PcmClip (no ffmpeg start per play; bench.preemption measures that start)",
                f"clip {CLIP_S:g} s (the plays overlap; a thousand metered at once would need "
                "more than two cores)",
                "threads: one runtime thread per worker process drains all its stations' "
                "queues (Station.run: one per station); one network thread per process drives "
                "all its paho clients by paho's external-loop API (Link.start: paho's thread "
                "per client); no reconnects",
                "no timers or media workers started per station (idle in the window)",
                "warmup_s = hold_s = amp_linger_s = 0 and [emergency] chime = false: the "
                "defaults add a 2 s amplifier warm-up (amplifier off) and a 0.8 s chime first",
                "state on tmpfs: the stations' fsyncs cost what tmpfs costs",
            ],
            "bare": "the same clients' Link hand-over (paho on_message) of a plain message of "
            "the same length on the same topic, QoS 1, same Message Expiry, same run, rounds "
            "alternating with the emergencies",
            "rounds_note": "each counted message: p50 and max over its stations; window_s: its "
            "publish to the last station's answer; machine_busy: "
            "share of all CPUs busy from its publish to the last station's answer (jiffies, so "
            "coarse for short windows); broker_cores: mosquitto's CPU over the same window",
            "wall_s": round(wall_s, 1),
        },
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="N = 20 and 50, 2 rounds")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--sizes", help="N to measure, comma-separated (default 100,500,1000)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)
    if shutil.which("ffmpeg") is None:
        print("bench.emergency_fanout: ffmpeg is not installed (make sysdeps)", file=sys.stderr)
        return 1
    # SIGTERM ends the run through the finally blocks, so no worker or broker outlives it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    mode = QUICK if args.quick else FULL
    if args.sizes:
        mode = Mode(tuple(int(n) for n in args.sizes.split(",")), mode.rounds, mode.warmups)
    with tempfile.TemporaryDirectory(prefix="loa-bench-fanout-", dir=shm_dir()) as tmp:
        result = run(Path(tmp), mode, args.quick)
    path = write_result("emergency_fanout", result, args.results)
    for n in mode.sizes:
        r = result[str(n)]
        print(
            f"emergency_fanout N={n}: publish to first frame p50 {r['p50_ms']:.1f} ms, p99 "
            f"{r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms; bare delivery p99 "
            f"{r['bare_p99_ms']:.1f} ms"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
