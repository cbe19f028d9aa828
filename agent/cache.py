"""The station's content-addressed media cache: one file per SHA-256, fetched over HTTP(S).

This module owns the cache directory and everything in it: the file name of a medium (its
lowercase hex SHA-256), the download (streamed with ``urllib.request``, capped at the announced
size, hashed as it arrives), the atomic entry into the cache (temporary file, fsync, rename,
fsync of the directory) and the clean-up of temporary files left by a crash. A file under its
hash name is therefore always complete and verified; nothing else ever carries that name.

It leaves to others: deciding what to fetch and when, retries and back-off, the events that
report media faults (the caller turns a `MediaError`'s code into one), eviction of media no
playlist needs any more, and threads: `MediaCache.fetch` blocks, and the agent calls it from its
own fetch worker.

Failures come out in two kinds, split by who must act:

- `MediaError`: the medium could not be had as announced (network down, server error, too
  large, wrong content). Its ``code`` is the protocol's event code.
- `CacheFullError`: the station's own disk is full (ENOSPC, EDQUOT). Not the medium's fault and
  not the province's: a technician must free space. Other local I/O failures (EIO, EROFS,
  EACCES) are not translated; they are hardware or configuration faults of the station.

In every failure the temporary file is removed and the cache is as it was before the call,
with one exception made for links that drop for hours: a download interrupted in its transport
(`MediaError` with MEDIA_UNREACHABLE: timeout, connection reset, refused) keeps its partial file
under the stable name ``.partial-<sha256>`` once it holds at least ``resume_min_bytes``. The next
`MediaCache.fetch` of that hash re-hashes those bytes (a running hash cannot be persisted) and asks
for the rest with ``Range: bytes=<have>-``: a 206 whose Content-Range starts at ``<have>`` is
appended, a 200 starts over. The size cap and the hash check apply to the whole file, and a
resumed file that fails them is deleted entirely. A body that ends cleanly short of its announced
length is the server's doing, not the link's: it is MEDIA_HASH_MISMATCH and nothing is kept.

Also here, pure and for the caller's retry loop: `next_delay` (full-jitter exponential back-off,
never shorter than the server's Retry-After, which `MediaError.retry_after_s` carries for 429 and
503); and `MediaCache.verify_all`, the periodic integrity check that moves a corrupted file to
``quarantine/`` rather than deleting it.
"""

from __future__ import annotations

import email.utils
import errno
import fcntl
import hashlib
import http.client
import json
import logging
import os
import random
import re
import stat
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, ParamSpec, TypeVar
from urllib.parse import urlsplit

from agent import faults
from agent.core.backoff import full_jitter
from agent.core.codes import Code

__all__ = [
    "PARTIAL_MAX_AGE_S",
    "PARTIAL_PREFIX",
    "QUARANTINE_DIR",
    "VERIFIED_INDEX",
    "CacheFullError",
    "MediaCache",
    "MediaError",
    "next_delay",
    "parse_retry_after",
]

PARTIAL_PREFIX = ".partial-"
# A resumable partial older than this is removed by remove_partials(): its medium has probably
# left the playlist, or the file behind its URL changed.
PARTIAL_MAX_AGE_S = 24 * 3600.0
QUARANTINE_DIR = "quarantine"
VERIFIED_INDEX = ".verified.json"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_MEDIA_CODES = frozenset({Code.MEDIA_UNREACHABLE, Code.MEDIA_TOO_LARGE, Code.MEDIA_HASH_MISMATCH})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_USER_AGENT = "loa-agent"
_P = ParamSpec("_P")
_R = TypeVar("_R")

log = logging.getLogger(__name__)


class MediaError(Exception):
    """A medium could not be fetched as announced; ``code`` is the event code to report.

    ``retry_after_s``: on a 429 or 503 with a Retry-After header, the seconds the server asked
    to wait (from its delta-seconds or its HTTP date, never negative); otherwise None.
    """

    def __init__(self, code: Code, detail: str, *, retry_after_s: float | None = None) -> None:
        if code not in _MEDIA_CODES:
            raise ValueError(f"{code!r} is not a media fault code")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.retry_after_s = retry_after_s


class CacheFullError(Exception):
    """The cache's file system is full (ENOSPC or EDQUOT); the partial file has been removed."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"cache full at {path}: {detail}")
        self.path = path
        self.detail = detail


class _SchemeRefused(Exception):
    """A redirect pointed to a scheme this cache does not fetch (raised inside urllib)."""


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    # urllib itself only refuses schemes other than http, https and ftp; a redirect from https
    # down to http (when http is not allowed) or to ftp must be refused here.
    def __init__(self, schemes: frozenset[str]) -> None:
        self._schemes = schemes

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        scheme = urlsplit(newurl).scheme.lower()
        if scheme not in self._schemes:
            fp.close()  # urllib does not close the redirect's response when we refuse it
            raise _SchemeRefused(f"redirect to {scheme or 'no'} scheme not allowed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _build_opener(schemes: frozenset[str]) -> urllib.request.OpenerDirector:
    """An opener with HTTP(S) handlers only.

    ``build_opener`` would add file:, ftp: and data: handlers and the environment's proxies; a
    signed playlist names an https URL, and nothing it or a redirect says may make the station
    read a local file.
    """
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        _RedirectHandler(schemes),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        # Without it an unknown scheme makes open() return None instead of raising.
        urllib.request.UnknownHandler(),
    ):
        opener.add_handler(handler)
    return opener


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header value (RFC 9110 10.2.3), or None if unusable.

    Either delta-seconds (``"7"``) or an HTTP date, taken relative to ``now`` (Unix seconds)
    and clamped at 0 when it is already past.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" in the date: RFC 5322 says UTC
        return None
    return max(0.0, when.timestamp() - now)


CRASH_EXIT = 86


def crash_point(name: str) -> None:
    """Deterministic crash tests: ``LOA_CRASH_AT=<name>`` makes the process die right here, as a
    power cut would (no clean-up, no finally blocks). Points: after-download, before-rename,
    after-rename."""
    if os.environ.get("LOA_CRASH_AT") == name:
        os._exit(CRASH_EXIT)


def next_delay(
    attempt: int,
    retry_after_s: float | None,
    rng: random.Random,
    base_s: float = 5.0,
    cap_s: float = 1800.0,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    Full jitter: uniform in ``[0, min(cap_s, base_s * 2**attempt)]``, so stations that lost the
    same link do not come back in step; never less than the server's ``retry_after_s``, even
    when that is past ``cap_s``. Pure: the randomness comes from ``rng``.
    """
    return full_jitter(attempt, rng, base_s=base_s, cap_s=cap_s, at_least_s=retry_after_s)


def _check_sha256(sha256: str) -> None:
    if not isinstance(sha256, str) or _SHA256.fullmatch(sha256) is None:
        raise ValueError(f"not a lowercase hex SHA-256: {sha256!r}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class MediaCache:
    """Files named by their SHA-256 under ``root``; `fetch` is the only way in.

    ``timeout_s`` bounds each blocking network step (connect, each read), not the whole
    download. ``allow_http`` lets plain http through, for stations configured so.
    ``resume_min_bytes``: an interrupted download keeps its partial file for a later resume
    once it holds this many bytes (below that, a fresh start costs about what a Range request
    saves); None turns resuming off.
    """

    def __init__(
        self,
        root: Path,
        *,
        allow_http: bool = False,
        timeout_s: float = 30.0,
        chunk_bytes: int = 64 * 1024,
        resume_min_bytes: int | None = 64 * 1024,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be positive")
        if resume_min_bytes is not None and resume_min_bytes <= 0:
            raise ValueError("resume_min_bytes must be positive or None")
        self.root = Path(root)
        self.allow_http = allow_http
        self.timeout_s = timeout_s
        self.chunk_bytes = chunk_bytes
        self.resume_min_bytes = resume_min_bytes
        self._schemes = frozenset({"https", "http"} if allow_http else {"https"})
        self._opener = _build_opener(self._schemes)

    def path_for(self, sha256: str) -> Path:
        """Where the medium with this hash lives; the hash is checked since it is a file name."""
        _check_sha256(sha256)
        return self.root / sha256

    def has(self, sha256: str, size: int) -> bool:
        """The medium is cached: a regular file under its hash with exactly ``size`` bytes."""
        try:
            st = self.path_for(sha256).stat()
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == size

    def fetch(self, url: str, sha256: str, size: int) -> Path:
        """The cached file of this medium, downloading it first if needed.

        Raises `MediaError` when the medium cannot be had as announced and `CacheFullError`
        when the disk is full; in both cases nothing enters the cache.
        """
        if size < 0:
            raise ValueError("size must not be negative")
        target = self.path_for(sha256)
        if self.has(sha256, size):
            return target
        request = self._request(url)
        fd, partial, stable = self._local(self._open_partial, sha256)
        failure: BaseException | None = None
        kept = False
        try:
            try:
                self._download(request, sha256, size, fd, resumable=stable)
                crash_point("after-download")
                self._local(os.fchmod, fd, 0o644)  # mkstemp made it 0600; players may not be root
                self._local(os.fsync, fd)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                kept = stable and self._keep_partial(fd, failure)
                self._local(os.close, fd)  # also releases the flock
            crash_point("before-rename")
            faults.crash_point(faults.CACHE_WRITTEN)  # complete, verified, fsynced; not renamed
            os.replace(partial, target)
            crash_point("after-rename")
            faults.crash_point(faults.CACHE_RENAMED)  # renamed; directory not fsynced, no sidecar
        except BaseException:
            if not kept:
                partial.unlink(missing_ok=True)
            raise
        self._fsync_root()
        return target

    def remove_partials(self, *, all: bool = False, now: float | None = None) -> int:
        """Delete partial files; run at start, before any fetch. Returns how many went.

        A resumable partial (``.partial-<sha256>``) younger than `PARTIAL_MAX_AGE_S` is kept,
        since the next fetch of its medium resumes from it, unless ``all`` is true. Any other
        partial (the random names of a fetch that could not take the stable one, or of older
        versions) is never resumed and always removed. ``now``: Unix seconds, for tests.
        """
        removed = 0
        try:
            entries = list(self.root.iterdir())
        except FileNotFoundError:
            return 0
        current = time.time() if now is None else now
        for entry in entries:
            if not entry.name.startswith(PARTIAL_PREFIX) or entry.is_dir():
                continue
            resumable = _SHA256.fullmatch(entry.name[len(PARTIAL_PREFIX) :]) is not None
            if resumable and not all:
                try:
                    age = current - entry.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < PARTIAL_MAX_AGE_S:
                    continue
            entry.unlink(missing_ok=True)
            removed += 1
        return removed

    def verify_all(self, quick: bool) -> list[str]:
        """Check the cached files; returns the hashes of those found bad, sorted.

        Full (``quick`` false): re-hash every file named by a SHA-256; one whose content does
        not match its name is moved to ``quarantine/`` under the root (never deleted: a
        technician may want to see it) and reported; the good ones are recorded with their size
        and mtime in `VERIFIED_INDEX`, written atomically.

        Quick: no hashing. A file is reported (not moved; run a full check to settle it) when
        it is empty though its name is not the empty medium's hash, or when its size or mtime
        differ from the last full check's record. A file with no record yet is recorded as
        found: it entered through `fetch`, which verified it. Records of vanished files go.
        """
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError:
            return []
        index = self._read_index()
        fresh: dict[str, dict[str, int]] = {}
        bad: list[str] = []
        for entry in entries:
            sha = entry.name
            if _SHA256.fullmatch(sha) is None:
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            seen = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
            if quick:
                empty_but_not_empty_medium = st.st_size == 0 and sha != _EMPTY_SHA256
                if empty_but_not_empty_medium or index.get(sha, seen) != seen:
                    bad.append(sha)
                    if sha in index:
                        fresh[sha] = index[sha]
                else:
                    fresh[sha] = seen
            elif self._hash_file(entry) == sha:
                fresh[sha] = seen
            else:
                self._quarantine(entry)
                bad.append(sha)
        try:
            self._local(self._write_index, fresh)
        except (CacheFullError, OSError) as exc:
            # Only the next quick check's shortcut is lost (an unrecorded file is recorded as
            # found then); raising here stopped the agent at start on a full disk.
            log.warning("cache index not written: %s", exc)
        return bad

        # -- internals -------------------------------------------------------------------------

    def _request(self, url: str) -> urllib.request.Request:
        scheme = urlsplit(url).scheme.lower()
        if scheme == "http" and not self.allow_http:
            raise MediaError(Code.MEDIA_UNREACHABLE, "http not allowed")
        if scheme not in self._schemes:
            raise MediaError(Code.MEDIA_UNREACHABLE, f"scheme {scheme or '(none)'!r} not allowed")
        try:
            return urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
        except ValueError as exc:
            raise MediaError(Code.MEDIA_UNREACHABLE, f"bad URL: {exc}") from exc

    def _open_partial(self, sha256: str) -> tuple[int, Path, bool]:
        """The partial file to download into: (fd, path, resumable).

        The stable ``.partial-<sha256>``, created or reopened and locked (flock) so that two
        fetches of one hash never share it; when resuming is off or another fetch holds it, a
        fresh random name (mkstemp: O_EXCL) that is never resumed.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if self.resume_min_bytes is not None:
            path = self.root / f"{PARTIAL_PREFIX}{sha256}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
            except BaseException:
                os.close(fd)
                raise
            else:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    raise OSError(errno.EINVAL, f"{path} is not a regular file")
                return fd, path, True
        fd, name = tempfile.mkstemp(prefix=f"{PARTIAL_PREFIX}{sha256}-", dir=self.root)
        return fd, Path(name), False

    def _keep_partial(self, fd: int, error: BaseException | None) -> bool:
        """Whether a failed download's stable partial stays for a resume (see the module doc)."""
        if error is None or self.resume_min_bytes is None:
            return False
        if not isinstance(error, MediaError) or error.code is not Code.MEDIA_UNREACHABLE:
            return False
        try:
            return os.fstat(fd).st_size >= self.resume_min_bytes
        except OSError:
            return False

    def _rehash(self, fd: int, size: int) -> tuple[hashlib._Hash, int]:
        """The hash of the partial's bytes and their count; an oversized partial is emptied."""
        digest = hashlib.sha256()
        have = self._local(os.fstat, fd).st_size
        if have > size:
            self._local(os.ftruncate, fd, 0)
            return digest, 0
        os.lseek(fd, 0, os.SEEK_SET)
        done = 0
        while done < have:
            block = os.read(fd, min(self.chunk_bytes, have - done))
            if not block:
                break
            digest.update(block)
            done += len(block)
        if done != have:  # shrank under us: start over
            self._local(os.ftruncate, fd, 0)
            return hashlib.sha256(), 0
        os.lseek(fd, have, os.SEEK_SET)
        return digest, have

    def _hash_file(self, path: Path) -> str:
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            while block := stream.read(self.chunk_bytes):
                digest.update(block)
        return digest.hexdigest()

    def _quarantine(self, path: Path) -> None:
        shelf = self.root / QUARANTINE_DIR
        self._local(shelf.mkdir, exist_ok=True)
        destination = shelf / path.name
        if destination.exists():  # an earlier quarantined copy stays too
            destination = shelf / f"{path.name}.{time.time_ns()}"
        os.replace(path, destination)

    def _read_index(self) -> dict[str, dict[str, int]]:
        try:
            raw = json.loads((self.root / VERIFIED_INDEX).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return {}
        index: dict[str, dict[str, int]] = {}
        if isinstance(raw, dict):
            for sha, record in raw.items():
                if (
                    isinstance(sha, str)
                    and _SHA256.fullmatch(sha) is not None
                    and isinstance(record, dict)
                    and set(record) == {"size", "mtime_ns"}
                    and all(type(v) is int for v in record.values())
                ):
                    index[sha] = {"size": record["size"], "mtime_ns": record["mtime_ns"]}
        return index

    def _write_index(self, index: dict[str, dict[str, int]]) -> None:
        data = json.dumps(index, sort_keys=True).encode()
        fd, name = tempfile.mkstemp(prefix=".verified-", dir=self.root)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(name, self.root / VERIFIED_INDEX)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        self._fsync_root()

    def _download(
        self,
        request: urllib.request.Request,
        sha256: str,
        size: int,
        fd: int,
        *,
        resumable: bool,
    ) -> None:
        digest, received = self._rehash(fd, size) if resumable else (hashlib.sha256(), 0)
        if received == size and size > 0:
            # Complete already (the last fetch died between its last byte and the rename).
            if digest.hexdigest() == sha256:
                return
            self._local(os.ftruncate, fd, 0)
            digest, received = hashlib.sha256(), 0
        if received > 0:
            request.add_header("Range", f"bytes={received}-")
        response: http.client.HTTPResponse = self._network(
            self._opener.open, request, timeout=self.timeout_s
        )
        with response:
            if received > 0 and not self._continues(response, received, size):
                # A 200 (Range ignored) or a Content-Range that does not fit: start over.
                self._local(os.ftruncate, fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                digest, received = hashlib.sha256(), 0
                if response.status == 206:
                    raise MediaError(
                        Code.MEDIA_UNREACHABLE,
                        f"Content-Range {response.headers.get('Content-Range')!r} does not fit",
                    )
            announced = response.headers.get("Content-Length")
            if (
                announced is not None
                and announced.strip().isdigit()
                and received + int(announced) > size
            ):
                raise MediaError(
                    Code.MEDIA_TOO_LARGE,
                    f"server announces {received + int(announced)} bytes, cap {size}",
                )
            while True:
                # One byte past the cap is enough to know the medium is too large.
                want = min(self.chunk_bytes, size - received + 1)
                chunk: bytes = self._network(response.read, want)
                if not chunk:
                    break
                received += len(chunk)
                if received > size:
                    raise MediaError(Code.MEDIA_TOO_LARGE, f"more than {size} bytes received")
                digest.update(chunk)
                self._local(_write_all, fd, chunk)
        if received < size:
            raise MediaError(
                Code.MEDIA_HASH_MISMATCH, f"truncated: {received} of {size} bytes received"
            )
        actual = digest.hexdigest()
        if actual != sha256:
            raise MediaError(Code.MEDIA_HASH_MISMATCH, f"content has sha256 {actual}")

    @staticmethod
    def _continues(response: http.client.HTTPResponse, have: int, size: int) -> bool:
        """A 206 whose Content-Range picks up exactly at ``have`` and ends at the medium's end."""
        if response.status != 206:
            return False
        match = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
        if match is None:
            return False
        first, last, total = int(match.group(1)), int(match.group(2)), match.group(3)
        if total != "*" and int(total) != size:
            return False
        return first == have and last == size - 1

    @staticmethod
    def _network(step: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run one network step, translating every way it can fail into MEDIA_UNREACHABLE."""
        try:
            return step(*args, **kwargs)
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response and its socket
            retry_after_s = None
            if exc.code in _RETRY_AFTER_STATUSES and exc.headers is not None:
                retry_after_s = parse_retry_after(exc.headers.get("Retry-After"), time.time())
            if exc.code >= 400:
                detail = f"HTTP {exc.code} {exc.reason}"
            else:  # urllib's own refusal of a redirect to file: and the like, or a loop
                detail = f"HTTP {exc.code}: {exc.reason}"
            raise MediaError(Code.MEDIA_UNREACHABLE, detail, retry_after_s=retry_after_s) from exc
        except _SchemeRefused as exc:
            raise MediaError(Code.MEDIA_UNREACHABLE, str(exc)) from exc
        except urllib.error.URLError as exc:
            raise MediaError(Code.MEDIA_UNREACHABLE, f"{exc.reason}") from exc
        except TimeoutError as exc:
            raise MediaError(Code.MEDIA_UNREACHABLE, "timed out") from exc
        except (OSError, http.client.HTTPException) as exc:
            # Connection reset, a broken chunked body, a malformed status line: all transient
            # from the station's point of view.
            raise MediaError(Code.MEDIA_UNREACHABLE, f"{type(exc).__name__}: {exc}") from exc

    def _local(self, step: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run one step on the local disk, translating a full disk into `CacheFullError`."""
        try:
            return step(*args, **kwargs)
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise CacheFullError(self.root, os.strerror(exc.errno)) from exc
            raise

    def _fsync_root(self) -> None:
        # The rename is durable only once the directory entry is on disk.
        dir_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
