"""Typed, frozen views of verified bodies: keyring, playlist, command, time beacon.

Each ``from_body`` takes a dict that already passed its JSON Schema and adds the checks a schema
cannot express (real dates, known time zones, items naming declared media, keyids matching their
keys). Any failure raises ValueError, which the pipeline reports as ``schema``.
"""

from __future__ import annotations

import hashlib
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from functools import cache
from typing import Any

from agent.core.timefmt import parse_local_time, parse_rfc3339

DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Printable ASCII without spaces: the schema's pattern lets control characters through.
_URL = re.compile(r"\Ahttps?://[\x21-\x7e]+\Z", re.ASCII)
ROLE_NAMES = ("root", "playlist", "command", "emergency", "maintenance", "release")


@cache
def _zones() -> frozenset[str]:
    """The IANA zones this machine knows, excluding aliases of the local setup ("localtime",
    "Factory"): a playlist's clock must mean the same on every station."""
    return frozenset(zoneinfo.available_timezones() - {"localtime", "Factory", "posixrules"})


def _version(value: object) -> int:
    """Versions are compared and stored: 6.0 is a valid JSON Schema integer but not ours."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"version must be an integer, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class KeyEntry:
    keyid: str
    public: bytes
    scope: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Role:
    keyids: frozenset[str]
    threshold: int


@dataclass(frozen=True, slots=True)
class Keyring:
    province: str
    version: int
    expires: datetime
    keys: Mapping[str, KeyEntry]
    roles: Mapping[str, Role]
    live_hosts: tuple[str, ...]

    @classmethod
    def from_body(cls, doc: Mapping[str, Any]) -> Keyring:
        keys: dict[str, KeyEntry] = {}
        for keyid, entry in doc["keys"].items():
            public = bytes.fromhex(entry["public"])
            if hashlib.sha256(public).hexdigest() != keyid:
                raise ValueError(f"keyid {keyid[:12]}… is not the SHA-256 of its public key")
            keys[keyid] = KeyEntry(keyid, public, tuple(entry["scope"]))
        roles: dict[str, Role] = {}
        for name, role in doc["roles"].items():
            keyids = frozenset(role["keyids"])
            unknown = keyids - keys.keys()
            if unknown:
                raise ValueError(f"role {name} names keys not in the keyring")
            if role["threshold"] > len(keyids):
                raise ValueError(f"role {name}: threshold {role['threshold']} > {len(keyids)} keys")
            roles[name] = Role(keyids, role["threshold"])
        return cls(
            province=doc["province"],
            version=_version(doc["version"]),
            expires=parse_rfc3339(doc["expires"]),
            keys=keys,
            roles=roles,
            live_hosts=tuple(doc.get("live_hosts", ())),
        )

    def role_keys(self, role: str) -> frozenset[str]:
        found = self.roles.get(role)
        return found.keyids if found else frozenset()


@dataclass(frozen=True, slots=True)
class MediaRef:
    name: str
    url: str
    sha256: str
    bytes: int
    duration_s: float | None
    title: str | None
    category: str | None

    @classmethod
    def from_body(cls, name: str, doc: Mapping[str, Any]) -> MediaRef:
        url = doc["url"]
        if not _URL.match(url):
            raise ValueError(f"media {name}: URL must be http(s) and printable ASCII")
        return cls(
            name=name,
            url=doc["url"],
            sha256=doc["sha256"],
            bytes=doc["bytes"],
            duration_s=doc.get("duration_s"),
            title=doc.get("title"),
            category=doc.get("category"),
        )


@dataclass(frozen=True, slots=True)
class Slot:
    id: str
    start: time
    end: time | None
    days: frozenset[int] | None  # Monday = 0, as datetime.weekday()
    dates: tuple[date, ...] | None
    items: tuple[str, ...]
    priority: int
    zones: tuple[str, ...]
    volume: int | None
    gap_s: float


@dataclass(frozen=True, slots=True)
class Playlist:
    issuer: str
    target: str
    version: int
    issued_at: datetime
    valid_from: datetime
    expires: datetime
    timezone: str
    media: Mapping[str, MediaRef]
    slots: tuple[Slot, ...]

    @property
    def stream(self) -> tuple[str, str]:
        return (self.issuer, self.target)

    @classmethod
    def from_body(cls, doc: Mapping[str, Any]) -> Playlist:
        tz_name = doc.get("timezone", DEFAULT_TIMEZONE)
        if tz_name not in _zones():
            raise ValueError(f"unknown time zone {tz_name!r}")
        valid_from = parse_rfc3339(doc["valid_from"])
        expires = parse_rfc3339(doc["expires"])
        if valid_from >= expires:
            raise ValueError("valid_from is not before expires")
        media = {name: MediaRef.from_body(name, m) for name, m in doc["media"].items()}
        slots = tuple(_slot(s, media) for s in doc["slots"])
        ids = [s.id for s in slots]
        if len(set(ids)) != len(ids):
            raise ValueError("slot ids are not unique")
        return cls(
            issuer=doc["issuer"],
            target=doc["target"],
            version=_version(doc["version"]),
            issued_at=parse_rfc3339(doc["issued_at"]),
            valid_from=valid_from,
            expires=expires,
            timezone=tz_name,
            media=media,
            slots=slots,
        )


def _slot(doc: Mapping[str, Any], media: Mapping[str, MediaRef]) -> Slot:
    missing = [item for item in doc["items"] if item not in media]
    if missing:
        raise ValueError(f"slot {doc['id']}: items not in media: {', '.join(missing)}")
    start = parse_local_time(doc["start"])
    end = parse_local_time(doc["end"]) if "end" in doc else None
    if end is not None and end == start:
        raise ValueError(f"slot {doc['id']}: end equals start")
    days = frozenset(WEEKDAYS.index(d) for d in doc["days"]) if "days" in doc else None
    dates = tuple(date.fromisoformat(d) for d in doc["dates"]) if "dates" in doc else None
    return Slot(
        id=doc["id"],
        start=start,
        end=end,
        days=days,
        dates=dates,
        items=tuple(doc["items"]),
        priority=doc.get("priority", 50),
        zones=tuple(doc.get("zones", ("all",))),
        volume=doc.get("volume"),
        gap_s=float(doc.get("gap_s", 0)),
    )


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    issuer: str
    target: str
    issued_at: datetime
    expires: datetime
    action: str
    doc: Mapping[str, Any]  # the verified body, for the fields each action reads

    @classmethod
    def from_body(cls, doc: Mapping[str, Any]) -> Command:
        issued_at = parse_rfc3339(doc["issued_at"])
        expires = parse_rfc3339(doc["expires"])
        if expires <= issued_at:
            raise ValueError("expires is not after issued_at")
        return cls(doc["id"], doc["issuer"], doc["target"], issued_at, expires, doc["action"], doc)


@dataclass(frozen=True, slots=True)
class TimeBeacon:
    province: str
    ts: datetime

    @classmethod
    def from_body(cls, doc: Mapping[str, Any]) -> TimeBeacon:
        return cls(doc["province"], parse_rfc3339(doc["ts"]))
