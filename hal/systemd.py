"""systemd's side of the process, without libsystemd: sd_notify datagrams and journald's socket.

Owns: the notification client (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=…`` sent
as one datagram each to ``$NOTIFY_SOCKET``, a filesystem path or, with a leading ``@``, an
abstract socket), the watchdog period systemd asks for (``$WATCHDOG_USEC``, meant for this
process only when ``$WATCHDOG_PID`` is unset or names it), and a logging handler that writes
structured records to journald's native socket when stderr is the journal (``$JOURNAL_STREAM``).

Leaves to others: when the service is ready, alive or stopping (the composition root and the
station's runtime decide; see ``agent/app.py``), and the unit's own settings
(``systemd/loa-agent.service``).

Outside systemd every variable is absent and all of it does nothing: the notifier sends nothing
and ``loa-agent run`` logs to stderr as any program does. Notifications are best effort, as
sd_notify(3) is: a failure to send is logged once and never stops the station.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
import sys
import threading
from collections.abc import Mapping

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "loa-agent"
# A notification must never hold up the runtime thread for long: PID 1 reads its socket at once,
# so only a wedged system makes this wait, and then the watchdog is the least of its troubles.
SEND_TIMEOUT_S = 1.0

log = logging.getLogger("loa.systemd")


def _address(value: str) -> str | bytes:
    # A leading "@" names a socket in the abstract namespace, spelt with a NUL on the wire.
    return b"\0" + value[1:].encode() if value.startswith("@") else value


class Notifier:
    """Sends sd_notify(3) state lines to the service manager; does nothing without one."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()  # the runtime thread and the signal handler both send
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True when the manager got them."""
        if self.address is None or not assignments:
            return False
        message = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._socket.settimeout(SEND_TIMEOUT_S)
                self._socket.sendto(message, _address(self.address))
            except OSError as exc:
                if not self._failed:  # once: a missing manager would otherwise fill the log
                    log.warning("cannot notify the service manager at %s: %s", self.address, exc)
                self._failed = True
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *(() if status is None else (f"STATUS={status}",)))

    def watchdog(self, status: str | None = None) -> bool:
        return self.notify("WATCHDOG=1", *(() if status is None else (f"STATUS={status}",)))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *(() if status is None else (f"STATUS={status}",)))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def watchdog_interval(
    environ: Mapping[str, str] = os.environ, pid: int | None = None
) -> float | None:
    """Seconds within which systemd wants ``WATCHDOG=1`` from this process, or None.

    ``$WATCHDOG_PID``, when set, names the process the period is meant for: a child that
    inherited the environment must not think it is watched (sd_watchdog_enabled(3))."""
    raw = environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    watched = environ.get("WATCHDOG_PID")
    if watched:
        try:
            if int(watched) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


def stderr_is_journal(environ: Mapping[str, str] = os.environ, fd: int = 2) -> bool:
    """True when ``fd`` is the stream systemd connected to the journal: ``$JOURNAL_STREAM`` is
    ``device:inode`` of that stream, and a redirected stderr no longer matches it."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


# logging level -> syslog priority (journald's PRIORITY field)
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def priority(levelno: int) -> int:
    for level, value in _PRIORITIES:
        if levelno >= level:
            return value
    return 7


def encode_field(name: str, value: str) -> bytes:
    """One field of journald's native protocol: ``NAME=value\\n``, or for a value with a newline
    ``NAME\\n``, its length as 64-bit little endian, the value and ``\\n``."""
    data = value.encode("utf-8", "replace")
    if b"\n" not in data:
        return name.encode() + b"=" + data + b"\n"
    return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"


class JournalHandler(logging.Handler):
    """Writes each record to journald as one datagram of fields: ``MESSAGE`` (with the
    traceback, if any), ``PRIORITY``, ``SYSLOG_IDENTIFIER``, ``LOGGER``, ``THREAD_NAME`` and
    where it was logged (``CODE_FILE``, ``CODE_LINE``, ``CODE_FUNC``), so ``journalctl -p err``
    and ``journalctl LOGGER=loa.station`` work. A record too large for a datagram goes in a
    sealed memfd, as sd_journal_send(3) does; a record journald cannot take is written to
    stderr instead (which systemd also connects to the journal), so nothing is lost silently."""

    def __init__(self, path: str = JOURNAL_SOCKET, identifier: str = IDENTIFIER) -> None:
        super().__init__()
        self.path = path
        self.identifier = identifier
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def payload(self, record: logging.LogRecord) -> bytes:
        fields = {
            "MESSAGE": self.format(record),
            "PRIORITY": str(priority(record.levelno)),
            "SYSLOG_IDENTIFIER": self.identifier,
            "LOGGER": record.name,
            "THREAD_NAME": record.threadName or "",
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName or "",
        }
        return b"".join(encode_field(name, value) for name, value in fields.items())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.payload(record)
            try:
                self._socket.sendto(data, self.path)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):  # too big for a datagram
                    raise
                self._send_memfd(data)
        except Exception:
            self._fallback(record)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("loa-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            # journald takes only a sealed memfd: the sender cannot change it while it reads.
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            fds = array.array("i", [fd])
            self._socket.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], 0, self.path)
        finally:
            os.close(fd)

    def _fallback(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"{record.levelname} {record.name}: {self.format(record)}\n")
            sys.stderr.flush()

    def close(self) -> None:
        self._socket.close()
        super().close()


def journal_available(path: str = JOURNAL_SOCKET) -> bool:
    return os.path.exists(path)
