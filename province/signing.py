"""Province-side signing: check a body the way a station will, then wrap it in DSSE.

The province tool refuses what stations would refuse for the body's own sake (strict JSON, the
schema, the semantic checks of ``agent.core.models``), so a typo is caught at the desk, not on a
thousand hills. It signs the exact bytes it checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core import dsse, strict
from agent.core.models import Command, Keyring, Playlist, TimeBeacon
from agent.core.schema import SchemaError
from agent.core.verify import PAYLOAD_TYPES
from agent.schemas import load_schema_set

_MODELS: dict[str, Any] = {
    "playlist": Playlist.from_body,
    "command": Command.from_body,
    "keyring": Keyring.from_body,
    "time": TimeBeacon.from_body,
}


class BodyError(ValueError):
    """The body would be rejected by every station; the message says why."""


def check_body(body: bytes) -> str:
    """Validate a body; return its kind (playlist, command, keyring, time)."""
    try:
        doc = strict.loads(body)
    except strict.StrictDecodeError as exc:
        raise BodyError(f"not strict JSON: {exc}") from exc
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind not in _MODELS:
        raise BodyError(f"kind must be one of {', '.join(_MODELS)}, got {kind!r}")
    try:
        load_schema_set().validate(kind, doc)
        _MODELS[kind](doc)
    except (SchemaError, ValueError, KeyError) as exc:
        raise BodyError(f"{kind} body fails the schema: {exc}") from exc
    return str(kind)


def sign_body(body: bytes, keys: Sequence[Ed25519PrivateKey]) -> bytes:
    """Check ``body`` and return the DSSE envelope (JSON bytes) signed by ``keys``."""
    kind = check_body(body)
    if not keys:
        raise BodyError("at least one signing key is needed")
    return dsse.sign(PAYLOAD_TYPES[kind], body, keys)


def canonical_json(document: Any) -> bytes:
    """Compact UTF-8 JSON with sorted keys: how the tools write the bodies they build."""
    import json

    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()
