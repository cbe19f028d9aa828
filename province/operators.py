"""The province's own broker identities: one certificate per long-running process.

mosquitto takes the client id from the certificate's CN (``use_username_as_clientid``), so two
processes holding the same certificate take each other's connection over, again and again. A
second collector (or a time beacon beside a collector) therefore needs an identity of its own:
``HOME/operator/NAME.crt`` and ``.key``, CN ``province-PP.NAME``, issued by the province CA on
first use. Every identity in ``HOME/operator`` gets the operator's lines in the broker ACL.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from hal.files import atomic_write
from province import pki
from province.errors import ProvinceError

DEFAULT_DAYS = 825
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


def identity_cn(province: str, name: str | None) -> str:
    return f"province-{province}" if name is None else f"province-{province}.{name}"


def identity_files(home: Path, name: str | None) -> tuple[Path, Path]:
    """(certificate, key) of the identity ``name``; None is the operator of ``ca init``."""
    stem = "operator" if name is None else name
    if name is not None and (_NAME.fullmatch(name) is None or name == "operator"):
        raise ProvinceError(
            f"an identity name is 1-32 of a-z, 0-9 and '-' (not 'operator'), got {name!r}"
        )
    return home / "operator" / f"{stem}.crt", home / "operator" / f"{stem}.key"


def ensure_identity(home: Path, province: str, name: str, days: int = DEFAULT_DAYS) -> bool:
    """Issue ``name``'s certificate from the province CA unless it exists; True if issued.

    The broker only lets it in once the ACL is regenerated (``loa-province acl``)."""
    cert_path, key_path = identity_files(home, name)
    if cert_path.exists() and key_path.exists():
        return False
    ca_cert, ca_key = home / "ca" / "ca.crt", home / "ca" / "ca.key"
    if not (ca_cert.is_file() and ca_key.is_file()):
        raise ProvinceError(f"{home / 'ca'} has no CA to issue the identity {name!r} with")
    key_pem = pki.make_key()
    cert_pem = pki.sign_csr(
        pki.make_csr(key_pem, identity_cn(province, name)),
        ca_cert.read_bytes(),
        ca_key.read_bytes(),
        days=days,
    )
    atomic_write(key_path, key_pem, mode=0o600)
    atomic_write(cert_path, cert_pem)
    return True


def operator_cns(home: Path, province: str) -> list[tuple[str, str]]:
    """(CN, province) of every identity in ``HOME/operator`` that belongs to ``province``, for
    the ACL; the ``ca init`` operator always."""
    found = {identity_cn(province, None)}
    directory = home / "operator"
    if directory.is_dir():
        for cert_path in sorted(directory.glob("*.crt")):
            try:
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            except ValueError:
                continue  # not ours to judge here; `ca` commands report broken files
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            cn = str(names[0].value) if names else ""
            if cn == identity_cn(province, None) or cn.startswith(f"province-{province}."):
                found.add(cn)
    return [(cn, province) for cn in sorted(found)]


def share_group(home: Path) -> str:
    """The collectors' shared-subscription group name: random per province, kept in
    ``HOME/operator/share-group`` (made on first use).

    mosquitto lets any client it admits join any share group, deals it its round-robin share of
    the reports, and drops the ones its ACL does not let it read, instead of giving them to a
    collector: a station (or a revoked one, until the broker has a CRL) that guessed the group
    would delay reports (they are resent until receipted) and burn the stations' data plans. A
    name nobody outside the province's server knows keeps them out."""
    path = home / "operator" / "share-group"
    if path.is_file():
        name = path.read_text(encoding="ascii").strip()
        if re.fullmatch(r"[A-Za-z0-9_-]{8,64}", name):
            return name
        raise ProvinceError(f"{path} does not hold a share group name (8-64 of A-Z a-z 0-9 _ -)")
    name = f"loa-{secrets.token_hex(16)}"
    atomic_write(path, (name + "\n").encode(), mode=0o600)
    return name
