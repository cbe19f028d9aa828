"""The protocol's JSON Schemas, shipped with the agent (byte-identical copies of
``shared/schemas``; a test keeps them in step), compiled once per process."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from agent.core.schema import SchemaSet

KINDS = ("playlist", "command", "keyring", "time", "asrun", "heartbeat", "envelope")


def schema_text(kind: str) -> str:
    return resources.files(__name__).joinpath(f"{kind}.schema.json").read_text("utf-8")


@cache
def load_schema_set() -> SchemaSet:
    return SchemaSet({kind: json.loads(schema_text(kind)) for kind in KINDS})
