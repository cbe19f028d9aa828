"""Schema validation of message bodies: compiled validators, one error type, one message.

The schemas themselves are data shipped beside the agent (``agent/schemas``); this module only
turns them into checks, so the core never reads a file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import fastjsonschema


class SchemaError(ValueError):
    """A body does not match its schema; the message names the offending path."""


class SchemaSet:
    """Validators for the body kinds, compiled once (compilation costs milliseconds)."""

    def __init__(self, schemas: Mapping[str, Mapping[str, Any]]) -> None:
        self._validators: dict[str, Callable[[Any], Any]] = {
            kind: fastjsonschema.compile(dict(schema)) for kind, schema in schemas.items()
        }

    def validate(self, kind: str, document: Any) -> None:
        """Raise SchemaError unless ``document`` is a valid ``kind`` body."""
        validator = self._validators.get(kind)
        if validator is None:
            raise SchemaError(f"no schema for kind {kind!r}")
        try:
            validator(document)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise SchemaError(exc.message) from exc
