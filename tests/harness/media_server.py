"""A tiny HTTP media server on loopback for tests (pytest plugin).

This module owns a `http.server.ThreadingHTTPServer` on 127.0.0.1 with a port the kernel picks,
serving bytes from an in-memory table of routes, each with knobs for the faults a station meets
in the field: an error status, a redirect, a lying Content-Length, a body that stalls. It records
every request so tests can tell whether a fetch touched the network. It leaves what the tests
assert to the tests.

Loaded from the root conftest with `pytest_plugins = ["tests.harness.media_server"]`; it
provides the function-scoped `media_server` fixture.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import socket
import struct
import sys
import termios
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import pytest

# A stall ends when the server shuts down, or after this long at the latest, so a test that
# forgets to time out cannot hang the suite.
DEFAULT_STALL_S = 10.0
_WRITE_CHUNK = 16 * 1024
# serve_forever() notices shutdown() only between polls; its default (0.5 s) would add half a
# second to every test's teardown.
_POLL_S = 0.02
# A drop waits for the peer to acknowledge what was sent, polling this often, this many times.
_DRAIN_POLL_S = 0.001
_DRAIN_POLLS = 2000


@dataclass
class Route:
    """What one path answers.

    ``content_length``: the announced length when it should differ from the body's (a lie);
    ``omit_length``: send no Content-Length, so the body ends when the connection closes;
    ``stall_before_headers``: accept the request and send nothing; ``stall_after``: send that
    many body bytes, then nothing. A stall lasts ``stall_s`` or until the server shuts down;
    then the connection is closed without sending the rest.

    ``ranges``: honour ``Range: bytes=N-`` on a 200 route with a 206 and its Content-Range (a
    start at or past the end gets a 416); ``drop_after``: send that many bytes of this answer's
    body, then drop the connection abortively (TCP RST, as a carrier NAT does), with no clean
    end; ``retry_after``: the value of a Retry-After header, sent whatever the status.
    """

    body: bytes = b""
    status: int = 200
    location: str | None = None
    content_length: int | None = None
    omit_length: bool = False
    stall_before_headers: bool = False
    stall_after: int | None = None
    stall_s: float = DEFAULT_STALL_S
    ranges: bool = False
    drop_after: int | None = None
    retry_after: str | None = None


_RANGE = re.compile(r"bytes=(\d+)-")


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    range: str | None = None  # the request's Range header, if any


class _Server(ThreadingHTTPServer):
    # Handler threads are joined by server_close(), so none outlives its test; stalls are
    # released first (see MediaServer.close) so the join is quick.
    daemon_threads = False
    block_on_close = True

    def __init__(self, media: MediaServer) -> None:
        self.media = media
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr; a test asserts on `errors` instead.
        self.media.errors.append(repr(sys.exc_info()[1]))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is kept in MediaServer.requests

    def do_GET(self) -> None:
        media = self.server.media
        media.log(LoggedRequest("GET", self.path, self.headers.get("Range")))
        route = media.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        # The client may give up mid-body (too large, timed out): expected in these tests.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._answer(route, media.closing)

    def _answer(self, route: Route, closing: threading.Event) -> None:
        if route.stall_before_headers:
            closing.wait(route.stall_s)
            return
        status, body, content_range = route.status, route.body, None
        wanted = self.headers.get("Range")
        match = _RANGE.fullmatch(wanted.strip()) if wanted is not None else None
        if route.ranges and status == 200 and match is not None:
            first = int(match.group(1))
            if first >= len(route.body):
                status, body, content_range = 416, b"", f"bytes */{len(route.body)}"
            else:
                status, body = 206, route.body[first:]
                content_range = f"bytes {first}-{len(route.body) - 1}/{len(route.body)}"
        self.send_response(status)
        if route.location is not None:
            self.send_header("Location", route.location)
        if route.retry_after is not None:
            self.send_header("Retry-After", route.retry_after)
        if content_range is not None:
            self.send_header("Content-Range", content_range)
        if not route.omit_length:
            overridden = route.content_length is not None and status == route.status
            length = route.content_length if overridden else len(body)
            self.send_header("Content-Length", str(length))
        if route.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "audio/mpeg")
        self.end_headers()
        if route.stall_after is not None:
            body = body[: route.stall_after]
        if route.drop_after is not None:
            body = body[: route.drop_after]
        for start in range(0, len(body), _WRITE_CHUNK):
            self.wfile.write(body[start : start + _WRITE_CHUNK])
        if route.drop_after is not None:
            self._drop(closing)
        elif route.stall_after is not None:
            closing.wait(route.stall_s)

    def _drop(self, closing: threading.Event) -> None:
        # SO_LINGER with a zero timeout makes close() send a RST instead of a FIN, and discards
        # what is still in the send queue; wait (briefly) for the client to have acknowledged
        # every byte sent, so that it receives exactly ``drop_after`` bytes before the reset.
        # The socket really closes only once rfile (a makefile() reference) is closed too.
        self.wfile.flush()
        self.close_connection = True
        for _ in range(_DRAIN_POLLS):
            if _unacknowledged(self.connection) == 0 or closing.wait(_DRAIN_POLL_S):
                break
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.connection.close()


def _unacknowledged(sock: socket.socket) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the peer (Linux SIOCOUTQ)."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    queued: int = struct.unpack("i", raw)[0]
    return queued


class MediaServer:
    """The server, its thread, its routes and its request log; a context manager."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[LoggedRequest] = []
        self.errors: list[str] = []
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(_POLL_S,), name="media-server", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes = b"", **knobs: Any) -> str:
        """Serve ``body`` at ``path`` with the given `Route` knobs; returns the full URL."""
        if not path.startswith("/"):
            raise ValueError("a path starts with /")
        self.routes[path] = Route(body=body, **knobs)
        return self.url(path)

    def log(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def hits(self, path: str) -> int:
        with self._lock:
            return sum(1 for entry in self.requests if entry.path == path)

    def close(self) -> None:
        self.closing.set()  # release stalled handlers before joining them
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MediaServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def closed_port(host: str = "127.0.0.1") -> int:
    """A loopback port nothing listens on (just released by the kernel): connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def media_server() -> Iterator[MediaServer]:
    with MediaServer() as server:
        yield server
