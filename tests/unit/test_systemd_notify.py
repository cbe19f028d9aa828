"""hal/systemd.py against real unix datagram sockets bound by the test: sd_notify to a path and
to an abstract address, the watchdog period from the environment, journald's native protocol
(fields, binary-safe values, a sealed memfd for a record too large for a datagram)."""

from __future__ import annotations

import array
import fcntl
import logging
import os
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import faults
from hal.systemd import (
    JournalHandler,
    Notifier,
    encode_field,
    priority,
    stderr_is_journal,
    watchdog_interval,
)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_notifications_reach_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready(status="idle")
    assert sock.recv(4096) == b"READY=1\nSTATUS=idle"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert notifier.status("on air: morning-news")
    assert sock.recv(4096) == b"STATUS=on air: morning-news"
    notifier.close()


def test_an_at_sign_names_an_abstract_socket() -> None:
    name = f"loa-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.watchdog(status="idle")
        assert sock.recv(4096) == b"WATCHDOG=1\nSTATUS=idle"
        notifier.close()
    finally:
        sock.close()


def test_without_a_manager_nothing_is_sent() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()


def test_a_manager_that_went_away_is_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.WARNING):
        assert not notifier.watchdog()
        assert not notifier.watchdog()
    notifier.close()
    assert len(caplog.records) == 1  # said once, not at every tick


def test_watchdog_interval_from_the_environment() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    mine = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 1.0
    # Inherited by a child (another pid): not meant for it.
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "7"}, pid=7) == 1.0


def test_journal_stream_must_be_this_stderr(tmp_path: Path) -> None:
    with (tmp_path / "err").open("w") as handle:
        st = os.fstat(handle.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, handle.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:1"}, handle.fileno())
        assert not stderr_is_journal({}, handle.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"}, handle.fileno())


def parse_fields(data: bytes) -> dict[str, str]:
    """journald's native protocol, read the way journald reads it."""
    fields: dict[str, str] = {}
    at = 0
    while at < len(data):
        end = data.index(b"\n", at)
        line = data[at:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            at = end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[end + 1 : end + 9])
            value = data[end + 9 : end + 9 + size]
            assert data[end + 9 + size : end + 10 + size] == b"\n"
            at = end + 10 + size
        fields[name.decode()] = value.decode()
    return fields


def test_a_record_becomes_journal_fields(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    handler = JournalHandler(path=path)
    logger = logging.getLogger("loa.test.journal")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("relay %s stuck", "north")
        fields = parse_fields(sock.recv(65536))
        assert fields["MESSAGE"] == "relay north stuck"
        assert fields["PRIORITY"] == "4"
        assert fields["SYSLOG_IDENTIFIER"] == "loa-agent"
        assert fields["LOGGER"] == "loa.test.journal"
        assert fields["CODE_FILE"] == __file__
        assert fields["CODE_FUNC"] == "test_a_record_becomes_journal_fields"
        assert int(fields["CODE_LINE"]) > 0
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            logger.exception("it broke")
        fields = parse_fields(sock.recv(65536))
        assert fields["PRIORITY"] == "3"
        assert fields["MESSAGE"].startswith("it broke\nTraceback")
        assert "ValueError: bad\nthing" in fields["MESSAGE"]
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_a_record_too_large_for_a_datagram_goes_in_a_sealed_memfd(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    handler = JournalHandler(path=path)
    handler._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    record = logging.LogRecord("loa.big", logging.INFO, __file__, 1, "x" * 300_000, None, None)
    try:
        handler.emit(record)
        message, ancdata, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(4))
        assert message == b""
        fds = array.array("i")
        for level, kind, data in ancdata:
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        assert len(fds) == 1
        fd = fds[0]
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
            content = os.pread(fd, 1 << 20, 0)
        finally:
            os.close(fd)
        fields = parse_fields(content)
        assert fields["MESSAGE"] == "x" * 300_000, "the large message was not carried whole"
        assert fields["PRIORITY"] == "6"
    finally:
        handler.close()


def test_field_encoding_and_priorities() -> None:
    assert encode_field("MESSAGE", "hi") == b"MESSAGE=hi\n"
    assert encode_field("MESSAGE", "a\nb") == b"MESSAGE\n" + struct.pack("<Q", 3) + b"a\nb\n"
    levels = [logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG]
    assert [priority(level) for level in levels] == [2, 3, 4, 6, 7]


def test_fault_names_from_the_environment() -> None:
    assert not faults.active(faults.STALL_MAIN_LOOP, {})
    env = {"LOA_FAULT": " stall-main-loop , typo-here"}
    assert faults.active(faults.STALL_MAIN_LOOP, env)
    assert faults.unknown(env) == {"typo-here"}
    assert faults.names({"LOA_FAULT": ","}) == frozenset()
