"""The province's signing log: an append-only, hash-chained record of everything it signed.

What the province's keys sign decides what thousands of loudspeakers say, so every signature
made at the desk is written down: ``HOME/signing-log.jsonl``, one JSON object per line —

    {"seq", "ts", "kind", "payload_type", "issuer", "target", "label", "body_sha256",
     "envelope_sha256", "keyids", "signers", "host", "user", "prev", "hash"}

``label`` is ``v<version>`` (playlists, keyrings), the command id, or a beacon's time, as
``loa-province publish`` and station events name them. ``hash`` is the SHA-256 of the entry's
canonical JSON (sorted keys, no spaces, UTF-8) without ``hash``; ``prev`` is the hash of the line
before it (64 zeros on line 1), so editing, deleting or reordering a line breaks the chain, and
``verify_log`` names the first line where it breaks.

Appends are serialised with an exclusive ``flock`` on the log (two officers signing at once
must not both chain onto the same line) and fsync'd before the envelope leaves the desk: a
signature released without its log line would defeat the log.

What a hash chain cannot show: someone with write access who cuts lines off the end, or who
rewrites the whole file with fresh hashes, leaves a chain that verifies. The defence is the head
hash kept somewhere else: ``loa-province log --verify`` prints ``head <hash>`` and the officer
copies it into the paper register after each signing session; a head that is no longer in the
log, or a log that ends before the registered head, shows the truncation.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.core import strict
from agent.core.timefmt import format_rfc3339
from province.errors import ProvinceError

LOG_NAME = "signing-log.jsonl"
GENESIS = "0" * 64
# One entry is well under 4 KiB (16 signers at most); a "line" longer than this is damage.
MAX_LINE_BYTES = 1024 * 1024
_TEXT_FIELDS = (
    "ts", "kind", "payload_type", "issuer", "target", "label", "body_sha256", "envelope_sha256",
    "host", "user", "prev", "hash",
)  # fmt: skip
_HEX_FIELDS = ("body_sha256", "envelope_sha256", "prev", "hash")


class SigningLogError(ProvinceError):
    """The signing log cannot be appended to (damaged tail, disk full): nothing was released."""


def log_path(home: Path) -> Path:
    return home / LOG_NAME


@dataclass(frozen=True, slots=True)
class Signed:
    """What the province just signed, as the log records it."""

    kind: str
    payload_type: str
    issuer: str
    target: str
    label: str
    body: bytes
    envelope: bytes
    keyids: tuple[str, ...]
    signers: tuple[str, ...]  # each signer's describe()


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    ts: str
    kind: str
    payload_type: str
    issuer: str
    target: str
    label: str
    body_sha256: str
    envelope_sha256: str
    keyids: tuple[str, ...]
    signers: tuple[str, ...]
    host: str
    user: str
    prev: str
    hash: str

    @classmethod
    def from_json(cls, doc: Any) -> Entry:
        """The entry a parsed line holds; ValueError naming what is missing or malformed."""
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        seq = doc.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError("seq is not a positive integer")
        for name in _TEXT_FIELDS:
            if not isinstance(doc.get(name), str):
                raise ValueError(f"{name} is missing or not a string")
        for name in _HEX_FIELDS:
            if not _is_sha256_hex(doc[name]):
                raise ValueError(f"{name} is not 64 lowercase hex digits")
        lists = {}
        for name in ("keyids", "signers"):
            value = doc.get(name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name} is missing or not a list of strings")
            lists[name] = tuple(value)
        texts = {name: str(doc[name]) for name in _TEXT_FIELDS}
        return cls(seq=seq, keyids=lists["keyids"], signers=lists["signers"], **texts)


def _is_sha256_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(doc: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of an entry without its ``hash`` field."""
    return hashlib.sha256(canonical({k: v for k, v in doc.items() if k != "hash"})).hexdigest()


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (a bare container)
        return f"uid:{os.getuid()}"


def append(
    path: Path, signed: Signed, now: datetime, *, host: str | None = None, user: str | None = None
) -> Entry:
    """Chain one entry onto the log (created with its directory when missing); return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close()
        size = os.fstat(fd).st_size
        last = _last_entry(path, fd, size)
        doc: dict[str, Any] = {
            "seq": last.seq + 1 if last else 1,
            "ts": format_rfc3339(now),
            "kind": signed.kind,
            "payload_type": signed.payload_type,
            "issuer": signed.issuer,
            "target": signed.target,
            "label": signed.label,
            "body_sha256": hashlib.sha256(signed.body).hexdigest(),
            "envelope_sha256": hashlib.sha256(signed.envelope).hexdigest(),
            "keyids": list(signed.keyids),
            "signers": list(signed.signers),
            "host": host if host is not None else socket.gethostname(),
            "user": user if user is not None else _current_user(),
            "prev": last.hash if last else GENESIS,
        }
        doc["hash"] = entry_hash(doc)
        # Written in the documented field order for people reading it with tail or grep; the
        # hash is over the sorted canonical form, so the order on disk does not matter.
        line = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(28, "short write (disk full?)")
            os.fsync(fd)
        except OSError as exc:
            # A half-written line would stop every later append; put the log back as it was.
            os.ftruncate(fd, size)
            raise SigningLogError(f"cannot append to the signing log {path}: {exc}") from exc
    finally:
        os.close(fd)
    if last is None:
        _fsync_directory(path.parent)  # a new file: make its directory entry durable too
    return Entry.from_json(doc)


def _last_entry(path: Path, fd: int, size: int) -> Entry | None:
    """The entry on the log's last line, checked enough to chain onto; None for an empty log."""
    if size == 0:
        return None
    tail = b""
    position = size
    while position > 0:
        step = min(4096, position)
        position -= step
        tail = os.pread(fd, step, position) + tail
        cut = tail.rfind(b"\n", 0, len(tail) - 1)
        if cut >= 0:
            tail = tail[cut + 1 :]
            break
        if len(tail) > MAX_LINE_BYTES:
            break
    hint = "run `loa-province log --verify`; nothing was signed"
    if not tail.endswith(b"\n"):
        raise SigningLogError(f"the signing log {path} ends in an incomplete line: {hint}")
    try:
        doc = strict.loads(tail)
        entry = Entry.from_json(doc)
    except ValueError as exc:
        raise SigningLogError(
            f"the last line of the signing log {path} is damaged: {hint}"
        ) from exc
    if entry_hash(doc) != entry.hash:
        raise SigningLogError(f"the last line of the signing log {path} was edited: {hint}")
    return entry


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class LogReport:
    """What ``verify_log`` found: the intact entries, and where and why the chain breaks."""

    path: Path
    entries: tuple[Entry, ...]
    broken_line: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def head(self) -> str:
        """The hash of the last intact entry (64 zeros for an empty log)."""
        return self.entries[-1].hash if self.entries else GENESIS


def verify_log(path: Path) -> LogReport:
    """Recompute every entry's hash and the chain; report the first broken line (1-based)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return LogReport(
            path,
            (),
            None,
            "the file does not exist (nothing was signed with this home, or the log was removed)",
        )
    lines = data.split(b"\n")
    # ``split`` leaves what follows the last newline: empty for a whole file, else a cut line.
    complete, tail = lines[:-1], lines[-1]
    seqs = [_loose_seq(line) for line in complete]
    entries: list[Entry] = []
    for number, line in enumerate(complete, start=1):
        problem = _check_line(line, number, entries, seqs)
        if problem is not None:
            return LogReport(path, tuple(entries), number, f"line {number} {problem}")
        entries.append(Entry.from_json(strict.loads(line)))
    if tail:
        number = len(complete) + 1
        return LogReport(
            path, tuple(entries), number, f"line {number} is truncated: it has no end of line"
        )
    return LogReport(path, tuple(entries))


def _loose_seq(line: bytes) -> int | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    seq = doc.get("seq") if isinstance(doc, dict) else None
    return seq if isinstance(seq, int) else None


def _check_line(
    line: bytes, number: int, before: Sequence[Entry], seqs: list[int | None]
) -> str | None:
    """Why line ``number`` breaks the log, or None when it chains onto ``before``."""
    if not line.strip():
        return "is empty"
    try:
        doc = strict.loads(line)
        entry = Entry.from_json(doc)
    except ValueError as exc:
        return f"is not a signing-log entry ({exc})"
    if entry_hash(doc) != entry.hash:
        return "was edited: its content does not match its hash"
    expected = before[-1].seq + 1 if before else 1
    if entry.seq > expected:
        later = _find(seqs, expected, after=number)
        if later is not None:
            return (
                f"holds entry {entry.seq} where entry {expected} belongs (entry {expected} is "
                f"at line {later}): lines were reordered"
            )
        missing = f"{expected}" if entry.seq == expected + 1 else f"{expected}-{entry.seq - 1}"
        return (
            f"holds entry {entry.seq} where entry {expected} belongs: entry {missing} was deleted"
        )
    if entry.seq < expected:
        earlier = _find(seqs[: number - 1], entry.seq, after=0)
        if earlier is not None:
            return f"repeats entry {entry.seq} (already at line {earlier})"
        return f"holds entry {entry.seq} after entry {expected - 1}: lines were reordered"
    prev = before[-1].hash if before else GENESIS
    if entry.prev != prev:
        where = f"line {number - 1}'s hash" if before else "the start of the chain (64 zeros)"
        return (
            f"does not chain: its prev is not {where} (an earlier line was rewritten or replaced)"
        )
    return None


def _find(seqs: Sequence[int | None], seq: int, after: int) -> int | None:
    """The 1-based line number after ``after`` whose entry has ``seq``."""
    for number, value in enumerate(seqs[after:], start=after + 1):
        if value == seq:
            return number
    return None
