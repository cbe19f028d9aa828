"""A threaded TCP proxy on a loopback port, in front of the broker, that counts what crosses it.

This module owns the proxy's sockets and threads and its byte counters: bytes each way, in
total and per connection, as seen at the TCP socket (so TLS records, MQTT keepalives and
acknowledgements are all in; IP and TCP headers are not). It also plays the faults a station's
4G link has:

- ``cut()``: every connection is closed (FIN both ways) and new ones are refused (the listening
  socket is closed, so a connect gets ECONNREFUSED) until ``restore()`` listens again on the
  same port;
- ``pause()``: a blackhole, as a dead radio link or an expired carrier NAT mapping is: nothing
  is forwarded and nothing is closed. The connections open at that moment never carry anything
  again (bytes that vanished mid-stream would corrupt TLS anyway); new connections are accepted
  by the kernel but go nowhere. ``restore()`` makes new connections work again; the dead ones
  stay dead until their owner gives up on them (keepalive) and closes them.

Two threads per connection, one per direction, each blocked in ``recv``; only those threads
close their sockets (under the connection's lock), so a socket is never closed under a thread
that is still using it. Other threads wake them with ``shutdown``. Counters are read as frozen
snapshots under one lock.

    with TcpProxy(("127.0.0.1", broker.port)) as proxy:
        ... connect clients to proxy.port ...
        before = proxy.stats()
        ...
        used = proxy.stats() - before
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

UP, DOWN = "up", "down"  # up: client -> upstream; down: upstream -> client
_ACCEPT_POLL_S = 0.05  # how often the accept loop looks at its stop flag
_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """A snapshot of the counters. ``up``/``down`` are bytes passed on (counted as they are
    handed to the other socket, so a peer that has received bytes finds them counted);
    ``dropped_*`` are bytes swallowed by a blackhole; ``chunks_*`` count ``recv`` results passed
    on (about one per write of the sender while the proxy keeps up: a rough count of
    segments)."""

    up: int = 0
    down: int = 0
    dropped_up: int = 0
    dropped_down: int = 0
    chunks_up: int = 0
    chunks_down: int = 0
    opened: int = 0  # connections accepted, over the proxy's life
    active: int = 0  # connections not yet closed
    upstream_failures: int = 0  # accepted, but the upstream could not be reached

    @property
    def total(self) -> int:
        return self.up + self.down

    def __sub__(self, other: ProxyStats) -> ProxyStats:
        """What happened between two snapshots (``active`` is the later one's)."""
        return ProxyStats(
            self.up - other.up,
            self.down - other.down,
            self.dropped_up - other.dropped_up,
            self.dropped_down - other.dropped_down,
            self.chunks_up - other.chunks_up,
            self.chunks_down - other.chunks_down,
            self.opened - other.opened,
            self.active,
            self.upstream_failures - other.upstream_failures,
        )


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    id: int
    opened_at: float  # time.monotonic()
    closed_at: float | None
    up: int
    down: int
    dropped_up: int
    dropped_down: int
    blackholed: bool


@dataclass(frozen=True, slots=True)
class Chunk:
    """One forwarded (or dropped) ``recv`` result, when the proxy records them."""

    at: float  # time.monotonic()
    connection: int
    direction: str  # UP or DOWN
    size: int
    dropped: bool


@dataclass
class _Connection:
    id: int
    client: socket.socket
    upstream: socket.socket | None
    blackholed: bool
    opened_at: float = field(default_factory=time.monotonic)
    closed_at: float | None = None
    up: int = 0
    down: int = 0
    dropped_up: int = 0
    dropped_down: int = 0
    pumps_left: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False

    def snapshot(self) -> ConnectionStats:
        return ConnectionStats(
            self.id, self.opened_at, self.closed_at, self.up, self.down, self.dropped_up,
            self.dropped_down, self.blackholed,
        )  # fmt: skip

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.client, self.upstream) if s is not None]

    def shutdown(self) -> None:
        """Wake both pumps and send FIN both ways; the pumps close the sockets."""
        with self.lock:
            if self.closed:
                return
            for sock in self.sockets():
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class TcpProxy:
    """Forwards ``host:port`` (``port`` 0: the kernel picks) to ``upstream``, counting bytes."""

    def __init__(
        self,
        upstream: tuple[str, int],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        record: bool = False,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.upstream = upstream
        self.host = host
        self.port = port
        self.record = record  # keep every Chunk (memory grows with traffic: for benchmarks)
        self._connect_timeout = connect_timeout_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._connections: dict[int, _Connection] = {}  # open ones
        self._all: dict[int, _Connection] = {}  # every one, for per-connection counters
        self._next_id = 0
        self._totals = ProxyStats()
        self._chunks: list[Chunk] = []
        self._last_activity = time.monotonic()
        self._paused = False
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._stop_accepting = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> TcpProxy:
        if self._started:
            raise RuntimeError("proxy already started")
        self._started = True
        self._listen()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop listening, close every connection, and join every thread the proxy started."""
        self._stop_listening()
        with self._lock:
            live = list(self._connections.values())
        for conn in live:
            conn.shutdown()
        deadline = time.monotonic() + timeout_s
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        self._started = False

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    # -- faults -----------------------------------------------------------------------------------
    def cut(self) -> None:
        """Close every connection and refuse new ones until ``restore()``."""
        self._stop_listening()
        with self._lock:
            live = list(self._connections.values())
        for conn in live:
            conn.shutdown()

    def pause(self) -> None:
        """Blackhole: forward nothing, close nothing; open connections are dead for good."""
        with self._lock:
            self._paused = True
            for conn in self._connections.values():
                conn.blackholed = True

    def restore(self) -> None:
        """Forward new connections again (listening again on the same port after a cut)."""
        with self._lock:
            self._paused = False
        if self._listener is None and self._started:
            self._listen()

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused

    @property
    def refusing(self) -> bool:
        return self._listener is None

    # -- counters -------------------------------------------------------------------------------
    def stats(self) -> ProxyStats:
        with self._lock:
            return self._totals

    def connections(self) -> list[ConnectionStats]:
        """Every connection over the proxy's life, in the order they were accepted."""
        with self._lock:
            return [self._all[i].snapshot() for i in sorted(self._all)]

    def chunks(self, since: float = float("-inf")) -> list[Chunk]:
        """The recorded chunks at or after monotonic time ``since`` (``record=True`` only)."""
        with self._lock:
            return [c for c in self._chunks if c.at >= since]

    def idle_for(self) -> float:
        """Seconds since a byte last crossed the proxy (or was dropped)."""
        with self._lock:
            return time.monotonic() - self._last_activity

    def wait_until(
        self, predicate: Callable[[ProxyStats], bool], timeout_s: float, what: str = "condition"
    ) -> ProxyStats:
        """The first snapshot for which ``predicate`` holds; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate(self._totals):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"proxy: no {what} within {timeout_s} s: {self._totals}")
                self._changed.wait(left)
            return self._totals

    def wait_quiet(self, quiet_s: float, timeout_s: float) -> ProxyStats:
        """Wait until no byte has moved for ``quiet_s``; the snapshot then."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                now = time.monotonic()
                idle = now - self._last_activity
                if idle >= quiet_s:
                    return self._totals
                if now >= deadline:
                    raise TimeoutError(f"proxy: never quiet for {quiet_s} s in {timeout_s} s")
                self._changed.wait(min(quiet_s - idle, deadline - now))

    # -- internals --------------------------------------------------------------------------------
    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The same port again after a cut, while the cut connections sit in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self.port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        listener.settimeout(_ACCEPT_POLL_S)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stop_accepting = threading.Event()
        thread = threading.Thread(
            target=self._accept_loop, args=(listener, self._stop_accepting),
            name=f"tcp-proxy-accept-{self.port}", daemon=True,
        )  # fmt: skip
        self._accepting = thread
        self._threads.append(thread)
        thread.start()

    def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        thread, self._accepting = self._accepting, None
        self._stop_accepting.set()
        if thread is not None:
            thread.join()  # the accept loop never blocks longer than _ACCEPT_POLL_S
        if listener is not None:
            listener.close()  # closing it refuses new connections (RST to a SYN)

    def _accept_loop(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            self._open(client)

    def _open(self, client: socket.socket) -> None:
        with self._lock:
            blackholed = self._paused
        upstream: socket.socket | None = None
        if not blackholed:
            try:
                upstream = socket.create_connection(self.upstream, self._connect_timeout)
                upstream.settimeout(None)
            except OSError:
                with self._lock:
                    self._totals = _bump(self._totals, upstream_failures=1)
                    self._changed.notify_all()
                client.close()
                return
        for sock in (client, upstream):
            if sock is not None:
                # Small MQTT packets go out at once, as on a real link.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            conn = _Connection(self._next_id, client, upstream, blackholed)
            self._next_id += 1
            self._all[conn.id] = conn
            self._connections[conn.id] = conn
            self._totals = _bump(self._totals, opened=1, active=1)
            self._changed.notify_all()
            pumps = [(client, upstream, UP)]
            if upstream is not None:
                pumps.append((upstream, client, DOWN))
            conn.pumps_left = len(pumps)
            for src, dst, direction in pumps:
                thread = threading.Thread(
                    target=self._pump, args=(conn, src, dst, direction),
                    name=f"tcp-proxy-{conn.id}-{direction}", daemon=True,
                )  # fmt: skip
                self._threads.append(thread)
                thread.start()

    def _pump(
        self, conn: _Connection, src: socket.socket, dst: socket.socket | None, direction: str
    ) -> None:
        try:
            while True:
                try:
                    data = src.recv(_CHUNK)
                except OSError:
                    break
                if not data:
                    break
                if not self._forward(conn, data, dst, direction):
                    break
        finally:
            self._pump_done(conn, src, dst, direction)

    def _forward(
        self, conn: _Connection, data: bytes, dst: socket.socket | None, direction: str
    ) -> bool:
        size = len(data)
        with self._lock:
            dropped = conn.blackholed or dst is None
            self._last_activity = now = time.monotonic()
            if self.record:
                self._chunks.append(Chunk(now, conn.id, direction, size, dropped))
            # Counted before the write, so whoever has received bytes finds them counted (a
            # test needs no wait between "the echo came back" and reading the counters).
            if dropped and direction == UP:
                conn.dropped_up += size
                self._totals = _bump(self._totals, dropped_up=size)
            elif dropped:
                conn.dropped_down += size
                self._totals = _bump(self._totals, dropped_down=size)
            elif direction == UP:
                conn.up += size
                self._totals = _bump(self._totals, up=size, chunks_up=1)
            else:
                conn.down += size
                self._totals = _bump(self._totals, down=size, chunks_down=1)
            self._changed.notify_all()
        if dropped:
            return True
        assert dst is not None
        try:
            dst.sendall(data)
        except OSError:
            return False  # the peer is gone; the pump ends and closes the connection
        return True

    def _pump_done(
        self, conn: _Connection, src: socket.socket, dst: socket.socket | None, direction: str
    ) -> None:
        with conn.lock:
            if conn.blackholed and direction == DOWN:
                # The broker gave up on a dead link: its FIN never reaches the client either.
                pass
            elif conn.blackholed:
                # The client gave up: nothing of it reaches the broker, but the proxy lets go.
                if conn.upstream is not None:
                    with contextlib.suppress(OSError):
                        conn.upstream.shutdown(socket.SHUT_RDWR)
            elif dst is not None:
                # A half-close passes through (FIN), so a clean DISCONNECT ends cleanly.
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
            conn.pumps_left -= 1
            last = conn.pumps_left == 0
            if last:
                conn.closed = True
                for sock in conn.sockets():
                    sock.close()
        if last:
            with self._lock:
                conn.closed_at = time.monotonic()
                self._connections.pop(conn.id, None)
                self._totals = _bump(self._totals, active=-1)
                self._changed.notify_all()


def _bump(stats: ProxyStats, **delta: int) -> ProxyStats:
    values = {name: getattr(stats, name) + delta.get(name, 0) for name in ProxyStats.__slots__}
    return ProxyStats(**values)
