"""X.509 material for the broker's mutual TLS: the province CA, station and operator client
certificates, and the broker's server certificate.

This module owns key and certificate generation and CSR signing, with `cryptography` only (no
openssl subprocess), all as PEM bytes. It leaves storage, file permissions and the station
registry to its callers, and the Ed25519 keys that sign envelopes to the trust modules: TLS
identities only decide who may talk to the broker, never what a station accepts. It also signs
the CA's certificate revocation list (``make_crl``); which certificates are on it is the
registry's, writing it out is ``province.revoke``'s.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# RFC 5280 reason codes by the names the CLI takes.
CRL_REASONS = {
    "key-compromise": x509.ReasonFlags.key_compromise,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "superseded": x509.ReasonFlags.superseded,
    "unspecified": x509.ReasonFlags.unspecified,
}

# A little backdating tolerates a verifier whose clock runs slightly behind the issuer's.
_BACKDATE = datetime.timedelta(minutes=5)


class PkiError(Exception):
    """Certificate material is malformed, inconsistent or not trustworthy."""


def make_key() -> bytes:
    """A fresh ECDSA P-256 private key, as unencrypted PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return _key_pem(key)


def make_csr(key_pem: bytes, common_name: str) -> bytes:
    """A certificate signing request for `common_name`, signed by the key in `key_pem`."""
    key = _load_ec_key(key_pem)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(common_name))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def create_ca(common_name: str, days: int = 3650) -> tuple[bytes, bytes]:
    """A self-signed CA that may issue leaf certificates only: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        # path_length=0: a stolen leaf key can never be turned into a sub-CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    """A certificate request whose signature verifies, or PkiError: whatever a requester sends
    (cryptography raises InvalidVersion, UnsupportedAlgorithm or ValueError from deep inside for
    a version-1 request, a curve OpenSSL lacks, a point off its curve)."""
    try:
        csr = x509.load_pem_x509_csr(pem)
        # The signature proves the requester holds the private key of the key we certify; a
        # request edited on the way (another CN, another key) fails here.
        valid = csr.is_signature_valid
    except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm) as exc:
        raise PkiError(f"not a PEM certificate signing request: {exc}") from exc
    if not valid:
        raise PkiError("CSR signature does not verify: the request was altered or is forged")
    return csr


def sign_csr(
    csr_pem: bytes,
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    *,
    days: int,
    client: bool = True,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> bytes:
    """Issue a leaf certificate for a CSR whose own signature verifies.

    `client=True` gives a TLS client certificate (clientAuth), `client=False` a server one
    (serverAuth); `dns_names` and `ip_addresses` become subjectAltNames, which a server
    certificate needs because TLS clients match the host against SANs, not the CN.
    """
    csr = load_csr(csr_pem)
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise PkiError("CSR key is not an ECDSA key")
    ca_cert = _load_cert(ca_cert_pem)
    ca_key = _load_ec_key(ca_key_pem)
    if ca_key.public_key() != ca_cert.public_key():
        raise PkiError("CA private key does not belong to the CA certificate")
    _single_cn(csr.subject)  # a leaf without exactly one CN would have no broker identity
    now = _now()
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    sans = _sans(dns_names, ip_addresses)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def issue_server_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    hosts: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1",),
    *,
    days: int = 825,
) -> tuple[bytes, bytes]:
    """A broker certificate for `hosts` and `ips`: (cert PEM, key PEM)."""
    key_pem = make_key()
    cn = hosts[0] if hosts else ips[0] if ips else "mqtt-broker"
    csr_pem = make_csr(key_pem, cn)
    cert_pem = sign_csr(
        csr_pem,
        ca_cert_pem,
        ca_key_pem,
        days=days,
        client=False,
        dns_names=hosts,
        ip_addresses=ips,
    )
    return cert_pem, key_pem


@dataclass(frozen=True, slots=True)
class RevokedCert:
    """One entry of a CRL: which certificate, since when, and why (a ``CRL_REASONS`` key)."""

    serial: int
    revoked_at: datetime.datetime
    reason: str
    # When the key is known or suspected to have been compromised, if earlier than revoked_at
    # (a station lost on Monday and revoked on Wednesday): the CRL's invalidityDate.
    invalid_since: datetime.datetime | None = None


def make_crl(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    revoked: Sequence[RevokedCert],
    number: int,
    *,
    next_update: datetime.datetime,
    now: datetime.datetime | None = None,
) -> bytes:
    """A CRL v2 signed by the CA, as PEM: each revoked serial with its revocation date, reason
    code (and invalidity date when given), the CRL number ``number`` and the CA's authority key
    identifier. An empty ``revoked`` gives the empty CRL a broker needs before anything is
    revoked: with CRL checking on, a CA without a CRL fails every client."""
    ca_cert = _load_cert(ca_cert_pem)
    ca_key = _load_ec_key(ca_key_pem)
    if ca_key.public_key() != ca_cert.public_key():
        raise PkiError("CA private key does not belong to the CA certificate")
    if number < 0:
        raise PkiError(f"a CRL number is not negative, got {number}")
    issued = now if now is not None else _now()
    if next_update <= issued:
        raise PkiError(f"the CRL's next update {next_update} is not after {issued}")
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(issued - _BACKDATE)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    for entry in sorted(revoked, key=lambda e: e.serial):
        if entry.reason not in CRL_REASONS:
            raise PkiError(f"not a CRL reason: {entry.reason!r} (one of {', '.join(CRL_REASONS)})")
        revoked_builder = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
        )
        # RFC 5280 5.3.1: the reasonCode extension is absent rather than "unspecified".
        if entry.reason != "unspecified":
            revoked_builder = revoked_builder.add_extension(
                x509.CRLReason(CRL_REASONS[entry.reason]), critical=False
            )
        if entry.invalid_since is not None:
            revoked_builder = revoked_builder.add_extension(
                x509.InvalidityDate(
                    entry.invalid_since.astimezone(datetime.UTC).replace(tzinfo=None)
                ),
                critical=False,
            )
        builder = builder.add_revoked_certificate(revoked_builder.build())
    crl = builder.sign(ca_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def load_crl(crl_pem: bytes, ca_cert_pem: bytes) -> x509.CertificateRevocationList:
    """A PEM CRL whose signature verifies with the CA's key."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate revocation list: {exc}") from exc
    ca_key = _load_cert(ca_cert_pem).public_key()
    if not isinstance(ca_key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(ca_key):
        raise PkiError("the CRL is not signed by this CA")
    return crl


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def serial_number(cert_pem: bytes) -> int:
    return _load_cert(cert_pem).serial_number


def common_name(cert_pem: bytes) -> str:
    """The subject CN of a PEM certificate: the identity mosquitto uses as username."""
    return _single_cn(_load_cert(cert_pem).subject)


def _single_cn(subject: x509.Name) -> str:
    attrs = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        raise PkiError(f"expected exactly one subject CN, found {len(attrs)}")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8")


def _sans(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    for text in ip_addresses:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError as exc:
            raise PkiError(f"not an IP address: {text!r}") from exc
    return sans


def _name(common_name: str) -> x509.Name:
    if not common_name:
        raise PkiError("a certificate needs a non-empty common name")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ec_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("private key is not an ECDSA key")
    return key


def _load_cert(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate: {exc}") from exc
