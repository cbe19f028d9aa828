"""Signed releases for tests (docs/releases.md): a test ``release`` key, a keyring that gives it
the release role, release bodies and envelopes, and a wheelhouse-like artifact.

The release key comes from a fixed seed like the golden vectors' keys (tests/harness/trust.py),
outside their numbering so that the vectors stay as they are.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core import dsse
from tests.harness.trust import body_bytes, envelope, keyring_body, test_key

RELEASE_TYPE = "application/vnd.loa.release+json"
RELEASE_KEYS = ("release", "release2", "commune-release")
_SEEDS = {"release": 0x52, "release2": 0x53, "commune-release": 0x54}


def release_key(name: str = "release") -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([_SEEDS[name]]) * 32)


def release_keyid(name: str = "release") -> str:
    return dsse.keyid_of(dsse.public_raw(release_key(name)))


def keyring_with_release(threshold: int = 1, version: int = 1) -> dict[str, Any]:
    """The test keyring plus release keys: ``release`` and ``release2`` scoped to the province
    and holding the role, ``commune-release`` scoped to commune 08230 (also in the role, so that
    scope, not the role, is what refuses it)."""
    doc = keyring_body(version=version)
    scopes = {"release": ["25"], "release2": ["25"], "commune-release": ["25/08230"]}
    for name, scope in scopes.items():
        public = dsse.public_raw(release_key(name)).hex()
        doc["keys"][release_keyid(name)] = {"scheme": "ed25519", "public": public, "scope": scope}
    doc["roles"]["release"] = {
        "keyids": [release_keyid(n) for n in RELEASE_KEYS],
        "threshold": threshold,
    }
    return doc


def keyring_envelope(threshold: int = 1) -> bytes:
    return envelope("keyring", keyring_with_release(threshold), "root1", "root2")


def release_body(artifact: bytes = b"wheels", **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "release",
        "schema": 1,
        "issuer": "25",
        "target": "25/08230",
        "version": "0.2.0",
        "min_version": "0.1.0",
        "issued_at": "2026-11-22T08:00:00+07:00",
        "expires": "2026-12-22T08:00:00+07:00",
        "artifact": {
            "url": "https://media.example.vn/25/loa-0.2.0.tar.gz",
            "sha256": hashlib.sha256(artifact).hexdigest(),
            "bytes": len(artifact),
        },
    }
    doc.update(changes)
    return doc


def release_envelope(doc: Mapping[str, Any] | bytes, *signers: str) -> bytes:
    """Signed by the named release keys, or by the vectors' keys (``playlist``...) if named."""
    body = doc if isinstance(doc, bytes) else body_bytes(doc)
    keys = [release_key(s) if s in _SEEDS else test_key(s) for s in signers]
    return dsse.sign(RELEASE_TYPE, body, keys)


def wheelhouse(version: str = "0.2.0") -> bytes:
    """A gzip tarball holding a (fake) wheel of ``version``: the artifact's shape."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = f"fake wheel of loa {version}\n".encode() * 64
        info = tarfile.TarInfo(f"loa-{version}-py3-none-any.whl")
        info.size = len(data)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
