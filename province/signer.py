"""Where a province signing key lives, behind one interface: ``Signer``.

Every province tool that signs (``loa-province sign``, ``loa-province keyring --sign``) opens its
keys with ``open_signer(spec)`` and then only asks a signer for its key id, its raw public key,
a signature over a message, and one line describing it for the signing log. Where the private
half is kept is the signer's business alone.

Today the one implementation is ``FileSigner``: a PKCS#8 PEM file (``agent.keyfiles``), read
into memory for the length of one command. A hardware token — a PKCS#11 device such as a
YubiHSM 2, a Nitrokey HSM or a smart card — would be another class beside it plus a URI scheme
in ``open_signer``; no caller changes. Such a class would need to:

- parse an RFC 7512 URI (``pkcs11:token=loa-root1;object=root1;type=private``) and know the
  vendor's PKCS#11 module (``module-path=`` in the URI, or the province's configuration);
- open a session and log in with the user PIN asked at the terminal (or a PIN pad), never taken
  from the command line or the environment, where it would end up in shell history or ``/proc``;
- find the private key object and require the ``CKM_EDDSA`` mechanism (Ed25519, PKCS#11 3.0): a
  token that only does ECDSA P-256 cannot sign for Loa stations;
- answer ``public_raw`` from the public key object's ``CKA_EC_POINT`` (a DER OCTET STRING around
  the 32 raw bytes) and compute ``keyid`` from those bytes, never from the token's labels;
- ``sign`` with ``C_SignInit(CKM_EDDSA)`` and ``C_Sign`` over the whole message: pure Ed25519, no
  pre-hash (DSSE signs the PAE of the body, up to the 2 MiB playlist cap plus a header);
- ``describe`` itself as the URI with the token's serial number and the key's fingerprint, so the
  signing log names the device that signed;
- log out when the command ends (each ``loa-province`` run is one short process).

Whatever the implementation, ``province.signing`` checks each signature against ``public_raw``
before anything is written, so a token that signs with another key than it claims is caught at
the desk rather than by a thousand stations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from agent import keyfiles
from agent.core.dsse import SigningKey, keyid_of, public_raw
from province.errors import ProvinceError

PKCS11_SCHEME = "pkcs11:"
FILE_SCHEME = "file:"


class SignerError(ProvinceError):
    """A key spec names a key this build cannot open."""


class Signer(SigningKey, Protocol):
    """A province signing key: Ed25519, identified by its keyid, private half wherever."""

    @property
    def keyid(self) -> str:
        """Lowercase hex SHA-256 of the raw 32-byte public key (PROTOCOL.md section 3)."""
        ...

    def public_raw(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        ...

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        ...

    def describe(self) -> str:
        """Where the key is and which it is, for people and the signing log."""
        ...


class FileSigner:
    """A private key in a PKCS#8 PEM file (``loa-province keygen`` writes them)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._key = keyfiles.load_private(path)
        self._public = public_raw(self._key)
        self._keyid = keyid_of(self._public)

    @property
    def keyid(self) -> str:
        return self._keyid

    def public_raw(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def describe(self) -> str:
        # Absolute: the log is read later, from another directory, maybe on another machine.
        return f"file:{self._path.absolute()} ({keyfiles.fingerprint(self._keyid)})"


def open_signer(spec: str) -> Signer:
    """Open the key a spec names: a file path (or ``file:PATH``); ``pkcs11:`` URIs are refused."""
    text = spec.strip()
    if not text:
        raise SignerError("an empty key spec names no key")
    if text[: len(PKCS11_SCHEME)].lower() == PKCS11_SCHEME:
        raise SignerError(
            f"{text}: hardware tokens (pkcs11: URIs) are not available in this build; "
            "give the path of a key file"
        )
    if text.startswith(FILE_SCHEME):
        text = text[len(FILE_SCHEME) :]
    return FileSigner(Path(text))
