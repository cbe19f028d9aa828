"""Province-side signing: check a body the way a station will, then wrap it in DSSE.

The province tool refuses what stations would refuse for the body's own sake (strict JSON, the
schema, the semantic checks of ``agent.core.models``), so a typo is caught at the desk, not on a
thousand hills. It signs the exact bytes it checked, through ``Signer``s (``province.signer``),
checks every signature against the signer's public key, and says what the signing log records
about it (``signed_record``).

Release bodies (docs/releases.md) are checked the same way (``agent.core.release``), and their
target must lie in the issuing province (release keys are province keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent.core import dsse, strict
from agent.core.codes import Rejected
from agent.core.models import Command, Keyring, Playlist, TimeBeacon
from agent.core.release import Release
from agent.core.schema import SchemaError
from agent.core.targets import is_within
from agent.core.verify import PAYLOAD_TYPES
from agent.schemas import load_schema_set
from province.signer import Signer, SignerError
from province.signing_log import Signed


def check_release(doc: Mapping[str, Any]) -> Release:
    """The station's model of a release body, and what its scope check would refuse later
    with keys the desk may not know yet: a target outside the issuing province."""
    release = Release.from_body(doc)
    if not is_within(release.target, release.issuer):
        raise ValueError(
            f"target {release.target} is not in the issuer's province {release.issuer}"
        )
    return release


_MODELS: dict[str, Any] = {
    "playlist": Playlist.from_body,
    "command": Command.from_body,
    "keyring": Keyring.from_body,
    "time": TimeBeacon.from_body,
    "release": check_release,
}


class BodyError(ValueError):
    """The body would be rejected by every station; the message says why."""


def check_body(body: bytes) -> str:
    """Validate a body; return its kind (playlist, command, keyring, time, release)."""
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


def sign_body(body: bytes, signers: Sequence[Signer]) -> bytes:
    """Check ``body`` and return the DSSE envelope (JSON bytes) signed by ``signers``."""
    kind = check_body(body)
    if not signers:
        raise BodyError("at least one signing key is needed")
    envelope = dsse.sign(PAYLOAD_TYPES[kind], body, signers)
    # A signer is trusted for its signature, not believed: a token holding another key than it
    # claims, or a faulty one, is caught here instead of by every station.
    try:
        parsed = dsse.parse_envelope(envelope, len(envelope))
    except Rejected as exc:  # e.g. more signatures than a station reads
        raise BodyError(f"stations would reject this envelope: {exc}") from exc
    for signer, signature in zip(signers, parsed.signatures, strict=True):
        public = signer.public_raw()
        if signature.keyid != dsse.keyid_of(public) or not parsed.verifies_with(public, signature):
            raise SignerError(
                f"{signer.describe()} made a signature its public key does not verify"
            )
    return envelope


def subject(body: bytes) -> tuple[str, str, str, str]:
    """``(kind, issuer, target, label)`` of a checked body, named as publish and stations do."""
    doc: dict[str, Any] = strict.loads(body)
    kind = str(doc["kind"])
    if kind in ("playlist", "release"):
        return kind, doc["issuer"], doc["target"], f"v{doc['version']}"
    if kind == "keyring":
        return kind, doc["province"], doc["province"], f"v{doc['version']}"
    if kind == "time":
        return kind, doc["province"], doc["province"], doc["ts"]
    return kind, doc["issuer"], doc["target"], doc["id"]


def signed_record(body: bytes, envelope: bytes, signers: Sequence[Signer]) -> Signed:
    """What the signing log keeps about ``envelope``, the signature of ``body`` by ``signers``."""
    kind, issuer, target, label = subject(body)
    return Signed(
        kind=kind,
        payload_type=PAYLOAD_TYPES[kind],
        issuer=issuer,
        target=target,
        label=label,
        body=body,
        envelope=envelope,
        keyids=tuple(s.keyid for s in signers),
        signers=tuple(s.describe() for s in signers),
    )


def canonical_json(document: Any) -> bytes:
    """Compact UTF-8 JSON with sorted keys: how the tools write the bodies they build."""
    import json

    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()
