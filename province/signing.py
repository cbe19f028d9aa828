"""Province-side signing: check a body the way a station will, then wrap it in DSSE.

The province tool refuses what stations would refuse for the body's own sake (strict JSON, the
schema, the semantic checks of ``agent.core.models``), so a typo is caught at the desk, not on a
thousand hills. It signs the exact bytes it checked, through ``Signer``s (``province.signer``),
checks every signature against the signer's public key, and says what the signing log records
about it (``signed_record``).

Release bodies (docs/releases.md) are checked here too, by the station's rules for them: the
version pair (``MAJOR.MINOR.PATCH``, compared as integer triples), the target inside the issuing
province, a window that ends after it starts, an artifact named by URL, SHA-256 and length. The
release schema is the agent's once it ships one (``agent/schemas/release.schema.json``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from agent import schemas
from agent.core import dsse, strict
from agent.core.codes import Rejected
from agent.core.models import Command, Keyring, Playlist, TimeBeacon
from agent.core.schema import SchemaError
from agent.core.targets import TOPIC_WORDS, is_within
from agent.core.timefmt import parse_rfc3339
from agent.core.verify import PAYLOAD_TYPES as STATION_PAYLOAD_TYPES
from agent.schemas import load_schema_set
from province.signer import Signer, SignerError
from province.signing_log import Signed

RELEASE_PAYLOAD_TYPE = "application/vnd.loa.release+json"
# The station's table, with the release kind whether or not the agent knows it yet.
PAYLOAD_TYPES: Mapping[str, str] = {**STATION_PAYLOAD_TYPES, "release": RELEASE_PAYLOAD_TYPE}
PAYLOAD_KINDS: Mapping[str, str] = {ptype: kind for kind, ptype in PAYLOAD_TYPES.items()}

# Digits only and no leading zeros: pip normalises 01.2.3 to 1.2.3, so a wheel and a staging
# directory named by the body's spelling would not be found.
_VERSION = re.compile(r"\A(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\Z")
_TARGET = re.compile(r"\A[0-9]{2}(/[0-9]{5}(/[a-z0-9-]{1,32})?)?\Z")
_PROVINCE = re.compile(r"\A[0-9]{2}\Z")
_SHA256 = re.compile(r"\A[0-9a-f]{64}\Z")
_URL = re.compile(r"\Ahttps?://[\x21-\x7e]{1,2040}\Z")
MAX_ARTIFACT_BYTES = 1024 * 1024 * 1024  # the release schema's cap
# Topic words no station may be named, "release" among them since issue 11.
_RESERVED_NAMES = TOPIC_WORDS | {"release"}
_RELEASE_FIELDS = frozenset(
    {"kind", "schema", "issuer", "target", "version", "min_version", "issued_at", "expires",
     "artifact"}
)  # fmt: skip
_ARTIFACT_FIELDS = frozenset({"url", "sha256", "bytes"})


def parse_version(text: object) -> tuple[int, int, int]:
    """``MAJOR.MINOR.PATCH`` as the integer triple releases are compared by; ValueError else."""
    match = _VERSION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"a version is MAJOR.MINOR.PATCH, digits only, got {text!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def check_release(doc: Mapping[str, Any]) -> None:
    """The station's checks of a release body beyond JSON (docs/releases.md); ValueError."""
    if set(doc) != _RELEASE_FIELDS:
        raise ValueError(f"release fields are {', '.join(sorted(_RELEASE_FIELDS))}")
    if doc["kind"] != "release" or type(doc["schema"]) is not int or doc["schema"] != 1:
        raise ValueError("kind must be 'release' and schema 1")
    issuer, target = doc["issuer"], doc["target"]
    if not isinstance(issuer, str) or not _PROVINCE.match(issuer):
        raise ValueError(f"issuer must be a province (2 digits), got {issuer!r}")
    if (
        not isinstance(target, str)
        or not _TARGET.match(target)
        or not is_within(target, issuer)
        or target.split("/")[-1] in _RESERVED_NAMES
    ):
        raise ValueError(f"target must be PP, PP/CCCCC or PP/CCCCC/NAME in {issuer}: {target!r}")
    if parse_version(doc["min_version"]) > parse_version(doc["version"]):
        raise ValueError(f"min_version {doc['min_version']} is above version {doc['version']}")
    for name in ("issued_at", "expires"):
        if not isinstance(doc[name], str):
            raise ValueError(f"{name} must be an RFC 3339 time")
    if parse_rfc3339(doc["expires"]) <= parse_rfc3339(doc["issued_at"]):
        raise ValueError("expires must be after issued_at")
    artifact = doc["artifact"]
    if not isinstance(artifact, dict) or set(artifact) != _ARTIFACT_FIELDS:
        raise ValueError(f"artifact fields are {', '.join(sorted(_ARTIFACT_FIELDS))}")
    if not isinstance(artifact["url"], str) or not _URL.match(artifact["url"]):
        raise ValueError(f"artifact url must be http(s), printable ASCII: {artifact['url']!r}")
    if not isinstance(artifact["sha256"], str) or not _SHA256.match(artifact["sha256"]):
        raise ValueError("artifact sha256 must be 64 lowercase hex digits")
    size = artifact["bytes"]
    if type(size) is not int or not 1 <= size <= MAX_ARTIFACT_BYTES:
        raise ValueError(f"artifact bytes must be 1..{MAX_ARTIFACT_BYTES}, got {size!r}")


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
        if kind in schemas.KINDS:  # the release schema comes with the station side of issue 11
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
