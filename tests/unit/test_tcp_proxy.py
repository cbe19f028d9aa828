"""The counting TCP proxy against a local echo server: bytes each way and per connection, cut,
restore, the blackhole, many clients at once, and a clean stop."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.harness.tcp_proxy import DOWN, UP, TcpProxy

TIMEOUT_S = 5.0


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield str(host), int(port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT_S)


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[TcpProxy]:
    with TcpProxy(echo, record=True) as running:
        yield running


def connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(proxy.address, TIMEOUT_S)
    sock.settimeout(TIMEOUT_S)
    return sock


def echo_once(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_bytes_are_counted_each_way_in_total_and_per_connection(proxy: TcpProxy) -> None:
    with connect(proxy) as first, connect(proxy) as second:
        assert echo_once(first, b"x" * 1000) == b"x" * 1000
        assert echo_once(second, b"hello") == b"hello"
        assert echo_once(first, b"y" * 70_000) == b"y" * 70_000
    stats = proxy.wait_until(lambda s: s.active == 0, TIMEOUT_S, "connections closed")
    assert (stats.up, stats.down, stats.opened) == (71_005, 71_005, 2)
    assert (stats.dropped_up, stats.dropped_down, stats.upstream_failures) == (0, 0, 0)
    per = proxy.connections()
    assert [(c.up, c.down) for c in per] == [(71_000, 71_000), (5, 5)]
    assert all(c.closed_at is not None and not c.blackholed for c in per)
    chunks = proxy.chunks()
    assert sum(c.size for c in chunks if c.direction == UP) == 71_005
    assert sum(c.size for c in chunks if c.direction == DOWN) == 71_005


def test_snapshots_subtract_to_what_happened_between_them(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        echo_once(sock, b"a" * 10)
        before = proxy.wait_quiet(0.05, TIMEOUT_S)
        echo_once(sock, b"b" * 25)
        after = proxy.wait_until(lambda s: s.down >= before.down + 25, TIMEOUT_S, "echo")
    used = after - before
    assert (used.up, used.down, used.total, used.opened) == (25, 25, 50, 0)


def test_cut_drops_every_connection_and_refuses_until_restored(proxy: TcpProxy) -> None:
    port = proxy.port
    sock = connect(proxy)
    assert echo_once(sock, b"before") == b"before"
    proxy.cut()
    # The client sees its connection end (FIN), not a hang.
    assert sock.recv(10) == b""
    sock.close()
    assert proxy.refusing
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, TIMEOUT_S).close()
    proxy.restore()
    assert proxy.port == port  # the same address: clients that know it come back
    with connect(proxy) as again:
        assert echo_once(again, b"after") == b"after"
    stats = proxy.wait_until(lambda s: s.active == 0, TIMEOUT_S, "connections closed")
    assert stats.opened == 2


def test_pause_is_a_blackhole_that_closes_nothing(proxy: TcpProxy) -> None:
    old = connect(proxy)
    assert echo_once(old, b"alive") == b"alive"
    before = proxy.stats()
    proxy.pause()
    old.sendall(b"into the void")
    # A new connection is accepted (the kernel does that) but nothing comes back.
    new = connect(proxy)
    new.sendall(b"also lost")
    stats = proxy.wait_until(
        lambda s: s.dropped_up >= before.dropped_up + 22, TIMEOUT_S, "dropped bytes"
    )
    assert (stats.up, stats.down) == (before.up, before.down)
    for sock in (old, new):
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(10)  # no answer, and no end of stream either
    assert stats.active == 2
    proxy.restore()
    with connect(proxy) as fresh:
        assert echo_once(fresh, b"back") == b"back"
    # The connections that were blackholed stay dead: bytes lost mid-stream cannot be undone.
    old.settimeout(TIMEOUT_S)
    old.sendall(b"still dead")
    proxy.wait_until(lambda s: s.dropped_up >= before.dropped_up + 32, TIMEOUT_S, "dropped")
    old.settimeout(0.2)
    with pytest.raises(TimeoutError):
        old.recv(10)
    old.close()
    new.close()
    final = proxy.wait_until(lambda s: s.active == 0, TIMEOUT_S, "connections closed")
    assert [c.blackholed for c in proxy.connections()] == [True, True, False]
    assert final.dropped_up - before.dropped_up == 32


def test_many_clients_at_once_are_counted_exactly(proxy: TcpProxy) -> None:
    clients, rounds, size = 16, 20, 3000
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with connect(proxy) as sock:
                for _ in range(rounds):
                    payload = bytes([n]) * size
                    assert echo_once(sock, payload) == payload
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S * 4)
    assert errors == []
    stats = proxy.wait_until(lambda s: s.active == 0, TIMEOUT_S, "connections closed")
    expected = clients * rounds * size
    assert (stats.up, stats.down, stats.opened) == (expected, expected, clients)
    assert sum(c.up for c in proxy.connections()) == expected


def test_an_unreachable_upstream_closes_the_client_and_is_counted() -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        nobody = spare.getsockname()  # bound, never listening: connections are refused
        with TcpProxy(nobody) as proxy, connect(proxy) as sock:
            assert sock.recv(10) == b""
            stats = proxy.wait_until(lambda s: s.upstream_failures == 1, TIMEOUT_S, "failure")
            assert stats.opened == 0


def test_stop_closes_connections_and_joins_its_threads(echo: tuple[str, int]) -> None:
    before = set(threading.enumerate())
    proxy = TcpProxy(echo).start()
    sock = connect(proxy)
    echo_once(sock, b"x")
    proxy.pause()
    blackholed = connect(proxy)
    proxy.stop()
    assert sock.recv(10) == b""
    assert blackholed.recv(10) == b""
    sock.close()
    blackholed.close()
    left = [t for t in threading.enumerate() if t not in before and t.name.startswith("tcp-proxy")]
    assert left == []
