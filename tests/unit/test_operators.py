"""The province's broker identities: one certificate per long-running process, issued by the
province CA on first use, every one of them named in the ACL; and the collectors' secret share
group."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from province import operators, pki
from province.errors import ProvinceError


@pytest.fixture
def home(tmp_path: Path) -> Path:
    ca_cert, ca_key = pki.create_ca("Loa province 25 device CA", days=2)
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "ca.crt").write_bytes(ca_cert)
    (tmp_path / "ca" / "ca.key").write_bytes(ca_key)
    return tmp_path


def cn_of(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_an_identity_is_issued_once_by_the_ca_and_named_in_the_acl(home: Path) -> None:
    assert operators.ensure_identity(home, "25", "collector-2")
    cert, key = operators.identity_files(home, "collector-2")
    assert cn_of(cert) == "province-25.collector-2" and key.stat().st_mode & 0o777 == 0o600
    before = cert.read_bytes()
    assert not operators.ensure_identity(home, "25", "collector-2")  # kept, not reissued
    assert cert.read_bytes() == before
    assert operators.operator_cns(home, "25") == [
        ("province-25", "25"),
        ("province-25.collector-2", "25"),
    ]
    # Another province's certificate lying in the directory is not this province's operator.
    other, _ = operators.identity_files(home, "stray")
    other.write_bytes(
        pki.sign_csr(pki.make_csr(pki.make_key(), "province-26.x"),
                     (home / "ca" / "ca.crt").read_bytes(), (home / "ca" / "ca.key").read_bytes(),
                     days=2)
    )  # fmt: skip
    assert ("province-26.x", "25") not in operators.operator_cns(home, "25")


@pytest.mark.parametrize("name", ["", "Upper", "a/b", "operator", "x" * 33, "-lead"])
def test_identity_names_are_checked(home: Path, name: str) -> None:
    with pytest.raises(ProvinceError):
        operators.identity_files(home, name)


def test_no_ca_no_identity(tmp_path: Path) -> None:
    with pytest.raises(ProvinceError, match="no CA"):
        operators.ensure_identity(tmp_path, "25", "collector-2")


def test_the_share_group_is_a_random_secret_kept_in_the_home(home: Path, tmp_path: Path) -> None:
    (home / "operator").mkdir(exist_ok=True)
    group = operators.share_group(home)
    assert group.startswith("loa-") and len(group) == 36
    assert operators.share_group(home) == group  # the same for every collector of the home
    assert (home / "operator" / "share-group").stat().st_mode & 0o777 == 0o600
    other = tmp_path / "other-home"
    (other / "operator").mkdir(parents=True)
    assert operators.share_group(other) != group
    (other / "operator" / "share-group").write_text("x")
    with pytest.raises(ProvinceError):
        operators.share_group(other)
