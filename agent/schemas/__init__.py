"""The protocol's JSON Schemas, shipped with the agent, compiled once per process.

They are byte-identical copies of ``shared/schemas`` (a test keeps them in step), except for the
additions of ``docs/releases.md``: ``release.schema.json``, which the shared set does not have
yet (the protocol leaves the release body to the project), and the optional ``release`` role of
the keyring (already in the shared keyring schema)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from agent.core.schema import SchemaSet

KINDS = (
    "playlist", "command", "keyring", "time", "release", "asrun", "heartbeat", "envelope",
)  # fmt: skip


def schema_text(kind: str) -> str:
    return resources.files(__name__).joinpath(f"{kind}.schema.json").read_text("utf-8")


@cache
def load_schema_set() -> SchemaSet:
    return SchemaSet({kind: json.loads(schema_text(kind)) for kind in KINDS})
