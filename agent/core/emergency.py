"""An emergency command as the station plays it (PROTOCOL.md sections 6 and 9), pure.

An emergency becomes an ``Occurrence`` outside the schedule, so the programme's rules apply to
it unchanged: it cuts in above every slot (priority 90-100), the slot it interrupts resumes
after it while that slot is open, and it is reported with an as-run record like any
occurrence, under the slot name ``emergency:<command id>``. Its clip is repeated ``repeat``
times with ``gap_s`` between, at the command's volume (else the station's emergency volume),
and it ends at its expiry whatever is left.

Under an untrusted clock (section 9) the wall clock cannot say when ``expires`` is: the
emergency then lasts at most ``expires - issued_at`` from its receipt, counted by the caller on
the monotonic clock (the programme turns ``end`` into a monotonic deadline at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agent.core.models import Command, MediaRef
from agent.core.planner import Occurrence

SLOT_PREFIX = "emergency:"
DEFAULT_PRIORITY = 100


@dataclass(frozen=True, slots=True)
class EmergencyDefaults:
    volume: int
    repeat: int
    gap_s: float


def slot_id(command_id: str) -> str:
    return f"{SLOT_PREFIX}{command_id}"


def is_emergency(slot: str) -> bool:
    return slot.startswith(SLOT_PREFIX)


def command_id(slot: str) -> str:
    return slot[len(SLOT_PREFIX) :]


def clip(command: Command) -> MediaRef:
    """The command's media as a cache entry of category ``emergency`` (whatever the command
    says: the category decides the chime and that the cache keeps it)."""
    media = MediaRef.from_body(f"emergency-{command.id}", command.doc["media"])
    return MediaRef(
        media.name, media.url, media.sha256, media.bytes, media.duration_s, media.title,
        "emergency",
    )  # fmt: skip


def ends_at(command: Command, expires: datetime, now: datetime, clock_trusted: bool) -> datetime:
    """When it must be over, on the station's wall clock as it reads now."""
    if clock_trusted:
        return expires
    return now + (expires - command.issued_at)


def occurrence(
    command: Command,
    media: MediaRef,
    end: datetime,
    now: datetime,
    defaults: EmergencyDefaults,
) -> Occurrence:
    doc = command.doc
    repeat = int(doc.get("repeat", defaults.repeat))
    zones = tuple(doc.get("zones", ("all",)))
    return Occurrence(
        stream=(command.issuer, command.target),
        playlist_version=0,
        slot_id=slot_id(command.id),
        start=now,
        end=end,
        items=(media,) * repeat,
        priority=int(doc.get("priority", DEFAULT_PRIORITY)),
        zones=zones,
        volume=int(doc.get("volume", defaults.volume)),
        gap_s=float(doc.get("gap_s", defaults.gap_s)),
    )
