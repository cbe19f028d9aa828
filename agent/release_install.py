"""``loa-agent release-install``: the privileged half of an update (docs/releases.md).

Run as root by ``loa-boot-guard`` from the release ``PREFIX/current`` names (the running, trusted
one), never by the sandboxed agent. It owns the steps between a staged release and the switch:
re-verifying the staged envelope against the station's trust store and the artifact against the
envelope's hash (the request file alone is never trusted), building ``PREFIX/releases/<version>``
as a venv seeded with the running release's site-packages, installing the wheelhouse offline,
smoke-testing the new ``loa-agent``, then ``trying.json`` and the atomic switch of ``current``.
Any failure leaves ``current`` as it was, removes the half-made release and writes
``failed.json``; ``request.json`` is gone either way, so a broken request is tried once.

Also the state files' names and shapes under ``state/updates`` that the install side writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.core.clock import Clock
from agent.core.release import Release as CoreRelease
from agent.core.release import format_version, is_version
from agent.core.release import parse_version as core_parse_version
from agent.core.verify import Context, Rejection, verify
from agent.schemas import load_schema_set
from agent.trust_store import StoreError, TrustStore
from agent.version import running_version
from hal.clock import SystemClock

PIP_TIMEOUT_S = 240.0  # the unit's TimeoutStartSec bounds the guard and this whole install
SMOKE_TIMEOUT_S = 60.0


class InstallError(RuntimeError):
    """The update cannot be installed; the message is the reason written to ``failed.json``."""


def parse_version(text: str) -> tuple[int, int, int]:
    """``MAJOR.MINOR.PATCH``, digits only, as an integer triple (the trust core's rule)."""
    try:
        return core_parse_version(text)
    except ValueError as exc:
        raise InstallError(str(exc)) from exc


# --- the staging directory -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Updates:
    """``state/updates``: where the agent stages a release and both sides leave their word."""

    root: Path

    @classmethod
    def of(cls, config: Config) -> Updates:
        return cls(config.paths.state / "updates")

    @property
    def request(self) -> Path:
        return self.root / "request.json"

    @property
    def trying(self) -> Path:
        return self.root / "trying.json"

    @property
    def applied(self) -> Path:
        return self.root / "applied.json"

    @property
    def failed(self) -> Path:
        return self.root / "failed.json"

    @property
    def rolled_back(self) -> Path:
        return self.root / "rolled-back.json"

    def envelope(self, version: str) -> Path:
        return self.root / version / "release.json"

    def artifact(self, version: str) -> Path:
        return self.root / version / "artifact.tar.gz"


def rfc3339_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Write beside, fsync, rename: a power cut leaves the old file or the new one. Run as root,
    the file gets the owner of its directory, so the agent (user loa) can read and delete it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=1, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        if os.geteuid() == 0:
            owner = path.parent.stat()
            os.chown(tmp, owner.st_uid, owner.st_gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_request(updates: Updates) -> str:
    """The version ``request.json`` asks for (checked: it becomes a directory name)."""
    try:
        doc = json.loads(updates.request.read_bytes())
    except (OSError, ValueError) as exc:
        raise InstallError(f"cannot read {updates.request}: {exc}") from exc
    version = doc.get("version") if isinstance(doc, dict) else None
    if not isinstance(version, str):
        raise InstallError(f"{updates.request} names no version")
    parse_version(version)
    return version


# --- verification ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Release:
    """What install needs from a verified release body."""

    version: str
    min_version: str
    sha256: str
    size: int


Verifier = Callable[[Config, TrustStore, bytes, str, Clock], Release]


def verify_release(
    config: Config, store: TrustStore, data: bytes, running: str, clock: Clock
) -> Release:
    """The staged envelope through the agent's own trust core, against the station's trust
    store as it is now: signatures of the ``release`` role, scope, audience, clock, window and
    the version step (the floor, the running version, ``min_version``); InstallError with the
    section 8 code otherwise. Nothing is persisted: this is a second look, not a receipt (the
    agent recorded the release when it took it; the same bytes again are a no-op here)."""
    from agent.ingest import Ingestor  # compiles the schema set: only when really verifying

    ingestor = Ingestor(config, store, clock, version=running)
    ctx = Context(
        station=config.station,
        clock=ingestor.clock_view(),
        schemas=load_schema_set(),
        limits=config.limits,
        running_version=running,
    )
    verdict = verify(store.snapshot(), data, ctx)
    if isinstance(verdict, Rejection):
        raise InstallError(f"{verdict.code}: {verdict.detail}")
    message = verdict.message
    if not isinstance(message, CoreRelease):
        raise InstallError(f"wrong-payload-type: a {verdict.kind}, not a release")
    return Release(
        message.version_text,
        format_version(message.min_version),
        message.artifact.sha256,
        message.artifact.bytes,
    )


def check_versions(release: Release, requested: str, running: str) -> None:
    """Again here, whatever the verifier is: the request and the release must agree, and an
    install never goes down or sideways."""
    if release.version != requested:
        raise InstallError(f"request names {requested}, the staged release is {release.version}")
    if parse_version(release.version) <= parse_version(running):
        raise InstallError(f"rollback: {release.version} is not above the running {running}")
    if parse_version(running) < parse_version(release.min_version):
        raise InstallError(
            f"update-incompatible: {running} is below {release.version}'s min_version "
            f"{release.min_version}"
        )


def check_artifact(path: Path, release: Release) -> None:
    """Length and SHA-256 against the verified body, read in chunks (never all in memory)."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                size += len(chunk)
                if size > release.size:
                    raise InstallError(f"media-too-large: artifact is over {release.size} bytes")
                digest.update(chunk)
    except OSError as exc:
        raise InstallError(f"cannot read the artifact {path}: {exc.strerror}") from exc
    if size != release.size or digest.hexdigest() != release.sha256:
        raise InstallError(f"media-hash-mismatch: {path} is not the artifact the release names")


def unpack_wheelhouse(artifact: Path, directory: Path, version: str) -> None:
    """Only wheels, written flat under their own names: no member's path, link or mode of the
    tarball reaches the disk (a verified artifact is still not a reason to trust tar)."""
    seen: set[str] = set()
    try:
        with tarfile.open(artifact, "r:gz") as tar:
            for member in tar:
                if member.isdir():
                    continue
                name = Path(member.name).name
                if not member.isfile() or not name.endswith(".whl") or name in seen:
                    raise InstallError(f"wheelhouse: unexpected member {member.name!r}")
                seen.add(name)
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                with source, (directory / name).open("xb") as out:
                    shutil.copyfileobj(source, out)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise InstallError(f"wheelhouse: cannot unpack {artifact}: {exc}") from exc
    if f"loa-{version}-py3-none-any.whl" not in seen:
        raise InstallError(f"wheelhouse: no loa-{version}-py3-none-any.whl in the artifact")


# --- building the release --------------------------------------------------------------------


def _loa_entries(site: Path) -> tuple[set[str], set[str]]:
    """The running ``loa``'s top-level entries in site-packages, and its files in the top-level
    ``__pycache__``: from its RECORD, so an editable install's finder and .pth go too."""
    top: set[str] = set()
    cached: set[str] = set()
    for info in site.glob("loa-*.dist-info"):
        top.add(info.name)
        record = info / "RECORD"
        lines = record.read_text("utf-8").splitlines() if record.exists() else []
        for line in lines:
            path = line.rsplit(",", 2)[0]
            parts = Path(path).parts
            if not parts or parts[0] == "..":  # ../../../bin/loa-agent: the new one is made
                continue
            if parts[0] == "__pycache__" and len(parts) == 2:
                cached.add(parts[1])
            else:
                top.add(parts[0])
        top_level = info / "top_level.txt"
        if top_level.exists():
            top.update(n for n in top_level.read_text("utf-8").split() if n)
    return top, cached


def seed_site_packages(source: Path, dest: Path) -> None:
    """Copy the running release's site-packages into the new venv, all but ``loa`` itself (pip
    installs the new one). Scripts in bin/ are not copied: they name the old venv's python."""
    top, cached = _loa_entries(source)

    def ignore(directory: str, names: list[str]) -> set[str]:
        if Path(directory) == source:
            return {n for n in names if n in top}
        if Path(directory) == source / "__pycache__":
            return {n for n in names if n in cached}
        return set()

    shutil.copytree(source, dest, symlinks=True, ignore=ignore, dirs_exist_ok=True)


def _clean_env() -> dict[str, str]:
    """pip sees no configuration but ours: no index, cache or constraints of the machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(command: list[str], timeout: float, what: str) -> str:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=_clean_env()
        )
    except subprocess.TimeoutExpired as exc:
        raise InstallError(f"{what}: no answer within {timeout:.0f} s") from exc
    except OSError as exc:
        raise InstallError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise InstallError(f"{what} failed (exit {done.returncode}): {' / '.join(tail)}")
    return done.stdout


def build_release(
    release_dir: Path, wheelhouse: Path, version: str, source_site: Path, python: str
) -> None:
    """A complete venv at its final path (a venv cannot be moved), smoke-tested."""
    _run([python, "-m", "venv", "--without-pip", str(release_dir)], 120, "venv")
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = release_dir / "lib" / pyver / "site-packages"
    if not site.is_dir():
        raise InstallError(f"venv: no {site}")
    seed_site_packages(source_site, site)
    new_python = str(release_dir / "bin" / "python")
    if not (site / "pip").is_dir():
        _run([new_python, "-m", "ensurepip", "--default-pip"], PIP_TIMEOUT_S, "ensurepip")
    pip = [new_python, "-m", "pip", "install", "--no-index", "--find-links", str(wheelhouse)]
    pip += ["--no-cache-dir", "--disable-pip-version-check", "--no-input", "--quiet"]
    _run([*pip, f"loa=={version}"], PIP_TIMEOUT_S, "pip install")
    said = _run([str(release_dir / "bin" / "loa-agent"), "--version"], SMOKE_TIMEOUT_S, "smoke")
    if said.strip() != version:
        raise InstallError(f"smoke: the new loa-agent --version says {said.strip()!r}")


# --- the release directory and `current` -----------------------------------------------------


def current_release(prefix: Path) -> str:
    """The version ``PREFIX/current`` names (``releases/<version>``)."""
    try:
        target = os.readlink(prefix / "current")
    except OSError as exc:
        raise InstallError(f"{prefix / 'current'} is not a link to a release: {exc}") from exc
    name = Path(target).name
    parse_version(name)
    return name


def switch_current(prefix: Path, version: str) -> None:
    """A temporary link renamed over ``current``: rename(2) is atomic, so every start of the
    agent sees the old release or the new one."""
    temp = prefix / ".current.loa-new"
    temp.unlink(missing_ok=True)
    os.symlink(f"releases/{version}", temp)
    os.replace(temp, prefix / "current")
    _fsync_dir(prefix)


def _recorded_previous(updates: Updates) -> str | None:
    """The release before ``current`` as the last update recorded it (kept for a rollback)."""
    for path in (updates.trying, updates.applied):
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        previous = doc.get("previous") if isinstance(doc, dict) else None
        if isinstance(previous, str):
            return previous
    return None


def prune_releases(prefix: Path, keep: set[str]) -> None:
    """Releases that are neither current, the recorded previous nor the one being installed:
    a station's SD card holds three at most."""
    releases = prefix / "releases"
    for entry in releases.iterdir():
        if entry.name in keep or not is_version(entry.name) or entry.is_symlink():
            continue
        shutil.rmtree(entry, ignore_errors=True)


# --- the whole step --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Installed:
    version: str
    previous: str
    deadline: datetime


def release_install(
    config: Config,
    prefix: Path,
    *,
    clock: Clock | None = None,
    verifier: Verifier = verify_release,
    running: str | None = None,
    source_site: Path | None = None,
    python: str = sys.executable,
) -> Installed:
    """Install the staged release and switch to it, or raise InstallError after cleaning up
    (``failed.json`` written, ``request.json`` deleted, ``current`` untouched)."""
    updates = Updates.of(config)
    if not updates.request.exists():
        raise InstallError(f"nothing to install: no {updates.request}")  # and nothing to report
    version: str | None = None
    release_dir: Path | None = None
    switched = False
    umask = os.umask(0o022)  # a root umask of 077 would hide the release from the loa user
    try:
        version = read_request(updates)
        running = running or running_version()
        previous = current_release(prefix)
        try:
            data = updates.envelope(version).read_bytes()
        except OSError as exc:
            raise InstallError(f"no staged release envelope: {exc.strerror}") from exc
        try:
            with TrustStore(config.paths.trust_db) as store:
                release = verifier(config, store, data, running, clock or SystemClock())
        except StoreError as exc:
            raise InstallError(str(exc)) from exc
        check_versions(release, version, running)
        check_artifact(updates.artifact(version), release)
        if version == previous:
            raise InstallError(f"{version} is already current")

        releases = prefix / "releases"
        keep = {previous, version}
        recorded = _recorded_previous(updates)
        if recorded is not None:
            keep.add(recorded)
        prune_releases(prefix, keep)
        release_dir = releases / version
        if release_dir.exists():  # the remains of an interrupted install: built again
            shutil.rmtree(release_dir)
        site = source_site or Path(_purelib())
        with tempfile.TemporaryDirectory(prefix="loa-wheelhouse-") as wheelhouse:
            unpack_wheelhouse(updates.artifact(version), Path(wheelhouse), version)
            build_release(release_dir, Path(wheelhouse), version, site, python)
        (release_dir / ".loa-source").write_text(release.sha256 + "\n")

        wall = time.time()
        switched_at = datetime.fromtimestamp(wall, UTC)
        confirm_s = config.update.confirm_s
        deadline = switched_at + timedelta(seconds=confirm_s)
        # trying.json before the switch: a power cut between the two leaves a trial of a
        # release that never ran, which the boot guard ends by switching to `previous` (the
        # current one), instead of a switched release that nothing watches.
        write_json(
            updates.trying,
            {
                "version": version,
                "previous": previous,
                "switched_at": rfc3339_utc(switched_at),
                "deadline": rfc3339_utc(deadline),
                "deadline_epoch": int(wall + confirm_s),
                "attempts": 0,
            },
        )
        try:
            switch_current(prefix, version)
        except OSError as exc:
            updates.trying.unlink(missing_ok=True)
            raise InstallError(f"cannot switch {prefix / 'current'}: {exc}") from exc
        switched = True
        updates.request.unlink(missing_ok=True)
        return Installed(version, previous, deadline)
    except InstallError as exc:
        _fail(updates, version, str(exc), None if switched else release_dir)
        raise
    except Exception as exc:  # never leave a half-made release or a request behind
        reason = f"{type(exc).__name__}: {exc}"
        _fail(updates, version, reason, None if switched else release_dir)
        raise InstallError(reason) from exc
    finally:
        os.umask(umask)


def _purelib() -> str:
    import sysconfig

    return sysconfig.get_path("purelib")


def _fail(updates: Updates, version: str | None, reason: str, release_dir: Path | None) -> None:
    if release_dir is not None:
        shutil.rmtree(release_dir, ignore_errors=True)
    try:
        write_json(
            updates.failed,
            {"version": version, "reason": reason, "at": rfc3339_utc(datetime.now(UTC))},
        )
    finally:
        updates.request.unlink(missing_ok=True)


__all__ = [
    "InstallError",
    "Installed",
    "Release",
    "Updates",
    "check_artifact",
    "parse_version",
    "release_install",
    "running_version",
    "verify_release",
]
