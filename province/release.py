"""Signed releases from the province desk (docs/releases.md): the wheelhouse, the release body,
its signature, its topic, and what the stations made of it.

This module owns ``loa-province release build`` (a gzip tarball, the "wheelhouse", holding the
project's wheel built from a source tree and, with ``--with-deps``, its dependencies' wheels),
``release sign`` (the release body, its artifact's SHA-256 and length read from the file, signed
by release keys, checked against the newest keyring this home published with the station's own
threshold and scope checks, chained into the signing log), ``release publish`` (retained, QoS 1,
on ``loa/v1/{target}/release/{issuer}`` through ``province.publish``) and ``loa-province
updates`` (per station: the version it runs, the release meant for it, and how far it got, from
its heartbeats, births and update events in the registry). What a release body must be is
``province.signing``'s (the station's rules); the topic is ``province.publish.route``'s.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.core import dsse, strict
from agent.core.codes import Rejected
from agent.core.models import Keyring
from agent.core.release import parse_version
from agent.core.targets import is_within, province_of
from agent.core.timefmt import format_rfc3339, parse_rfc3339
from agent.core.verify import check_scope, check_threshold
from hal.files import atomic_write
from province import signing_log
from province.broadcast import check_target, newest_keyring
from province.coverage import clean_text
from province.coverage_render import align_table
from province.errors import ProvinceError
from province.home import REGISTRY_FILE, default_home, open_home_registry, registry_province
from province.home import store_url as home_store_url
from province.publish import publish
from province.registry import Registry
from province.signer import Signer, open_signer
from province.signing import BodyError, canonical_json, check_body, sign_body, signed_record

ROLE = "release"
# What a wheel is built from: the package's own parts, as install/install.sh copies them. A
# copy keeps pip's build/ and *.egg-info out of the checkout and gives --version a place to go.
SOURCE_PARTS = ("pyproject.toml", "README.md", "agent", "hal", "provisioning", "province")
DEFAULT_VALID_DAYS = 30
PIP_TIMEOUT_S = 1800.0  # --with-deps may compile PyAudio from its sdist
_PROJECT_VERSION = re.compile(r'^version\s*=\s*"[^"\n]*"[ \t]*$', re.MULTILINE)
_TOP_WHEEL = re.compile(r"[A-Za-z0-9._+-]+\.whl")  # a wheel at the top, no path in its name
EVENT_SLACK = timedelta(days=1)
_SHORT = 40  # a version or a reason code a station sent, as shown

# Update event codes (docs/releases.md) and the state each leaves the station in.
PENDING, WAITING, APPLIED, FAILED, ROLLED_BACK = (
    "pending", "waiting", "applied", "failed", "rolled back",
)  # fmt: skip
UP_TO_DATE, EXPIRED, UNKNOWN = "up to date", "expired", "unknown"
EVENT_STATES: Mapping[str, str] = {
    "update-available": PENDING,
    "update-waiting": WAITING,
    "update-staged": WAITING,
    "update-applied": APPLIED,
    "update-failed": FAILED,
    "update-refused": FAILED,
    "update-rolled-back": ROLLED_BACK,
}


def wheel_name(version: str) -> str:
    return f"loa-{version}-py3-none-any.whl"


# -- the wheelhouse ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Artifact:
    """A file as a release names it: what stations must find at the URL."""

    path: Path
    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: Path) -> Artifact:
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as stream:
            while chunk := stream.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
        return cls(path, digest.hexdigest(), size)


def source_version(pyproject: bytes, where: object) -> str:
    """The ``[project] version`` of a pyproject.toml, refused unless it is a release version."""
    try:
        version = tomllib.loads(pyproject.decode("utf-8"))["project"]["version"]
        parse_version(version)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ProvinceError(f"{where} names no project version: {exc}") from exc
    except ValueError as exc:
        raise ProvinceError(f"{where}: stations take only release versions: {exc}") from exc
    return str(version)


def with_version(pyproject: str, version: str) -> str:
    """The pyproject.toml text with ``[project] version`` set to ``version``."""
    parse_version(version)
    if len(_PROJECT_VERSION.findall(pyproject)) != 1:
        raise ProvinceError('pyproject.toml must have one line `version = "..."` to override')
    changed = _PROJECT_VERSION.sub(f'version = "{version}"', pyproject)
    if tomllib.loads(changed).get("project", {}).get("version") != version:
        raise ProvinceError("the version line of pyproject.toml is not the project's")
    return changed


def _copy_source(src: Path, dest: Path, version: str | None) -> str:
    for part in SOURCE_PARTS:
        path = src / part
        if not path.exists():
            raise ProvinceError(f"{src} is not a Loa source tree: it has no {part}")
        if path.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(path, dest / part, ignore=ignore)
        else:
            shutil.copy2(path, dest / part)
    pyproject = dest / "pyproject.toml"
    if version is not None:
        pyproject.write_text(with_version(pyproject.read_text("utf-8"), version), "utf-8")
    return source_version(pyproject.read_bytes(), src / "pyproject.toml")


def _isolation_args() -> list[str]:
    """pyproject.toml wants setuptools>=77: build in this environment when it has that, else
    let pip build in an isolated one (fetching setuptools from the configured index)."""
    try:
        major = importlib.metadata.version("setuptools").split(".")[0]
    except importlib.metadata.PackageNotFoundError:
        return []
    return ["--no-build-isolation"] if major.isdigit() and int(major) >= 77 else []


def _pip(args: Sequence[str | Path], what: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args]
    try:
        done = subprocess.run(
            [str(a) for a in command], capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise ProvinceError(f"pip did not {what} within {PIP_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ProvinceError(f"pip could not {what}:\n{tail}")


def tarball(directory: Path, names: Iterable[str]) -> bytes:
    """A gzip tarball of ``names`` in ``directory``, at its top level, with nothing of this
    machine in it (owner, times, modes): the same wheels give the same bytes."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in sorted(names):
            data = (directory / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_wheelhouse(
    src: Path, out: Path, *, version: str | None = None, with_deps: bool = False
) -> tuple[str, Artifact, list[str]]:
    """Build the wheelhouse of the source tree ``src`` into ``out``: (its Loa version, the file
    as a release names it, the wheels in it)."""
    with tempfile.TemporaryDirectory(prefix="loa-release-") as tmp:
        tree, wheels = Path(tmp) / "src", Path(tmp) / "wheels"
        tree.mkdir()
        built = _copy_source(src, tree, version)
        _pip(["wheel", "--no-deps", *_isolation_args(), "-w", wheels, tree], "build Loa's wheel")
        wheel = wheels / wheel_name(built)
        if not wheel.is_file():
            found = ", ".join(p.name for p in wheels.iterdir())
            raise ProvinceError(f"pip built {found or 'nothing'}, not {wheel.name}")
        if with_deps:
            # The built wheel as the requirement: its dependencies as this version declares them.
            _pip(["wheel", "-w", wheels, wheel], "build the dependencies' wheels")
        names = sorted(p.name for p in wheels.iterdir() if p.name.endswith(".whl"))
        atomic_write(out, tarball(wheels, names))
    return built, Artifact.of(out), names


def wheelhouse_wheels(path: Path, version: str) -> list[str]:
    """The wheels of the wheelhouse at ``path``; ProvinceError unless it is a gzip tarball of
    wheels at its top level with Loa ``version``'s among them (what a station installs)."""
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ProvinceError(f"{path} is not a gzip tarball: {exc}") from exc
    odd = [m.name for m in members if not (m.isfile() and _TOP_WHEEL.fullmatch(m.name))]
    if odd:
        raise ProvinceError(f"{path} holds more than wheels at its top level: {odd[:5]}")
    names = sorted(m.name for m in members)
    if wheel_name(version) not in names:
        raise ProvinceError(f"{path} does not hold {wheel_name(version)} (it holds {names})")
    return names


# -- the release body and its signature --------------------------------------------------------


def release_body(
    target: str, version: str, min_version: str, url: str, artifact: Artifact, now: datetime,
    valid: timedelta,
) -> bytes:  # fmt: skip
    """The release body as canonical JSON, checked as stations check it (BodyError)."""
    doc = {
        "kind": "release", "schema": 1, "issuer": province_of(target), "target": target,
        "version": version, "min_version": min_version, "issued_at": format_rfc3339(now),
        "expires": format_rfc3339(now + valid),
        "artifact": {"url": url, "sha256": artifact.sha256, "bytes": artifact.bytes},
    }  # fmt: skip
    body = canonical_json(doc)
    check_body(body)
    return body


def check_release_keys(keyring: Keyring, envelope: bytes, signers: Sequence[Signer]) -> None:
    """Refuse at the desk what every station holding ``keyring`` would refuse for the keys:
    the release role's threshold and the keys' scope, by the station's own checks."""
    parsed = dsse.parse_envelope(envelope, len(envelope))
    doc = json.loads(parsed.body)
    if ROLE not in keyring.roles:
        raise ProvinceError(
            f"keyring v{keyring.version} has no '{ROLE}' role: its stations trust no release. "
            f"Publish a keyring with --key {ROLE}=FILE first"
        )
    try:
        signed_by = check_threshold(parsed, keyring, ROLE)
        check_scope(keyring, signed_by, ROLE, doc["issuer"], doc["target"])
    except Rejected as exc:
        names = ", ".join(s.describe() for s in signers)
        raise ProvinceError(
            f"stations would refuse this release: {exc.code}: {exc.detail} (keyring "
            f"v{keyring.version} wants {keyring.roles[ROLE].threshold} '{ROLE}' key(s) of "
            f"province {doc['issuer']}; signed by {names})"
        ) from exc


def sign_release(
    body: bytes, signers: Sequence[Signer], home: Path, now: datetime, keyring: Keyring | None
) -> bytes:
    """The envelope, checked like ``loa-province sign`` checks it and against ``keyring`` (when
    one is known), logged before it is released."""
    envelope = sign_body(body, signers)
    if keyring is not None:
        check_release_keys(keyring, envelope, signers)
    signing_log.append(signing_log.log_path(home), signed_record(body, envelope, signers), now)
    return envelope


def home_keyring(home: Path) -> tuple[Keyring | None, str | None]:
    """(the newest keyring this home published, its province), both None without a registry:
    release keys may well live on a desk that has none."""
    if home_store_url() is None and not (home / REGISTRY_FILE).exists():
        return None, None
    with open_home_registry(home) as registry:
        return newest_keyring(registry), registry.meta("province")


# -- what the stations made of it --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CurrentRelease:
    """The release a topic currently retains: the last one published on it."""

    topic: str
    issuer: str
    target: str
    version: str
    expires: datetime
    published_at: str

    @property
    def order(self) -> tuple[tuple[int, int, int], int]:
        # The higher version wins (a station refuses the lower one as a rollback once it runs
        # the higher); of one version, the most specific target.
        return parse_version(self.version), self.target.count("/")


@dataclass(frozen=True, slots=True)
class StationUpdate:
    station: str
    running: str | None  # the agent_version of its latest heartbeat or birth
    running_heard_at: str | None  # when the province received that
    release: str | None  # the version of the release meant for it
    release_target: str | None
    state: str  # pending, waiting, applied, failed, rolled back, up to date, expired, unknown
    reason: str | None = None  # a failure's or a rollback's, as the station said it
    since: str | None = None  # when the province received the event the state comes from


def current_releases(registry: Registry) -> list[CurrentRelease]:
    """Per release topic, the last release published on it (the one the broker retains)."""
    latest: dict[str, CurrentRelease] = {}
    for published in registry.published(ROLE):
        doc = json.loads(published.body)
        latest[published.topic] = CurrentRelease(
            published.topic, doc["issuer"], doc["target"], doc["version"],
            parse_rfc3339(doc["expires"]), published.published_at,
        )  # fmt: skip
    return list(latest.values())


def first_published(registry: Registry) -> dict[str, datetime]:
    """Per version, when a release of it was first published (its events come after)."""
    first: dict[str, datetime] = {}
    for published in registry.published(ROLE):
        version = json.loads(published.body)["version"]
        first.setdefault(version, datetime.fromisoformat(published.published_at))
    return first


def release_for(station: str, releases: Iterable[CurrentRelease]) -> CurrentRelease | None:
    covering = [r for r in releases if is_within(station, r.target)]
    return max(covering, key=lambda r: r.order, default=None)


def _doc(body: bytes) -> dict[str, Any]:
    try:
        doc = strict.loads(body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def running_version(registry: Registry, station: str) -> tuple[str | None, str | None]:
    """(the agent_version the station last said it runs, when the province heard it): from its
    latest heartbeat or its birth, whichever came later."""
    said: list[tuple[datetime, str, str]] = []
    beat = registry.last_report(station, "heartbeat")
    state = registry.station_state(station)
    heard = [(beat.body, beat.received_at)] if beat is not None else []
    if state is not None and state.online:  # a Will says nothing of the version
        heard.append((state.body, state.received_at))
    for body, received_at in heard:
        version = _doc(body).get("agent_version")
        if isinstance(version, str):
            when = datetime.fromisoformat(received_at)
            said.append((when, clean_text(version, _SHORT), received_at))
    if not said:
        return None, None
    _, version, received_at = max(said)
    return version, received_at


def update_events(
    registry: Registry, stations: Sequence[str], since: datetime
) -> dict[str, list[tuple[dict[str, Any], str]]]:
    """Per station, its update events received since ``since``, in the order it raised them."""
    found: dict[str, list[tuple[dict[str, Any], str]]] = {}
    for report in registry.reports("event", stations, received_since=since):
        doc = _doc(report.body)
        if doc.get("code") in EVENT_STATES:
            found.setdefault(report.station, []).append((doc, report.received_at))
    return found


def judge(
    running: str | None, release: CurrentRelease | None,
    events: Sequence[tuple[dict[str, Any], str]], now: datetime,
) -> tuple[str, str | None, str | None]:  # fmt: skip
    """(state, reason, since) of one station about ``release``."""
    try:
        runs = None if running is None else parse_version(running)
    except ValueError:
        runs = None  # not a release version (a development build): says nothing either way
    if release is None:
        return (UNKNOWN if running is None else UP_TO_DATE), None, None
    about = [(doc, at) for doc, at in events if doc.get("version") == release.version]
    if runs is not None and runs >= parse_version(release.version):
        since = next((at for doc, at in reversed(about) if doc["code"] == "update-applied"), None)
        return (APPLIED if runs == parse_version(release.version) else UP_TO_DATE), None, since
    if about:
        doc, at = about[-1]
        state = EVENT_STATES[doc["code"]]
        reason = doc.get("reason") or doc.get("detail") if state in (FAILED, ROLLED_BACK) else None
        if state != PENDING:
            return state, None if reason is None else clean_text(reason, 200), at
    if now >= release.expires:
        return EXPIRED, None, None  # the station would refuse it now: publish a new one
    return PENDING, None, None


def updates(registry: Registry, target: str, now: datetime) -> list[StationUpdate]:
    """Every active station of ``target``: what it runs, its release, how far it got."""
    stations = [s.id.path for s in registry.stations_in(target)]
    releases = current_releases(registry)
    chosen = {s: release_for(s, releases) for s in stations}
    first = first_published(registry)
    versions = {r.version for r in chosen.values() if r is not None}
    events = {}
    if versions:
        # Events about a release come after it was published; the slack covers the clocks of
        # the desk that published and the collector that received.
        events = update_events(registry, stations, min(first[v] for v in versions) - EVENT_SLACK)
    result = []
    for station in stations:
        release = chosen[station]
        running, heard_at = running_version(registry, station)
        state, reason, since = judge(running, release, events.get(station, []), now)
        result.append(
            StationUpdate(
                station, running, heard_at, None if release is None else release.version,
                None if release is None else release.target, state, reason, since,
            )
        )  # fmt: skip
    return result


def render_updates(rows: Sequence[StationUpdate]) -> str:
    header = ["station", "running", "release", "for", "state", "since", "reason"]
    body = [
        [r.station, r.running or "?", r.release or "-", r.release_target or "-", r.state,
         r.since or "-", r.reason or "-"]
        for r in rows
    ]  # fmt: skip
    return align_table(header, body, "lllllll", total=False)


# -- the subcommands ---------------------------------------------------------------------------


def _days(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 3660:
        raise argparse.ArgumentTypeError(f"wants whole days from 1 to 3660, got {text!r}")
    return int(text)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    home_help = "province home (default: $LOA_PROVINCE_HOME or ./province-home)"
    release = sub.add_parser("release", help="build, sign and publish a signed release")
    steps = release.add_subparsers(dest="step", required=True)

    build = steps.add_parser("build", help="a wheelhouse (gzip tarball of wheels) from source")
    build.add_argument("--src", type=Path, default=Path("."), help="the source tree (default .)")
    build.add_argument("--version", help="build as this version (a copy of pyproject.toml)")
    build.add_argument(
        "--with-deps", action="store_true",
        help="the dependencies' wheels too, built for this machine: run it on the stations' "
        "platform (a Pi with their OS) when they need compiled ones",
    )  # fmt: skip
    build.add_argument("--out", type=Path, required=True)
    build.set_defaults(handler=cmd_build)

    sign = steps.add_parser("sign", help="the release body for an artifact, signed")
    sign.add_argument("--version", required=True, help="MAJOR.MINOR.PATCH")
    sign.add_argument("--min-version", required=True, help="the oldest version that may update")
    sign.add_argument("--target", required=True, help="PP, PP/CCCCC or PP/CCCCC/NAME")
    sign.add_argument("--url", required=True, help="where stations fetch the artifact")
    sign.add_argument("--artifact", type=Path, required=True, help="the wheelhouse file")
    sign.add_argument(
        "--key", action="append", required=True, metavar="KEY", help="release key (repeat)"
    )
    sign.add_argument(
        "--valid", type=_days, default=DEFAULT_VALID_DAYS, metavar="DAYS",
        help=f"days stations may take it (default {DEFAULT_VALID_DAYS})",
    )  # fmt: skip
    sign.add_argument("--out", type=Path, required=True)
    sign.add_argument("--home", type=Path, default=default_home(), help=home_help)
    sign.set_defaults(handler=cmd_sign)

    send = steps.add_parser("publish", help="send a release envelope to its topic (retained)")
    send.add_argument("envelope", type=Path, metavar="ENVELOPE")
    send.add_argument("--home", type=Path, default=default_home(), help=home_help)
    send.add_argument("--broker", required=True, help="mqtts://host:port")
    send.set_defaults(handler=cmd_publish)

    view = sub.add_parser("updates", help="per station: version running, its release, state")
    view.add_argument("--target", help="a province, commune or station (default: the province)")
    view.add_argument("--json", action="store_true", help="JSON instead of the table")
    view.add_argument("--home", type=Path, default=default_home(), help=home_help)
    view.set_defaults(handler=cmd_updates)


def cmd_build(args: argparse.Namespace) -> int:
    version, artifact, wheels = build_wheelhouse(
        args.src, args.out, version=args.version, with_deps=args.with_deps
    )
    print(f"wrote {args.out}: Loa {version}, {len(wheels)} wheel(s): {', '.join(wheels)}")
    print(f"sha256 {artifact.sha256}")
    print(f"bytes {artifact.bytes}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    keyring, province = home_keyring(args.home)
    check_target(args.target, province or province_of(args.target))
    wheelhouse_wheels(args.artifact, args.version)
    artifact = Artifact.of(args.artifact)
    body = release_body(
        args.target, args.version, args.min_version, args.url, artifact, now,
        timedelta(days=args.valid),
    )  # fmt: skip
    signers = [open_signer(spec) for spec in args.key]
    envelope = sign_release(body, signers, args.home, now, keyring)
    atomic_write(args.out, envelope)
    print(f"wrote {args.out}: release {args.version} (from {args.min_version}) for {args.target}")
    print(f"artifact sha256 {artifact.sha256}, {artifact.bytes} bytes, {args.url}")
    if keyring is None:
        print(f"no keyring published from {args.home}: signatures not checked against one")
    else:
        print(f"keys checked against keyring v{keyring.version}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    envelope = args.envelope.read_bytes()
    try:
        parsed = dsse.parse_envelope(envelope, len(envelope))
        kind = check_body(parsed.body)
    except (Rejected, BodyError) as exc:
        raise ProvinceError(f"{args.envelope} is not a release envelope: {exc}") from exc
    if kind != ROLE:
        raise ProvinceError(f"{args.envelope} is a {kind}, not a release: `loa-province publish`")
    with open_home_registry(args.home) as registry:
        registry_province(registry)  # refused in words before anything is sent
        sent = publish(registry, args.home, args.broker, [envelope], datetime.now(UTC))
    for outgoing in sent:
        print(f"published release {outgoing.label[1:]} -> {outgoing.topic} (retained)")
    return 0


def cmd_updates(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    with open_home_registry(args.home) as registry:
        province = registry_province(registry)
        target = args.target or province
        check_target(target, province)
        rows = updates(registry, target, now)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], ensure_ascii=False, indent=1))
    elif not rows:
        print(f"no stations enrolled in {target}")
    else:
        sys.stdout.write(render_updates(rows))
    return 0
