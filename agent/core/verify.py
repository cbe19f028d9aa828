"""The verification pipeline of PROTOCOL.md section 8: one envelope in, one verdict out.

Checks run in the protocol's order and the first failure is the verdict; nothing here changes
any state. An accepted envelope comes back with the effects that the caller persists (and
applies to its snapshot) in one step. Decisions this module makes where the protocol is silent
are written down in ``docs/protocol.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from agent.core import strict
from agent.core.codes import Code, Rejected
from agent.core.dsse import Envelope, parse_envelope
from agent.core.models import Command, Keyring, Playlist, TimeBeacon
from agent.core.release import Release, format_version, parse_version, version_step
from agent.core.schema import SchemaError, SchemaSet
from agent.core.targets import StationId, may_sign
from agent.core.trust_state import (
    Effect,
    RaiseTimeFloor,
    RecordRelease,
    RememberCommand,
    StoreKeyring,
    StorePlaylist,
    TrustState,
)

MiB = 1024 * 1024
KiB = 1024

PAYLOAD_KINDS: Mapping[str, str] = {
    "application/vnd.loa.playlist+json": "playlist",
    "application/vnd.loa.command+json": "command",
    "application/vnd.loa.keyring+json": "keyring",
    "application/vnd.loa.time+json": "time",
    "application/vnd.loa.release+json": "release",
}
PAYLOAD_TYPES: Mapping[str, str] = {kind: ptype for ptype, kind in PAYLOAD_KINDS.items()}

ACTION_ROLES: Mapping[str, str] = {
    "emergency": "emergency",
    "cancel": "emergency",
    "live_start": "command",
    "live_stop": "command",
    "stop": "command",
    "set_volume": "command",
    "relay_test": "command",
    "resync": "maintenance",
}
COMMAND_ROLES = ("command", "emergency", "maintenance")
# Under an untrusted clock only what may save lives (or stop it) gets through (section 9).
UNTRUSTED_CLOCK_ACTIONS = frozenset({"emergency", "cancel"})


@dataclass(frozen=True, slots=True)
class Limits:
    envelope_bytes: int = 3 * MiB
    body_bytes: Mapping[str, int] = field(
        default_factory=lambda: {
            "playlist": 2 * MiB,
            "keyring": 256 * KiB,
            "command": 64 * KiB,
            "time": 4 * KiB,
            "release": 16 * KiB,
        }
    )
    clock_skew: timedelta = timedelta(minutes=5)
    keyring_grace: timedelta = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class ClockView:
    """What the station's clock says and whether the kernel (or config) vouches for it."""

    now: datetime
    synchronised: bool


@dataclass(frozen=True, slots=True)
class Context:
    station: StationId
    clock: ClockView
    schemas: SchemaSet
    limits: Limits = Limits()
    topic: str | None = None  # the MQTT topic it arrived on; None for `loa-agent ingest`
    # The agent's own version (agent/version.py), for the version step of releases; None or a
    # version that is not MAJOR.MINOR.PATCH refuses every release (nothing to compare with).
    running_version: str | None = None


Message = Playlist | Command | Keyring | TimeBeacon | Release


@dataclass(frozen=True, slots=True)
class Accepted:
    kind: str
    issuer: str
    label: str  # "v17" for versioned kinds ("v0.2.0" for a release), the id for a command
    message: Message
    body: bytes
    effects: tuple[Effect, ...]
    noop: bool = False  # byte-identical to what the station already holds

    def line(self) -> str:
        return f"accepted {self.kind} {self.issuer} {self.label}"


@dataclass(frozen=True, slots=True)
class Rejection:
    code: Code
    detail: str
    kind: str | None = None

    def line(self) -> str:
        return f"rejected {self.code}"


Verdict = Accepted | Rejection


def verify(state: TrustState, data: bytes, ctx: Context) -> Verdict:
    """Run every check on ``data``; never raises on bad input, never changes ``state``."""
    kind: str | None = None
    try:
        envelope = parse_envelope(data, ctx.limits.envelope_bytes)  # 1, 2
        kind = PAYLOAD_KINDS.get(envelope.payload_type)  # 3
        if kind is None:
            raise Rejected(Code.WRONG_PAYLOAD_TYPE, f"payload type {envelope.payload_type!r}")
        cap = ctx.limits.body_bytes[kind]
        if len(envelope.body) > cap:
            raise Rejected(Code.TOO_LARGE, f"{kind} body is {len(envelope.body)} bytes, cap {cap}")
        return _CHECKS[kind](state, envelope, data, ctx)
    except Rejected as exc:
        return Rejection(exc.code, exc.detail, kind)


# --- step 4: signatures ----------------------------------------------------------------------


def check_threshold(envelope: Envelope, keyring: Keyring, *roles: str) -> frozenset[str]:
    """Return the keys with a valid signature of the first role whose threshold they meet, or
    raise the section 8 code. Several roles are given only when the role cannot be known yet
    (a command whose action is unreadable): then any of them may vouch.

    Each key counts once however often it signed; signatures by keys outside the roles, or with
    no keyid, are ignored (a keyid only selects a key, it never grants anything).
    """
    role_keys = frozenset().union(*(keyring.role_keys(r) for r in roles))
    valid: set[str] = set()
    failed = False
    known = False
    for signature in envelope.signatures:
        entry = keyring.keys.get(signature.keyid or "")
        if entry is None:
            continue
        known = True
        if entry.keyid not in role_keys or entry.keyid in valid:
            continue
        if envelope.verifies_with(entry.public, signature):
            valid.add(entry.keyid)
        else:
            failed = True
    for role in roles:
        if role in keyring.roles and len(valid & keyring.roles[role].keyids) >= (
            keyring.roles[role].threshold
        ):
            return frozenset(valid & keyring.roles[role].keyids)
    names = "/".join(roles)
    if failed:
        raise Rejected(Code.BAD_SIGNATURE, f"a {names} key's signature does not verify")
    if not known:
        raise Rejected(Code.UNKNOWN_KEY, "no signature is by a key of the keyring")
    thresholds = "/".join(str(keyring.roles[r].threshold) for r in roles if r in keyring.roles)
    raise Rejected(
        Code.THRESHOLD_NOT_MET, f"{len(valid)} of {thresholds or 'n/a'} {names} signatures"
    )


def _require_keyring(state: TrustState) -> Keyring:
    if state.keyring is None:
        raise Rejected(Code.UNKNOWN_KEY, "no keyring installed: the station trusts no key yet")
    return state.keyring


# --- step 5: body ----------------------------------------------------------------------------


def _parse_body(kind: str, body: bytes, schemas: SchemaSet) -> dict[str, Any]:
    try:
        doc = strict.loads(body)
    except strict.StrictDecodeError as exc:
        raise Rejected(Code.SCHEMA, f"body: {exc}") from exc
    try:
        schemas.validate(kind, doc)
    except SchemaError as exc:
        raise Rejected(Code.SCHEMA, str(exc)) from exc
    assert isinstance(doc, dict)  # every body schema says "type": "object"
    return doc


T = TypeVar("T")


def _model(build: Callable[[dict[str, Any]], T], doc: dict[str, Any]) -> T:
    try:
        return build(doc)
    except (ValueError, KeyError) as exc:
        raise Rejected(Code.SCHEMA, str(exc)) from exc


def _peek_action(body: bytes) -> str | None:
    """The command's action before the body is validated: it decides which role must sign."""
    try:
        doc = strict.loads(body)
    except strict.StrictDecodeError:
        return None
    action = doc.get("action") if isinstance(doc, dict) else None
    return action if isinstance(action, str) and action in ACTION_ROLES else None


# --- step 6 and 7: scope and audience --------------------------------------------------------


def check_scope(
    keyring: Keyring, signers: frozenset[str], role: str, issuer: str, target: str
) -> None:
    in_scope = [k for k in signers if may_sign(keyring.keys[k].scope, issuer, target)]
    threshold = keyring.roles[role].threshold
    if len(in_scope) < threshold:
        raise Rejected(
            Code.OUT_OF_SCOPE,
            f"{len(in_scope)} of {threshold} signing keys may sign as {issuer} for {target}",
        )


def check_audience(ctx: Context, target: str, expected_topic: str) -> None:
    if not any(target == mine for mine in ctx.station.audience):
        raise Rejected(Code.WRONG_AUDIENCE, f"target {target} is not {ctx.station.path}")
    if ctx.topic is not None and ctx.topic != expected_topic:
        raise Rejected(Code.WRONG_AUDIENCE, f"arrived on {ctx.topic}, belongs on {expected_topic}")


# --- step 8 and 9: clock and time window -----------------------------------------------------


def clock_trusted(state: TrustState, clock: ClockView) -> bool:
    """Section 9: synchronised (kernel or config) and never below the persisted floor."""
    return clock.synchronised and (state.time_floor is None or clock.now >= state.time_floor)


def _trusted_now(state: TrustState, ctx: Context) -> datetime | None:
    """The wall time when it can be trusted, else None."""
    return ctx.clock.now if clock_trusted(state, ctx.clock) else None


def trust_alerts(state: TrustState, clock: ClockView, limits: Limits) -> tuple[str, ...]:
    """What every heartbeat and event must say about trust while it lasts (sections 4, 9)."""
    alerts: list[str] = []
    trusted = clock_trusted(state, clock)
    now = clock.now if trusted else state.time_floor
    keyring = state.keyring
    if keyring is not None and now is not None and now >= keyring.expires:
        alerts.append(str(Code.KEYRING_EXPIRED))
        if now >= keyring.expires + limits.keyring_grace:
            alerts.append("keyring-grace-over")
    if not trusted:
        alerts.append(str(Code.CLOCK_UNTRUSTED))
    return tuple(alerts)


def _check_keyring_alive(keyring: Keyring, now: datetime, ctx: Context) -> None:
    if now >= keyring.expires + ctx.limits.keyring_grace:
        raise Rejected(
            Code.KEYRING_EXPIRED,
            f"keyring v{keyring.version} expired {keyring.expires.isoformat()} and its grace "
            "period is over: only a successor keyring is accepted",
        )


def _check_window(now: datetime, issued_at: datetime, expires: datetime, ctx: Context) -> None:
    if now >= expires:
        raise Rejected(Code.EXPIRED, f"expired at {expires.isoformat()}")
    if issued_at > now + ctx.limits.clock_skew:
        raise Rejected(Code.NOT_YET_VALID, f"issued at {issued_at.isoformat()}, in the future")


# --- the four kinds --------------------------------------------------------------------------


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class _Stream(Protocol):
    """A signed body of a retained stream (a playlist, a release): who, for whom, and when."""

    @property
    def issuer(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def issued_at(self) -> datetime: ...
    @property
    def expires(self) -> datetime: ...


S = TypeVar("S", bound=_Stream)


def _checked_stream(
    state: TrustState, env: Envelope, ctx: Context, kind: str, build: Callable[[dict[str, Any]], S]
) -> S:
    """Section 8 steps 4 to 9 for a stream whose topic is ``loa/v1/{target}/{kind}/{issuer}``
    and whose role is ``kind``: signatures, body, scope, audience, a trusted clock, the window."""
    keyring = _require_keyring(state)
    signers = check_threshold(env, keyring, kind)
    body = _model(build, _parse_body(kind, env.body, ctx.schemas))
    check_scope(keyring, signers, kind, body.issuer, body.target)
    check_audience(ctx, body.target, f"loa/v1/{body.target}/{kind}/{body.issuer}")
    now = _trusted_now(state, ctx)
    if now is None:
        raise Rejected(Code.CLOCK_UNTRUSTED, f"{kind}s wait for a trusted clock")
    _check_keyring_alive(keyring, now, ctx)
    _check_window(now, body.issued_at, body.expires, ctx)
    return body


def _check_playlist(state: TrustState, env: Envelope, raw: bytes, ctx: Context) -> Verdict:
    playlist = _checked_stream(state, env, ctx, "playlist", Playlist.from_body)
    sha = _sha(env.body)
    label = f"v{playlist.version}"
    held = state.streams.get(playlist.stream)
    if held is not None and not held.floor_reset:
        if playlist.version < held.version:
            raise Rejected(Code.ROLLBACK, f"v{playlist.version} is below v{held.version}")
        if playlist.version == held.version:
            if sha != held.body_sha256:
                raise Rejected(Code.VERSION_CONFLICT, f"{label} differs from the {label} held")
            return Accepted("playlist", playlist.issuer, label, playlist, env.body, (), noop=True)
    effect = StorePlaylist(playlist.stream, playlist.version, sha, env.body, raw)
    return Accepted("playlist", playlist.issuer, label, playlist, env.body, (effect,))


def _check_command(state: TrustState, env: Envelope, raw: bytes, ctx: Context) -> Verdict:
    keyring = _require_keyring(state)
    action = _peek_action(env.body)
    if action is None:
        # The role is unknown until the body is valid; demand a valid signature by *some*
        # command-capable role so that an anonymous sender learns nothing from `schema`.
        check_threshold(env, keyring, *COMMAND_ROLES)
        _parse_body("command", env.body, ctx.schemas)
        raise Rejected(Code.SCHEMA, "command action missing or unknown")
    role = ACTION_ROLES[action]
    signers = check_threshold(env, keyring, role)
    command = _model(Command.from_body, _parse_body("command", env.body, ctx.schemas))
    check_scope(keyring, signers, role, command.issuer, command.target)
    check_audience(ctx, command.target, f"loa/v1/{command.target}/cmd")
    now = _trusted_now(state, ctx)
    if now is None:
        if action not in UNTRUSTED_CLOCK_ACTIONS:
            raise Rejected(Code.CLOCK_UNTRUSTED, f"{action} waits for a trusted clock")
        floor = state.time_floor
        if floor is not None and command.issued_at < floor:
            raise Rejected(Code.CLOCK_UNTRUSTED, "issued before the station's time floor")
        # The best lower bound of the time is the floor; the player bounds the emergency by
        # expires - issued_at on the monotonic clock.
        now = floor if floor is not None else command.issued_at
        _check_keyring_alive(keyring, now, ctx)
        if now >= command.expires:
            raise Rejected(Code.EXPIRED, f"expired at {command.expires.isoformat()}")
    else:
        _check_keyring_alive(keyring, now, ctx)
        _check_window(now, command.issued_at, command.expires, ctx)
    remembered = state.commands.get(command.id)
    if remembered is not None and remembered > now:
        raise Rejected(Code.REPLAY, f"command {command.id} was already accepted")
    effect = RememberCommand(command.id, command.expires)
    return Accepted("command", command.issuer, command.id, command, env.body, (effect,))


def _check_keyring(state: TrustState, env: Envelope, raw: bytes, ctx: Context) -> Verdict:
    current = state.keyring
    if current is not None:
        old_signers = check_threshold(env, current, "root")
    new = _model(Keyring.from_body, _parse_body("keyring", env.body, ctx.schemas))
    new_signers = check_threshold(env, new, "root")  # a keyring is signed by its own roots
    province = new.province
    if current is not None:
        check_scope(current, old_signers, "root", province, province)
    check_scope(new, new_signers, "root", province, province)
    check_audience(ctx, province, f"loa/v1/{province}/keyring/{new.version}")
    now = _trusted_now(state, ctx)
    if now is None:
        raise Rejected(Code.CLOCK_UNTRUSTED, "keyrings wait for a trusted clock")
    if now >= new.expires:
        raise Rejected(Code.EXPIRED, f"keyring v{new.version} expired {new.expires.isoformat()}")
    sha = _sha(env.body)
    label = f"v{new.version}"
    reset: frozenset[str] = frozenset()
    if current is not None:
        if new.version < current.version:
            raise Rejected(Code.ROLLBACK, f"keyring {label} is below v{current.version}")
        if new.version == current.version:
            if sha != state.keyring_sha256:
                raise Rejected(Code.VERSION_CONFLICT, f"keyring {label} differs from the one held")
            return Accepted("keyring", province, label, new, env.body, (), noop=True)
        if new.version != current.version + 1:
            raise Rejected(
                Code.VERSION_GAP, f"keyring {label} after v{current.version}: apply them in order"
            )
        reset = issuers_losing_keys(current, new, {issuer for issuer, _ in state.streams})
    effect = StoreKeyring(new, sha, env.body, raw, reset)
    return Accepted("keyring", province, label, new, env.body, (effect,))


def issuers_losing_keys(old: Keyring, new: Keyring, issuers: set[str]) -> frozenset[str]:
    """Issuers one of whose playlist keys the rotation removed or replaced (section 4)."""

    def keys_for(keyring: Keyring, issuer: str) -> set[str]:
        return {
            k
            for k in keyring.role_keys("playlist")
            if any(entry.split("/")[-1] == issuer for entry in keyring.keys[k].scope)
        }

    return frozenset(i for i in issuers if keys_for(old, i) - keys_for(new, i))


def _check_time(state: TrustState, env: Envelope, raw: bytes, ctx: Context) -> Verdict:
    keyring = _require_keyring(state)
    signers = check_threshold(env, keyring, "maintenance")
    beacon = _model(TimeBeacon.from_body, _parse_body("time", env.body, ctx.schemas))
    check_scope(keyring, signers, "maintenance", beacon.province, beacon.province)
    check_audience(ctx, beacon.province, f"loa/v1/{beacon.province}/time")
    now = _trusted_now(state, ctx)
    judged_at = now if now is not None else state.time_floor
    if judged_at is not None:
        _check_keyring_alive(keyring, judged_at, ctx)
    if now is not None and beacon.ts > now + ctx.limits.clock_skew:
        raise Rejected(Code.NOT_YET_VALID, f"beacon {beacon.ts.isoformat()} is in the future")
    # A station that cannot check the beacon against its own clock still knows no honest
    # beacon lies beyond the life of the keyring that vouches for it: a far-future beacon
    # (one stolen maintenance signature) must not lift the floor out of reach for good.
    if beacon.ts > keyring.expires + ctx.limits.keyring_grace:
        raise Rejected(Code.NOT_YET_VALID, "beacon is beyond the keyring's life")
    label = beacon.ts.isoformat()
    floor = state.time_floor
    if floor is not None and beacon.ts <= floor:
        return Accepted("time", beacon.province, label, beacon, env.body, (), noop=True)
    return Accepted("time", beacon.province, label, beacon, env.body, (RaiseTimeFloor(beacon.ts),))


def _check_release(state: TrustState, env: Envelope, raw: bytes, ctx: Context) -> Verdict:
    """docs/releases.md: the section 8 order with role ``release``, then the version step."""
    release = _checked_stream(state, env, ctx, "release", Release.from_body)
    try:
        running = parse_version(ctx.running_version or "")
    except ValueError as exc:
        raise Rejected(
            Code.UPDATE_INCOMPATIBLE, f"the running version is not comparable: {exc}"
        ) from exc
    sha = _sha(env.body)
    step = version_step(release, sha, running, state.release_floor, state.releases)
    if step.code is not None:
        raise Rejected(step.code, step.detail)
    label = f"v{format_version(release.version)}"
    if step.noop:
        return Accepted("release", release.issuer, label, release, env.body, (), noop=True)
    effect = RecordRelease(release.version, sha)
    return Accepted("release", release.issuer, label, release, env.body, (effect,))


_CHECKS: Mapping[str, Callable[[TrustState, Envelope, bytes, Context], Verdict]] = {
    "playlist": _check_playlist,
    "command": _check_command,
    "keyring": _check_keyring,
    "time": _check_time,
    "release": _check_release,
}
