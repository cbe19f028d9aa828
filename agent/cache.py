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

In every failure the temporary file is removed and the cache is as it was before the call.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import stat
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, ParamSpec, TypeVar
from urllib.parse import urlsplit

from agent.core.codes import Code

__all__ = ["PARTIAL_PREFIX", "CacheFullError", "MediaCache", "MediaError"]

PARTIAL_PREFIX = ".partial-"
_MEDIA_CODES = frozenset({Code.MEDIA_UNREACHABLE, Code.MEDIA_TOO_LARGE, Code.MEDIA_HASH_MISMATCH})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_USER_AGENT = "loa-agent"
_P = ParamSpec("_P")
_R = TypeVar("_R")


class MediaError(Exception):
    """A medium could not be fetched as announced; ``code`` is the event code to report."""

    def __init__(self, code: Code, detail: str) -> None:
        if code not in _MEDIA_CODES:
            raise ValueError(f"{code!r} is not a media fault code")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


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
    """

    def __init__(
        self,
        root: Path,
        *,
        allow_http: bool = False,
        timeout_s: float = 30.0,
        chunk_bytes: int = 64 * 1024,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be positive")
        self.root = Path(root)
        self.allow_http = allow_http
        self.timeout_s = timeout_s
        self.chunk_bytes = chunk_bytes
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
        fd, partial = self._local(self._new_partial, sha256)
        try:
            try:
                self._download(request, sha256, size, fd)
                self._local(os.fchmod, fd, 0o644)  # mkstemp made it 0600; players may not be root
                self._local(os.fsync, fd)
            finally:
                self._local(os.close, fd)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        self._fsync_root()
        return target

    def remove_partials(self) -> int:
        """Delete temporary files a crash left behind; run at start, before any fetch."""
        removed = 0
        try:
            entries = list(self.root.iterdir())
        except FileNotFoundError:
            return 0
        for entry in entries:
            if entry.name.startswith(PARTIAL_PREFIX) and not entry.is_dir():
                entry.unlink(missing_ok=True)
                removed += 1
        return removed

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

    def _new_partial(self, sha256: str) -> tuple[int, Path]:
        self.root.mkdir(parents=True, exist_ok=True)
        # mkstemp: O_EXCL and a random suffix, so two fetches of one hash never share a file.
        fd, name = tempfile.mkstemp(prefix=f"{PARTIAL_PREFIX}{sha256}-", dir=self.root)
        return fd, Path(name)

    def _download(self, request: urllib.request.Request, sha256: str, size: int, fd: int) -> None:
        digest = hashlib.sha256()
        received = 0
        response: http.client.HTTPResponse = self._network(
            self._opener.open, request, timeout=self.timeout_s
        )
        with response:
            announced = response.headers.get("Content-Length")
            if announced is not None and announced.strip().isdigit() and int(announced) > size:
                raise MediaError(
                    Code.MEDIA_TOO_LARGE, f"server announces {int(announced)} bytes, cap {size}"
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
    def _network(step: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run one network step, translating every way it can fail into MEDIA_UNREACHABLE."""
        try:
            return step(*args, **kwargs)
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response and its socket
            if exc.code >= 400:
                detail = f"HTTP {exc.code} {exc.reason}"
            else:  # urllib's own refusal of a redirect to file: and the like, or a loop
                detail = f"HTTP {exc.code}: {exc.reason}"
            raise MediaError(Code.MEDIA_UNREACHABLE, detail) from exc
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
