"""What the station trusts and remembers between messages, and how accepted messages change it.

``TrustState`` is an immutable snapshot: the verifier reads it, never writes it. An accepted
message yields *effects*; ``apply`` turns a snapshot and effects into the next snapshot, and the
state store writes the same effects to disk in one transaction. Keeping the two paths on one list
of effects is what makes "persist only after every check passed" easy to keep true.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType

from agent.core.models import Keyring

Stream = tuple[str, str]  # (issuer, target)
Version = tuple[int, int, int]  # a release version, as agent/core/release.py compares them


@dataclass(frozen=True, slots=True)
class StreamRecord:
    version: int
    body_sha256: str
    # Set when a keyring rotation removed or replaced the issuer's keys: the next playlist of
    # this stream is accepted whatever its version (TUF's fast-forward recovery).
    floor_reset: bool = False


@dataclass(frozen=True, slots=True)
class TrustState:
    keyring: Keyring | None = None
    keyring_sha256: str = ""
    streams: Mapping[Stream, StreamRecord] = field(default_factory=lambda: MappingProxyType({}))
    commands: Mapping[str, datetime] = field(default_factory=lambda: MappingProxyType({}))
    time_floor: datetime | None = None
    # Releases (docs/releases.md): the highest version ever confirmed running, and the body hash
    # of the release accepted for each version (the same bytes again are a no-op).
    release_floor: Version | None = None
    releases: Mapping[Version, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class StoreKeyring:
    keyring: Keyring
    body_sha256: str
    body: bytes
    envelope: bytes
    reset_issuers: frozenset[str]


@dataclass(frozen=True, slots=True)
class StorePlaylist:
    stream: Stream
    version: int
    body_sha256: str
    body: bytes
    envelope: bytes


@dataclass(frozen=True, slots=True)
class RememberCommand:
    id: str
    expires: datetime


@dataclass(frozen=True, slots=True)
class RaiseTimeFloor:
    floor: datetime


@dataclass(frozen=True, slots=True)
class RecordRelease:
    version: Version
    body_sha256: str


@dataclass(frozen=True, slots=True)
class RaiseReleaseFloor:
    """A version confirmed running (only ever raised): no older release is accepted again."""

    version: Version


Effect = (
    StoreKeyring | StorePlaylist | RememberCommand | RaiseTimeFloor | RecordRelease
    | RaiseReleaseFloor
)  # fmt: skip


def apply(state: TrustState, effects: tuple[Effect, ...]) -> TrustState:
    """The snapshot after ``effects``; ``state`` itself is left as it was."""
    streams = dict(state.streams)
    commands = dict(state.commands)
    keyring, keyring_sha, floor = state.keyring, state.keyring_sha256, state.time_floor
    releases = dict(state.releases)
    release_floor = state.release_floor
    for effect in effects:
        match effect:
            case StoreKeyring():
                keyring, keyring_sha = effect.keyring, effect.body_sha256
                for stream, record in streams.items():
                    if stream[0] in effect.reset_issuers:
                        streams[stream] = replace(record, floor_reset=True)
            case StorePlaylist():
                streams[effect.stream] = StreamRecord(effect.version, effect.body_sha256)
            case RememberCommand():
                commands[effect.id] = effect.expires
            case RaiseTimeFloor():
                if floor is None or effect.floor > floor:
                    floor = effect.floor
            case RecordRelease():
                releases[effect.version] = effect.body_sha256
            case RaiseReleaseFloor():
                if release_floor is None or effect.version > release_floor:
                    release_floor = effect.version
    return TrustState(
        keyring=keyring,
        keyring_sha256=keyring_sha,
        streams=MappingProxyType(streams),
        commands=MappingProxyType(commands),
        time_floor=floor,
        release_floor=release_floor,
        releases=MappingProxyType(releases),
    )
