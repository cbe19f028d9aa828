"""The station's side of a signed release (docs/releases.md), from an accepted envelope to
``request.json``, and the new version's confirmation after the switch.

This module owns ``state/updates/``, as far as the unprivileged agent writes it:

- ``<version>/release.json`` (the envelope as received) and ``<version>/artifact.tar.gz`` (the
  artifact, checked by length and SHA-256 with the media cache's own download code, on a
  thread of its own; the result comes back on the station's queue as `ArtifactFetched`);
- ``request.json``, written when the update window is open (``core.release.update_window``),
  after which the station stops with `EX_TEMPFAIL` so that systemd restarts it through the
  boot guard;
- ``applied.json`` and the release floor, once the new version has reached READY and the
  province's receipt covers its first heartbeat, before ``trying.json``'s deadline;
- reading and deleting ``rolled-back.json`` and ``failed.json`` (written by the privileged side)
  at start, and forgetting the staged directory of a version that failed, so that the retained
  release (a no-op to the verifier from then on) is not tried again until the province
  publishes a new one.

It leaves to others: verifying envelopes (``core.verify``, through the ingestor), installing
and switching (``loa-agent release-install`` and ``loa-boot-guard``), and events (the station's
``report`` callback, event ``update``). Every method but the fetch thread's runs on the
station's runtime thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.cache import CacheFullError, MediaCache, MediaError, next_delay
from agent.config import Config
from agent.core import strict
from agent.core.clock import Clock
from agent.core.planner import Occurrence
from agent.core.release import (
    Release,
    Version,
    format_version,
    is_version,
    parse_version,
    update_window,
)
from agent.core.timefmt import format_rfc3339, parse_rfc3339
from agent.core.verify import Verdict
from hal.files import atomic_write

log = logging.getLogger("loa.updater")

EX_TEMPFAIL = 75  # sysexits.h; the unit restarts the agent on it (RestartForceExitStatus=75)
ARTIFACT = "artifact.tar.gz"
RELEASE = "release.json"
REQUEST = "request.json"
TRYING = "trying.json"
APPLIED = "applied.json"
ROLLED_BACK = "rolled-back.json"
FAILED = "failed.json"
# The artifact lands here under its hash first (the media cache's own naming), then is renamed.
_FETCH_DIR = ".fetch"


@dataclass(frozen=True, slots=True)
class ArtifactFetched:
    """The fetch thread's word on one artifact, delivered on the station's queue."""

    version: Version
    error: str | None
    code: str | None  # media-unreachable | media-too-large | media-hash-mismatch | ...
    retry_after_s: float | None = None


Report = Callable[[str, str, dict[str, Any]], None]  # (code, detail, fields)


@dataclass
class _Pending:
    release: Release
    fetched: bool = False
    fetching: bool = False
    attempts: int = 0
    retry_at: float = 0.0  # monotonic
    waiting_reported: bool = False


class Updater:
    def __init__(
        self,
        config: Config,
        clock: Clock,
        running: str,
        *,
        report: Report,
        deliver: Callable[[ArtifactFetched], None],
        stop: Callable[[int, str], None],
        raise_floor: Callable[[Version], None],
        reverify: Callable[[bytes], Verdict],
        rng: random.Random | None = None,
    ) -> None:
        self.root = config.paths.state / "updates"
        self.enabled = config.update.enabled
        self.margin = timedelta(seconds=config.update.margin_s)
        self._media = config.media
        self._clock = clock
        self.running = running
        self._report = report
        self._deliver = deliver
        self._stop = stop
        self._raise_floor = raise_floor
        self._reverify = reverify
        self._rng = rng or random.Random()
        self.pending: _Pending | None = None
        self.staged = False  # request.json written, the station is stopping
        # Confirmation of this version after a switch: trying.json's deadline, and the seq of
        # the first heartbeat sent after READY (None until it is sent).
        self._confirm_deadline: datetime | None = None
        self._trying: dict[str, Any] | None = None
        self._ready = False
        self._first_heartbeat: int | None = None

    # start -----------------------------------------------------------------------------------

    def start(self) -> None:
        """At the station's start: the privileged side's outcomes, a confirmation to come,
        a request nobody consumed, and a staged release to resume."""
        self._outcome(ROLLED_BACK, "update-rolled-back")
        self._outcome(FAILED, "update-failed")
        self._check_trying()
        request = self._read_json(self.root / REQUEST)
        if request is not None:
            # No boot guard ran between our stop and this start (a manual restart, a unit
            # without ExecStartPre): staging again would restart the agent for ever.
            version = request.get("version")
            self._remove(self.root / REQUEST)
            detail = "request.json was not consumed: no boot guard ran before this start"
            self._report("update-failed", detail, {"version": version, "reason": detail})
            if is_version(version):
                self._forget(parse_version(str(version)))
        if self.enabled:
            self._resume()

    def _outcome(self, name: str, code: str) -> None:
        path = self.root / name
        record = self._read_json(path)
        if record is None:
            return
        version, reason = record.get("version"), record.get("reason")
        fields = {"version": version, "previous": record.get("previous"), "reason": reason}
        self._report(code, f"update to {version}: {reason}", fields)
        self._remove(path)
        if is_version(version):
            self._forget(parse_version(str(version)))

    def _check_trying(self) -> None:
        trying = self._read_json(self.root / TRYING)
        if trying is None:
            return
        if trying.get("version") != self.running:
            log.error("trying.json names %s but %s is running: left to the boot guard",
                      trying.get("version"), self.running)  # fmt: skip
            return
        try:
            deadline = parse_rfc3339(str(trying.get("deadline")))
        except ValueError:
            log.error("trying.json has no readable deadline: left to the boot guard")
            return
        self._trying = trying
        self._confirm_deadline = deadline

    def _resume(self) -> None:
        """A release accepted before a restart (the window had not opened, or the fetch had
        not finished): checked again against today's trust, then pursued."""
        found: list[tuple[Version, Path]] = []
        with contextlib.suppress(FileNotFoundError):
            for entry in self.root.iterdir():
                if entry.is_dir() and is_version(entry.name) and (entry / RELEASE).is_file():
                    found.append((parse_version(entry.name), entry))
        running = _parse_or_none(self.running)
        for version, directory in sorted(found, reverse=True):
            if running is not None and version <= running:
                continue  # the record of a version installed already
            if self.pending is not None:
                self._forget(version)  # an older one, overtaken
                continue
            verdict = self._reverify((directory / RELEASE).read_bytes())
            message = getattr(verdict, "message", None)
            if not isinstance(message, Release):
                code = str(getattr(verdict, "code", "refused"))
                detail = f"staged release {format_version(version)} no longer verifies: {code}"
                self._report("update-refused", detail,
                             {"version": format_version(version), "reason": code})  # fmt: skip
                self._forget(version)
                continue
            self.pending = _Pending(message)
            self._fetch()

    # an accepted release ----------------------------------------------------------------------

    def on_release(self, release: Release, envelope: bytes, noop: bool) -> None:
        """An accepted release from the ingestor; ``envelope``: its bytes as received."""
        running = _parse_or_none(self.running)
        if running is not None and release.version <= running:
            return  # our own release again
        if self.pending is not None and release.version <= self.pending.release.version:
            return  # the one pursued, or older than it
        if noop:
            # Held already, but not pursued: a version that failed or rolled back (its staged
            # directory is gone). Tried again only when the province publishes new bytes.
            return
        fields = {"version": release.version_text, "previous": self.running}
        if not self.enabled:
            self._report("update-available", f"release {release.version_text} available; "
                         "updates are disabled on this station", fields)  # fmt: skip
            return
        self._report(
            "update-available", f"release {release.version_text} accepted, fetching it", fields
        )
        directory = self._dir(release.version)
        try:
            atomic_write(directory / RELEASE, envelope)
        except OSError as exc:
            self._report("update-refused", f"cannot keep the release: {exc}",
                         fields | {"reason": "write-failed"})  # fmt: skip
            return
        if self.pending is not None:
            older = self.pending.release.version
            if not self.pending.fetching:
                self._forget(older)
            # else: the fetch thread still writes there; forgotten when its result comes.
        self.pending = _Pending(release)
        self._fetch()

    def _fetch(self) -> None:
        pending = self.pending
        if pending is None or pending.fetching or pending.fetched:
            return
        pending.fetching = True
        release = pending.release
        directory = self._dir(release.version)
        cache = MediaCache(
            directory / _FETCH_DIR,
            allow_http=self._media.allow_http,
            timeout_s=self._media.timeout_s,
        )
        thread = threading.Thread(
            target=self._fetch_thread,
            args=(cache, release, directory / ARTIFACT),
            name=f"release-{release.version_text}",
            daemon=True,
        )
        thread.start()

    def _fetch_thread(self, cache: MediaCache, release: Release, target: Path) -> None:
        """Off the runtime thread: the media cache's download (capped at ``bytes``, hashed as it
        arrives, resumable), then the rename to ``artifact.tar.gz``."""
        art = release.artifact
        try:
            if _complete(target, art.sha256, art.bytes):
                self._deliver(ArtifactFetched(release.version, None, None))
                return
            fetched = cache.fetch(art.url, art.sha256, art.bytes)
            os.replace(fetched, target)
            _fsync_dir(target.parent)
            shutil.rmtree(cache.root, ignore_errors=True)
        except MediaError as exc:
            self._deliver(
                ArtifactFetched(release.version, exc.detail, str(exc.code), exc.retry_after_s)
            )
        except CacheFullError as exc:
            self._deliver(ArtifactFetched(release.version, str(exc), "cache-full"))
        except OSError as exc:
            self._deliver(ArtifactFetched(release.version, f"write failed: {exc}", "write-failed"))
        else:
            self._deliver(ArtifactFetched(release.version, None, None))

    def on_fetched(self, done: ArtifactFetched) -> None:
        pending = self.pending
        if pending is None or pending.release.version != done.version:
            self._forget(done.version)  # overtaken by a newer release while it was fetched
            return
        pending.fetching = False
        version = format_version(done.version)
        if done.error is None:
            pending.fetched = True
            log.info("release %s: artifact verified", version)
            return
        delay = next_delay(pending.attempts, done.retry_after_s, self._rng)
        pending.attempts += 1
        pending.retry_at = self._clock.monotonic() + delay
        fields = {"version": version, "previous": self.running, "reason": done.code,
                  "retry_in_s": round(delay)}  # fmt: skip
        self._report("update-refused", f"artifact of {version}: {done.code}: {done.error}", fields)

    # the watch tick ----------------------------------------------------------------------------

    def on_watch(self, on_air: bool, plan: Iterable[Occurrence]) -> None:
        """Every watch tick: an expired release is dropped, a failed fetch tried again after
        its back-off, a verified artifact staged once the window is open; a confirmation that
        missed its deadline stops the agent so that the boot guard rolls back."""
        now = self._clock.now()
        if self._confirm_deadline is not None and now > self._confirm_deadline:
            log.error("version %s not confirmed by %s: stopping for the boot guard's rollback",
                      self.running, self._confirm_deadline.isoformat())  # fmt: skip
            self._confirm_deadline = None
            self._stop(EX_TEMPFAIL, "update not confirmed in time")
            return
        pending = self.pending
        if pending is None or self.staged:
            return
        version = pending.release.version_text
        if now >= pending.release.expires:
            self._report("update-refused", f"release {version} expired before it was staged",
                         {"version": version, "reason": "expired"})  # fmt: skip
            self.pending = None
            if not pending.fetching:
                self._forget(pending.release.version)
            return
        if not pending.fetched:
            if not pending.fetching and self._clock.monotonic() >= pending.retry_at:
                self._fetch()
            return
        window = update_window(now, on_air, plan, self.margin)
        if not window.open:
            if not pending.waiting_reported:
                pending.waiting_reported = True
                next_slot = format_rfc3339(window.next_start) if window.next_start else None
                self._report("update-waiting", f"release {version} waits: {window.reason}",
                             {"version": version, "previous": self.running,
                              "reason": window.reason, "next_slot": next_slot})  # fmt: skip
            return
        self._stage(pending, now)

    def _stage(self, pending: _Pending, now: datetime) -> None:
        version = pending.release.version_text
        request = {"version": version, "staged_at": format_rfc3339(now.astimezone(UTC))}
        try:
            atomic_write(self.root / REQUEST, json.dumps(request).encode())
        except OSError as exc:
            self._report("update-refused", f"cannot write request.json: {exc}",
                         {"version": version, "reason": "write-failed"})  # fmt: skip
            return
        self.staged = True
        self._report("update-staged", f"release {version} staged; restarting to install it",
                     {"version": version, "previous": self.running})  # fmt: skip
        self._stop(EX_TEMPFAIL, f"update to {version} staged")

    # confirmation of the running version -------------------------------------------------------

    @property
    def confirming(self) -> bool:
        return self._confirm_deadline is not None

    def ready(self) -> None:
        """The station reached READY: the next heartbeat is the one to be acknowledged."""
        self._ready = True

    def heartbeat_sent(self, seq: int) -> None:
        if self.confirming and self._ready and self._first_heartbeat is None:
            self._first_heartbeat = seq

    def on_receipt(self, marks: Mapping[str, int]) -> None:
        """The collector's watermarks: once they cover the first heartbeat after READY, before
        the deadline, this version is confirmed."""
        if not self.confirming or self._first_heartbeat is None or self._trying is None:
            return
        upto = marks.get("heartbeat")
        if not isinstance(upto, int) or upto < self._first_heartbeat:
            return
        now = self._clock.now()
        assert self._confirm_deadline is not None
        if now > self._confirm_deadline:
            return  # the watch tick stops the agent
        previous = self._trying.get("previous")
        applied = {"version": self.running, "previous": previous,
                   "confirmed_at": format_rfc3339(now.astimezone(UTC))}  # fmt: skip
        try:
            atomic_write(self.root / APPLIED, json.dumps(applied).encode())
            self._remove(self.root / TRYING)
        except OSError as exc:
            log.error("cannot confirm %s: %s", self.running, exc)
            return
        self._confirm_deadline = None
        self._trying = None
        running = _parse_or_none(self.running)
        if running is not None:
            self._raise_floor(running)
            self._forget_below(running)
        self._report("update-applied", f"version {self.running} confirmed running",
                     {"version": self.running, "previous": previous})  # fmt: skip

    # files -----------------------------------------------------------------------------------

    def _dir(self, version: Version) -> Path:
        return self.root / format_version(version)

    def _forget(self, version: Version) -> None:
        """A version given up: its staged directory goes (the artifact may be large)."""
        shutil.rmtree(self._dir(version), ignore_errors=True)

    def _forget_below(self, version: Version) -> None:
        with contextlib.suppress(FileNotFoundError):
            for entry in self.root.iterdir():
                if is_version(entry.name) and parse_version(entry.name) < version:
                    shutil.rmtree(entry, ignore_errors=True)

    @staticmethod
    def _remove(path: Path) -> None:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            _fsync_dir(path.parent)

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            doc = strict.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, strict.StrictDecodeError) as exc:
            log.error("unreadable %s: %s", path, exc)
            return {}
        return doc if isinstance(doc, dict) else {}


def _parse_or_none(text: str) -> Version | None:
    try:
        return parse_version(text)
    except ValueError:
        return None


def _complete(path: Path, sha256: str, size: int) -> bool:
    """A verified artifact from an earlier run: right length, right hash."""
    try:
        if path.stat().st_size != size:
            return False
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            while block := stream.read(1 << 16):
                digest.update(block)
    except FileNotFoundError:
        return False
    return digest.hexdigest() == sha256


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
