"""Names and targets (PROTOCOL.md section 1): who a message is for, and who may sign as whom."""

from __future__ import annotations

import re
from dataclasses import dataclass

TOPIC_WORDS = frozenset({"playlist", "keyring", "cmd", "state", "telemetry", "ack", "time"})
_PROVINCE = re.compile(r"\A[0-9]{2}\Z", re.ASCII)
_COMMUNE = re.compile(r"\A[0-9]{5}\Z", re.ASCII)
_STATION = re.compile(r"\A[a-z0-9-]{1,32}\Z", re.ASCII)


@dataclass(frozen=True, slots=True)
class StationId:
    """One station: ``25/08230/08230-01``."""

    province: str
    commune: str
    name: str

    def __post_init__(self) -> None:
        if not _PROVINCE.match(self.province):
            raise ValueError(f"province must be 2 digits: {self.province!r}")
        if not _COMMUNE.match(self.commune):
            raise ValueError(f"commune must be 5 digits: {self.commune!r}")
        if not _STATION.match(self.name) or self.name in TOPIC_WORDS:
            raise ValueError(
                f"station must match [a-z0-9-]{{1,32}}, not a topic word: {self.name!r}"
            )

    @classmethod
    def parse(cls, path: str) -> StationId:
        parts = path.split("/")
        if len(parts) != 3:
            raise ValueError(f"a station id is PROVINCE/COMMUNE/STATION: {path!r}")
        return cls(*parts)

    @property
    def path(self) -> str:
        return f"{self.province}/{self.commune}/{self.name}"

    @property
    def audience(self) -> tuple[str, str, str]:
        """The targets this station obeys: its province, its commune, itself."""
        return (self.province, f"{self.province}/{self.commune}", self.path)

    @property
    def prefix(self) -> str:
        return f"loa/v1/{self.path}"


def is_within(target: str, scope: str) -> bool:
    """True when ``target`` is ``scope`` itself or lies inside it."""
    return target == scope or target.startswith(scope + "/")


def may_sign(scope: tuple[str, ...], issuer: str, target: str) -> bool:
    """Section 4: a key scoped ``25`` signs as ``25`` for anything in 25; a key scoped
    ``25/08230`` signs only as ``08230`` and only for targets inside ``25/08230``."""
    for entry in scope:
        parts = entry.split("/")
        if len(parts) <= 2 and parts[-1] == issuer and is_within(target, entry):
            return True
    return False


def province_of(target: str) -> str:
    return target.split("/", 1)[0]
