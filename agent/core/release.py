"""Signed releases (docs/releases.md), the pure part: the release body as a typed value, its
version arithmetic, the version step of the verification order, and when an update may happen.

Versions are ``MAJOR.MINOR.PATCH`` compared as integer triples; the text is kept canonical (no
leading zeros, which the schema refuses) so that one version has one directory name under
``state/updates/``. Nothing here reads a file, the clock or the network: the updater
(``agent/updater.py``) gives it what it needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agent.core.codes import Code
from agent.core.planner import Occurrence
from agent.core.timefmt import parse_rfc3339

Version = tuple[int, int, int]
_VERSION = re.compile(r"\A(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\Z")
# Printable ASCII without spaces, as media URLs (models.py): the schema lets control chars by.
_URL = re.compile(r"\Ahttps?://[\x21-\x7e]+\Z", re.ASCII)


def parse_version(text: str) -> Version:
    """``"0.2.0"`` -> ``(0, 2, 0)``; anything else (``0.2``, ``0.02.0``, ``1.0.0rc1``) raises
    ValueError."""
    match = _VERSION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a MAJOR.MINOR.PATCH version: {text!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return (major, minor, patch)


def format_version(version: Version) -> str:
    return ".".join(str(part) for part in version)


def is_version(text: object) -> bool:
    return isinstance(text, str) and _VERSION.match(text) is not None


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    url: str
    sha256: str
    bytes: int


@dataclass(frozen=True, slots=True)
class Release:
    issuer: str
    target: str
    version: Version
    min_version: Version
    issued_at: datetime
    expires: datetime
    artifact: ArtifactRef

    @property
    def version_text(self) -> str:
        return format_version(self.version)

    @classmethod
    def from_body(cls, doc: Mapping[str, Any]) -> Release:
        """From a body that passed ``release.schema.json``; ValueError for what it cannot say."""
        version = parse_version(doc["version"])
        min_version = parse_version(doc["min_version"])
        if min_version > version:
            raise ValueError(f"min_version {doc['min_version']} is above version {doc['version']}")
        issued_at = parse_rfc3339(doc["issued_at"])
        expires = parse_rfc3339(doc["expires"])
        if expires <= issued_at:
            raise ValueError("expires is not after issued_at")
        artifact = doc["artifact"]
        if not _URL.match(artifact["url"]):
            raise ValueError("artifact URL must be http(s) and printable ASCII")
        return cls(
            issuer=doc["issuer"],
            target=doc["target"],
            version=version,
            min_version=min_version,
            issued_at=issued_at,
            expires=expires,
            artifact=ArtifactRef(artifact["url"], artifact["sha256"], artifact["bytes"]),
        )


@dataclass(frozen=True, slots=True)
class VersionVerdict:
    """The version step: a refusal (``code`` set), the same release again (``noop``), or new."""

    code: Code | None
    detail: str
    noop: bool = False


def version_step(
    release: Release,
    body_sha256: str,
    running: Version,
    floor: Version | None,
    held: Mapping[Version, str],
) -> VersionVerdict:
    """docs/releases.md, step 10 for releases.

    ``running``: the agent's own version; ``floor``: the highest version this station ever
    confirmed running (None before its first confirmed update); ``held``: the body hash of the
    release accepted earlier for a version, if any. Below the floor or the running version is
    ``rollback``, however it was accepted once (a replay of an older release). The version now
    running: its own release again (retained, it arrives at every start) is a no-op, other bytes
    ``rollback``. Above it: the release held already is a no-op, else a running version below
    ``min_version`` is ``update-incompatible``, else the release is new.
    """
    text = release.version_text
    if floor is not None and release.version < floor:
        return VersionVerdict(
            Code.ROLLBACK, f"release {text} is below the version floor {format_version(floor)}"
        )
    same_again = held.get(release.version) == body_sha256
    if release.version < running or (release.version == running and not same_again):
        return VersionVerdict(
            Code.ROLLBACK, f"release {text} is not above the running {format_version(running)}"
        )
    if same_again:
        return VersionVerdict(None, f"release {text} is held already", noop=True)
    if running < release.min_version:
        return VersionVerdict(
            Code.UPDATE_INCOMPATIBLE,
            f"running {format_version(running)} is below release {text}'s min_version "
            f"{format_version(release.min_version)}",
        )
    return VersionVerdict(None, f"release {text} is new")


# --- when an update may happen ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpdateWindow:
    open: bool
    reason: str
    next_start: datetime | None  # the next slot's start, when one is known


def update_window(
    now: datetime, on_air: bool, plan: Iterable[Occurrence], margin: timedelta
) -> UpdateWindow:
    """Whether the station may stop for an update now (docs/releases.md): nothing on air, no
    occurrence of the plan in progress (its ``end`` not reached), and none starting within
    ``margin``. A restart costs the install's minute or two plus a rollback's if it fails: it
    must never cut a broadcast, nor make one start late."""
    upcoming = sorted((o for o in plan if o.start > now), key=lambda o: o.start)
    next_start = upcoming[0].start if upcoming else None
    if on_air:
        return UpdateWindow(False, "on air", next_start)
    for occurrence in plan:
        if occurrence.start <= now and occurrence.end is not None and now < occurrence.end:
            return UpdateWindow(False, f"slot {occurrence.slot_id} is in progress", next_start)
    if upcoming and upcoming[0].start - now < margin:
        first = upcoming[0]
        return UpdateWindow(
            False, f"slot {first.slot_id} starts at {first.start.isoformat()}", next_start
        )
    return UpdateWindow(True, "nothing on air, no slot within the margin", next_start)
