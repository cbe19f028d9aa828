"""Enrollment: the province's device CA, its own broker identity, and admitting stations.

This module owns the province home's certificate files (layout in ``province.registry``): it
creates the CA and the operator identity once, issues the broker's server certificate, checks a
station's certificate request and report-signing key and enrolls it in the registry, and renders
the broker ACL from the registry. Key and certificate mechanics are ``province.pki``'s, the ACL
text is ``province.acl``'s, and argument parsing and printing are ``province.cli_enroll``'s.
Every refusal is a ``ProvinceError`` naming what is wrong, raised before anything is written.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from agent import keyfiles
from agent.core.dsse import keyid_of
from agent.core.targets import StationId
from hal.files import atomic_write
from province import acl, operators, pki
from province.errors import ProvinceError
from province.home import HOME_ENV as HOME_ENV  # re-exported: cli_enroll reads them here
from province.home import default_home as default_home
from province.home import open_home_registry, registry_province
from province.registry import RegistryError, StationRecord

DEFAULT_STATION_DAYS = 825  # the longest leaf lifetime TLS stacks commonly still accept
DEFAULT_CA_DAYS = 3650
_PROVINCE = re.compile(r"[0-9]{2}")


@dataclass(frozen=True, slots=True)
class ProvinceHome:
    """Where the province's files live; nothing is created by naming them. The registry is
    opened through ``province.home`` (it may live in PostgreSQL instead)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def operator_cert(self) -> Path:
        return self.root / "operator" / "operator.crt"

    @property
    def operator_key(self) -> Path:
        return self.root / "operator" / "operator.key"

    def station_cert(self, station: StationId) -> Path:
        return self.root / "stations" / (station.path.replace("/", "_") + ".crt")


def operator_cn(province: str) -> str:
    return f"province-{province}"


def cert_fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER, read like a key fingerprint (16 hex in groups of 4)."""
    cert = _load_cert(cert_pem, "certificate")
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return keyfiles.fingerprint(digest)


def signing_fingerprint(public_hex: str) -> str:
    return keyfiles.fingerprint(keyid_of(bytes.fromhex(public_hex)))


def not_after(cert_pem: bytes) -> datetime:
    return _load_cert(cert_pem, "certificate").not_valid_after_utc


# -- the CA ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaResult:
    province: str
    ca_cert: Path
    ca_key: Path
    operator_cert: Path
    operator_key: Path
    fingerprint: str
    operator_cn: str


def init_ca(home: ProvinceHome, province: str, days: int = DEFAULT_CA_DAYS) -> CaResult:
    """Create the province CA and the operator identity; refuses if any of them exists."""
    if _PROVINCE.fullmatch(province) is None:
        raise ProvinceError(f"--province must be a 2-digit code, got {province!r}")
    if days < 1:
        raise ProvinceError(f"--days must be at least 1, got {days}")
    files = (home.ca_cert, home.ca_key, home.operator_cert, home.operator_key)
    existing = [path for path in files if path.exists()]
    if existing:
        # A second CA would orphan every station certificate already issued.
        raise ProvinceError(
            f"{existing[0]} exists: this province home already has its CA (refusing to replace it)"
        )
    with open_home_registry(home.root, must_exist=False) as registry:
        recorded = registry.meta("province")
        if recorded is not None and recorded != province:
            raise ProvinceError(f"{registry.path} belongs to province {recorded}, not {province}")
        for directory in (home.ca_key.parent, home.operator_key.parent):
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        ca_cert, ca_key = pki.create_ca(f"Loa province {province} device CA", days=days)
        # The key is written before the certificate: a crash in between leaves no usable CA
        # certificate pointing at a lost key, and the next `ca init` names the leftover file.
        atomic_write(home.ca_key, ca_key, mode=0o600)
        atomic_write(home.ca_cert, ca_cert)
        cn = operator_cn(province)
        operator_key = pki.make_key()
        operator_cert = pki.sign_csr(
            pki.make_csr(operator_key, cn),
            ca_cert,
            ca_key,
            days=min(days, DEFAULT_STATION_DAYS),
        )
        atomic_write(home.operator_key, operator_key, mode=0o600)
        atomic_write(home.operator_cert, operator_cert)
        registry.set_meta("province", province)
        # The empty CRL from the start: the broker's listener always names a crlfile, and with
        # CRL checking on, a CA without a CRL fails every client.
        from province import revoke  # revoke builds on this module

        revoke.write_crl(home, registry)
    return CaResult(
        province,
        home.ca_cert,
        home.ca_key,
        home.operator_cert,
        home.operator_key,
        cert_fingerprint(ca_cert),
        cn,
    )


@dataclass(frozen=True, slots=True)
class ServerCertResult:
    cert: Path
    key: Path
    ca: Path
    names: tuple[str, ...]


def issue_server_cert(
    home: ProvinceHome,
    hosts: Sequence[str],
    ips: Sequence[str],
    out_dir: Path,
    days: int = DEFAULT_STATION_DAYS,
) -> ServerCertResult:
    """The broker's certificate and key from the province CA, with the CA beside them."""
    if not hosts and not ips:
        raise ProvinceError("name the broker: at least one --host or --ip")
    if days < 1:
        raise ProvinceError(f"--days must be at least 1, got {days}")
    ca_cert, ca_key = _load_ca(home)
    try:
        cert_pem, key_pem = pki.issue_server_cert(ca_cert, ca_key, hosts, ips, days=days)
    except pki.PkiError as exc:
        raise ProvinceError(str(exc)) from exc
    result = ServerCertResult(
        out_dir / "server.crt", out_dir / "server.key", out_dir / "ca.crt", (*hosts, *ips)
    )
    atomic_write(result.key, key_pem, mode=0o600)
    atomic_write(result.cert, cert_pem)
    atomic_write(result.ca, ca_cert)
    crl = home.root / "ca" / "crl.pem"  # the broker's crlfile, beside its CA
    if crl.exists():
        atomic_write(out_dir / "crl.pem", crl.read_bytes())
    return result


# -- stations ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enrollment:
    station: StationId
    cert_path: Path
    signing_fingerprint: str
    not_after: datetime
    replaced: bool


def enroll(
    home: ProvinceHome,
    csr_pem: bytes,
    signing_public: str,
    *,
    out: Path | None = None,
    days: int = DEFAULT_STATION_DAYS,
    replace: bool = False,
) -> Enrollment:
    """Check a station's certificate request and signing key, issue its client certificate,
    record it in the registry and write the certificate file.

    ``signing_public`` is the 64-hex Ed25519 key the station's as-run records will be checked
    against. Enrolling a station already in the registry is refused unless ``replace`` (a
    station re-provisioned after repair: new keys, same id), which updates its row.
    """
    if days < 1:
        raise ProvinceError(f"--days must be at least 1, got {days}")
    ca_cert, ca_key = _load_ca(home)
    with open_home_registry(home.root) as registry:
        province = registry_province(registry)
        csr = _load_csr(csr_pem)
        station = _station_of(csr, province)
        _check_signing_key(signing_public)
        existing = {s.id.path: s for s in registry.stations(include_revoked=True)}
        previous = existing.get(station.path)
        if previous is not None and not replace:
            state = "was revoked" if previous.revoked_at else "is already enrolled"
            raise ProvinceError(
                f"{station.path} {state} (since {previous.enrolled_at}); "
                "use --replace for a station re-provisioned after repair"
            )
        _check_keys_unshared(existing.values(), station, csr, signing_public)
        try:
            cert_pem = pki.sign_csr(csr_pem, ca_cert, ca_key, days=days, client=True)
        except pki.PkiError as exc:
            raise ProvinceError(f"certificate request refused: {exc}") from exc
        cert_path = out if out is not None else home.station_cert(station)
        atomic_write(cert_path, cert_pem)
        if previous is None:
            try:
                registry.add_station(station, cert_pem, signing_public)
            except RegistryError as exc:  # enrolled by someone else since the check above
                raise ProvinceError(str(exc)) from exc
        else:
            registry.replace_station(station, cert_pem, signing_public)
    return Enrollment(
        station,
        cert_path,
        signing_fingerprint(signing_public),
        not_after(cert_pem),
        previous is not None,
    )


def registry_acl(home: ProvinceHome) -> str:
    """The broker ACL for the registry's active stations and the province's operator."""
    with open_home_registry(home.root) as registry:
        province = registry_province(registry)
        stations = [s.id.path for s in registry.stations()]
    # Every identity in HOME/operator (collectors beside the first, the time beacon...).
    return acl.render_acl(stations, operators.operator_cns(home.root, province))


def list_stations(home: ProvinceHome) -> list[StationRecord]:
    with open_home_registry(home.root) as registry:
        return registry.stations()


# -- helpers -----------------------------------------------------------------------------------


def _load_ca(home: ProvinceHome) -> tuple[bytes, bytes]:
    try:
        return home.ca_cert.read_bytes(), home.ca_key.read_bytes()
    except FileNotFoundError as exc:
        raise ProvinceError(
            f"no province CA at {exc.filename}: run `loa-province ca init` first"
        ) from exc


def _load_cert(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ProvinceError(f"the {what} is not a PEM certificate") from exc


def _load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    try:
        return pki.load_csr(pem)
    except pki.PkiError as exc:
        raise ProvinceError(f"the certificate request is refused: {exc}") from exc


def _station_of(csr: x509.CertificateSigningRequest, province: str) -> StationId:
    attrs = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1 or not isinstance(attrs[0].value, str):
        raise ProvinceError(
            f"certificate request must name exactly one CN (the station id), has {len(attrs)}"
        )
    cn = attrs[0].value
    try:
        p, c, s = acl.parse_station_id(cn)
    except ValueError as exc:
        raise ProvinceError(f"certificate request CN is {exc}") from exc
    if p != province:
        raise ProvinceError(
            f"certificate request is for {cn}, in province {p}; this is province {province}"
        )
    return StationId(p, c, s)


def _check_signing_key(public_hex: str) -> None:
    if len(public_hex) != 64 or any(ch not in "0123456789abcdef" for ch in public_hex):
        raise ProvinceError("the signing key is not 64 lowercase hex characters")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
    except ValueError as exc:
        raise ProvinceError(f"the signing key is not an Ed25519 public key: {exc}") from exc


def _check_keys_unshared(
    records: Iterable[StationRecord],
    station: StationId,
    csr: x509.CertificateSigningRequest,
    signing: str,
) -> None:
    """Refuse keys another station already holds: a cloned SD card would otherwise give two
    stations one identity (reports signed by either would pass as both)."""
    tls_public = csr.public_key()
    for record in records:
        if record.id == station:
            continue
        if record.signing_public == signing:
            raise ProvinceError(f"the signing key is already enrolled for {record.id.path}")
        if _load_cert(record.cert_pem, "registry certificate").public_key() == tls_public:
            raise ProvinceError(f"the TLS key is already enrolled for {record.id.path}")
