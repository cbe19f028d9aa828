"""X.509 material for the broker's mutual TLS: the province CA, station and operator client
certificates, and the broker's server certificate.

This module owns key and certificate generation and CSR signing, with `cryptography` only (no
openssl subprocess), all as PEM bytes. It leaves storage, file permissions and the station
registry to its callers, and the Ed25519 keys that sign envelopes to the trust modules: TLS
identities only decide who may talk to the broker, never what a station accepts.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate signing request: {exc}") from exc
    # The CSR signature proves the requester holds the private key of the public key we certify.
    if not csr.is_signature_valid:
        raise PkiError("CSR signature does not verify: the request was altered or is forged")
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
