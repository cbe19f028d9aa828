"""DSSE v1 envelopes (PROTOCOL.md section 3): pre-authentication encoding, parsing, signing.

This module knows the envelope's shape and the Ed25519 arithmetic; which keys count for what is
the keyring's business (``keyring.py``) and the order of checks is ``verify.py``'s. Signing takes
any ``SigningKey`` (a key id and a sign operation), so a private key need not live in this
process: the province signs through files today and could through a hardware token.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.core import strict
from agent.core.codes import Code, Rejected

MAX_SIGNATURES = 16
ED25519_SIG_BYTES = 64


def pae(payload_type: str, body: bytes) -> bytes:
    """``DSSEv1 SP LEN(type) SP type SP LEN(body) SP body``, lengths in ASCII decimal bytes."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(body), body)


def keyid_of(public_raw: bytes) -> str:
    """A key's id: lowercase hex SHA-256 of its raw 32-byte public key."""
    return hashlib.sha256(public_raw).hexdigest()


def public_raw(private: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class Signature:
    keyid: str | None
    sig: bytes  # raw bytes; a wrong length simply never verifies


@dataclass(frozen=True, slots=True)
class Envelope:
    payload_type: str
    body: bytes
    signatures: tuple[Signature, ...]

    def verifies_with(self, public: bytes, signature: Signature) -> bool:
        """True when ``signature`` is a valid Ed25519 signature of this envelope by ``public``."""
        if len(signature.sig) != ED25519_SIG_BYTES:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(
                signature.sig, pae(self.payload_type, self.body)
            )
        except (InvalidSignature, ValueError):
            return False
        return True


def parse_envelope(data: bytes, max_bytes: int) -> Envelope:
    """Parse the envelope JSON strictly; raise Rejected(too-large | bad-envelope)."""
    if len(data) > max_bytes:
        raise Rejected(Code.TOO_LARGE, f"envelope is {len(data)} bytes, cap {max_bytes}")
    try:
        doc = strict.loads(data)
    except strict.StrictDecodeError as exc:
        raise Rejected(Code.BAD_ENVELOPE, str(exc)) from exc
    if not isinstance(doc, dict):
        raise Rejected(Code.BAD_ENVELOPE, "envelope is not a JSON object")
    payload_type = doc.get("payloadType")
    payload = doc.get("payload")
    sigs = doc.get("signatures")
    if not isinstance(payload_type, str) or not 0 < len(payload_type) <= 100:
        raise Rejected(Code.BAD_ENVELOPE, "payloadType missing or not a short string")
    if not isinstance(payload, str):
        raise Rejected(Code.BAD_ENVELOPE, "payload missing or not a string")
    if not isinstance(sigs, list) or not 0 < len(sigs) <= MAX_SIGNATURES:
        raise Rejected(Code.BAD_ENVELOPE, f"signatures must be a list of 1..{MAX_SIGNATURES}")
    try:
        body = strict.b64decode(payload)
    except strict.StrictDecodeError as exc:
        raise Rejected(Code.BAD_ENVELOPE, f"payload: {exc}") from exc
    return Envelope(payload_type, body, tuple(_parse_signature(s) for s in sigs))


def _parse_signature(entry: object) -> Signature:
    if not isinstance(entry, dict):
        raise Rejected(Code.BAD_ENVELOPE, "a signature is not an object")
    keyid = entry.get("keyid")
    sig = entry.get("sig")
    if keyid is not None and (not isinstance(keyid, str) or len(keyid) > 128):
        raise Rejected(Code.BAD_ENVELOPE, "keyid is not a short string")
    if not isinstance(sig, str) or len(sig) > 200:
        raise Rejected(Code.BAD_ENVELOPE, "sig missing or not a short string")
    try:
        raw = strict.b64decode(sig)
    except strict.StrictDecodeError as exc:
        raise Rejected(Code.BAD_ENVELOPE, f"sig: {exc}") from exc
    return Signature(keyid or None, raw)


class SigningKey(Protocol):
    """What ``sign`` needs of a key: its id and an Ed25519 signature over a message.

    The private half may live in a file, a smart card or an HSM; signing never needs more.
    """

    @property
    def keyid(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class _InMemoryKey:
    """An ``Ed25519PrivateKey`` seen as a ``SigningKey`` (the station's report key, tests)."""

    private: Ed25519PrivateKey

    @property
    def keyid(self) -> str:
        return keyid_of(public_raw(self.private))

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


def as_signing_key(key: SigningKey | Ed25519PrivateKey) -> SigningKey:
    return _InMemoryKey(key) if isinstance(key, Ed25519PrivateKey) else key


def sign(
    payload_type: str,
    body: bytes,
    keys: Iterable[SigningKey | Ed25519PrivateKey],
    *,
    compact: bool = False,
) -> bytes:
    """Build a DSSE envelope (JSON bytes) signed by every key given, standard base64.
    ``compact`` for the wire (a station's as-runs: no indentation bytes, and the C encoder);
    otherwise indented, for files a person opens."""
    message = pae(payload_type, body)
    signatures = [
        {"keyid": signer.keyid, "sig": base64.b64encode(signer.sign(message)).decode("ascii")}
        for signer in map(as_signing_key, keys)
    ]
    if not signatures:
        raise ValueError("at least one signing key is needed")
    envelope = {
        "payloadType": payload_type,
        "payload": base64.b64encode(body).decode("ascii"),
        "signatures": signatures,
    }
    if compact:
        return json.dumps(envelope, separators=(",", ":")).encode("utf-8")
    return json.dumps(envelope, indent=1).encode("utf-8") + b"\n"
