"""Ed25519 key files shared by the station (its report-signing key) and the province tools.

Private keys are PKCS#8 PEM, mode 0600, written atomically and never overwritten by accident;
public keys travel as 64 lowercase hex characters (what the keyring stores), and a person reads
a key by its fingerprint: the first 16 hex digits of its keyid, in groups of four.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from agent.core.dsse import keyid_of, public_raw
from hal.files import atomic_write


class KeyFileError(ValueError):
    """A key file is missing, unreadable, the wrong kind, or would be overwritten."""


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_private(path: Path, key: Ed25519PrivateKey, *, overwrite: bool = False) -> None:
    if path.exists() and not overwrite:
        raise KeyFileError(f"{path} exists: refusing to overwrite a private key")
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    atomic_write(path, pem, mode=0o600)


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key {path}: {exc.strerror}") from exc
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from exc
    except UnsupportedAlgorithm as exc:  # e.g. an EC key on a curve OpenSSL does not build
        raise KeyFileError(f"{path} is not an Ed25519 key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return key


def public_hex(key: Ed25519PrivateKey) -> str:
    return public_raw(key).hex()


def keyid(key: Ed25519PrivateKey) -> str:
    return keyid_of(public_raw(key))


def fingerprint(keyid_hex: str) -> str:
    """``34750f98bd59fcfc…`` -> ``3475 0f98 bd59 fcfc``: short enough to read over a phone."""
    head = keyid_hex[:16]
    return " ".join(head[i : i + 4] for i in range(0, 16, 4))


def load_public_hex(path: Path) -> str:
    """A ``.pub`` file (64 hex characters) or a private key file (its public half)."""
    try:
        text = path.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read public key {path}") from exc
    if text.startswith("-----BEGIN"):
        return public_hex(load_private(path))
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise KeyFileError(f"{path} is not 64 lowercase hex characters of an Ed25519 key")
    return text
