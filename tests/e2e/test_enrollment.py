"""Enrollment as the province officer and the technician run it: the province CA, a station's
certificate request signed into the registry, the certificate installed on the station, the
broker ACL rendered from the registry — and every wrong file refused without a trace."""

from __future__ import annotations

import base64
import hashlib
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent import keyfiles
from agent.core.dsse import keyid_of
from province import acl, pki
from province.registry import Registry

BIN = Path(sys.executable).parent
VECTORS = Path(__file__).resolve().parents[2].parent / "shared/vectors"
STATION = "25/08230/08230-01"
BROKER = "mqtts://127.0.0.1:8883"


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, timeout=60
    )


def province(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run(BIN / "loa-province", *args)


def provision(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run(BIN / "loa-provision", *args)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ca_init(home: Path, code: str = "25") -> subprocess.CompletedProcess[str]:
    result = province("ca", "init", "--province", code, "--home", home)
    assert result.returncode == 0, result.stderr
    return result


@dataclass(frozen=True)
class Station:
    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "station.toml"

    @property
    def keys(self) -> Path:
        return self.directory / "keys"

    @property
    def csr(self) -> Path:
        return self.keys / "station.csr"

    @property
    def pub(self) -> Path:
        return self.keys / "station.pub"


def new_station(directory: Path, name: str = "08230-01", commune: str = "08230") -> Station:
    result = provision(
        "init", "--province", "25", "--commune", commune, "--station", name,
        "--keyring", VECTORS / "keyring-v1.json", "--dir", directory,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return Station(directory)


def enroll(home: Path, station: Station, *extra: str | Path) -> subprocess.CompletedProcess[str]:
    return province("enroll", station.csr, "--signing-key", station.pub, "--home", home, *extra)


def install(
    station: Station, cert: Path, ca: Path, *extra: str | Path
) -> subprocess.CompletedProcess[str]:
    return provision("enroll", cert, "--ca", ca, "--config", station.config, *extra)


def assert_nothing_installed(station: Station, config_before: bytes) -> None:
    assert not (station.keys / "station.crt").exists()
    assert not (station.keys / "ca.crt").exists()
    assert station.config.read_bytes() == config_before


# -- the CA ------------------------------------------------------------------------------------


def test_ca_init_writes_private_keys_0600_and_refuses_a_second_ca(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = ca_init(home)
    ca_crt, ca_key = home / "ca/ca.crt", home / "ca/ca.key"
    op_crt, op_key = home / "operator/operator.crt", home / "operator/operator.key"
    assert mode(ca_key) == 0o600 and mode(op_key) == 0o600
    der = x509.load_pem_x509_certificate(ca_crt.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    assert keyfiles.fingerprint(hashlib.sha256(der).hexdigest()) in result.stdout
    assert str(ca_crt) in result.stdout and str(op_crt) in result.stdout

    operator = x509.load_pem_x509_certificate(op_crt.read_bytes())
    operator.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_crt.read_bytes()))
    assert pki.common_name(op_crt.read_bytes()) == "province-25"
    usage = operator.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    with Registry(home / "registry.db") as registry:
        assert registry.meta("province") == "25"

    before = {p: p.read_bytes() for p in (ca_crt, ca_key, op_crt, op_key)}
    again = province("ca", "init", "--province", "25", "--home", home)
    assert again.returncode == 1
    assert "refusing to replace" in again.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_province_home_comes_from_the_environment_and_must_exist(tmp_path: Path) -> None:
    missing = province("stations", "--home", tmp_path / "nowhere")
    assert missing.returncode == 1
    assert "ca init" in missing.stderr
    assert not (tmp_path / "nowhere").exists()  # a typo in --home creates nothing
    env_home = tmp_path / "env-home"
    result = subprocess.run(
        [str(BIN / "loa-province"), "ca", "init", "--province", "25"],
        capture_output=True, text=True, check=False, timeout=60, cwd=tmp_path,
        env={"LOA_PROVINCE_HOME": str(env_home), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (env_home / "ca/ca.key").exists()
    assert not (tmp_path / "province-home").exists()


def test_server_cert_for_the_broker(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "broker"
    ca_init(home)
    result = province(
        "ca", "server-cert", "--host", "broker.example.vn", "--host", "localhost",
        "--ip", "127.0.0.1", "--out-dir", out, "--home", home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert mode(out / "server.key") == 0o600
    assert (out / "ca.crt").read_bytes() == (home / "ca/ca.crt").read_bytes()
    cert = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate((out / "ca.crt").read_bytes()))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["broker.example.vn", "localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    key = serialization.load_pem_private_key((out / "server.key").read_bytes(), None)
    assert key.public_key() == cert.public_key()

    nameless = province("ca", "server-cert", "--out-dir", tmp_path / "x", "--home", home)
    assert nameless.returncode == 1 and "--host" in nameless.stderr


# -- enrolling and installing ------------------------------------------------------------------


def test_enroll_install_list_and_acl(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ca_init(home)
    station = new_station(tmp_path / "station")

    enrolled = enroll(home, station)
    assert enrolled.returncode == 0, enrolled.stderr
    cert = home / "stations" / "25_08230_08230-01.crt"
    public = station.pub.read_text().strip()
    signing_print = keyfiles.fingerprint(keyid_of(bytes.fromhex(public)))
    assert STATION in enrolled.stdout
    assert str(cert) in enrolled.stdout
    assert signing_print in enrolled.stdout
    assert pki.common_name(cert.read_bytes()) == STATION
    with Registry(home / "registry.db") as registry:
        record = registry.station(STATION)
        assert record is not None
        assert record.cert_pem == cert.read_bytes()
        assert record.signing_public == public

    config_before = station.config.read_text()
    installed = install(station, cert, home / "ca/ca.crt", "--broker", BROKER)
    assert installed.returncode == 0, installed.stderr
    assert (station.keys / "station.crt").read_bytes() == cert.read_bytes()
    assert (station.keys / "ca.crt").read_bytes() == (home / "ca/ca.crt").read_bytes()
    # Only the urls line changed; every other byte of the technician's file is kept.
    expected = re.sub(r"(?m)^urls = \[\]$", f'urls = ["{BROKER}"]', config_before)
    assert expected != config_before
    assert station.config.read_text() == expected

    listed = province("stations", "--home", home)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(STATION))
    assert signing_print in row and record.enrolled_at in row

    shown = province("acl", "--home", home)
    assert shown.returncode == 0, shown.stderr
    assert f"\nuser {STATION}\ntopic write loa/v1/{STATION}/state\n" in shown.stdout
    assert "\nuser province-25\ntopic readwrite loa/v1/25/#\n" in shown.stdout
    with Registry(home / "registry.db") as registry:
        paths = [s.id.path for s in registry.stations()]
    assert shown.stdout == acl.render_acl(paths, [("province-25", "25")])
    written = province("acl", "--out", tmp_path / "acl", "--home", home)
    assert written.returncode == 0, written.stderr
    assert (tmp_path / "acl").read_text() == shown.stdout


def test_broker_urls_with_brackets_are_rewritten_in_place(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ca_init(home)
    station = new_station(tmp_path / "station")
    assert enroll(home, station).returncode == 0
    cert, ca = home / "stations" / "25_08230_08230-01.crt", home / "ca/ca.crt"
    first = install(station, cert, ca, "--broker", "mqtts://[::1]:8883", "--broker", BROKER)
    assert first.returncode == 0, first.stderr
    assert 'urls = ["mqtts://[::1]:8883", "mqtts://127.0.0.1:8883"]\n' in station.config.read_text()
    second = install(station, cert, ca, "--broker", "mqtts://broker.example.vn:8883")
    assert second.returncode == 0, second.stderr
    assert 'urls = ["mqtts://broker.example.vn:8883"]\n' in station.config.read_text()
    before = station.config.read_bytes()
    bad = install(station, cert, ca, "--broker", "http://broker.example.vn")
    assert bad.returncode == 1 and "mqtts://" in bad.stderr
    assert station.config.read_bytes() == before


def test_enrolling_twice_needs_replace(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ca_init(home)
    station = new_station(tmp_path / "station")
    assert enroll(home, station).returncode == 0
    cert = home / "stations" / "25_08230_08230-01.crt"
    first = cert.read_bytes()

    twice = enroll(home, station)
    assert twice.returncode == 1
    assert "already enrolled" in twice.stderr and "--replace" in twice.stderr
    assert cert.read_bytes() == first

    # Repaired: the SD card was re-provisioned, so new keys under the same station id.
    repaired = new_station(tmp_path / "repaired")
    replaced = enroll(home, repaired, "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert "re-enrolled" in replaced.stdout
    with Registry(home / "registry.db") as registry:
        records = registry.stations()
    assert [r.id.path for r in records] == [STATION]
    assert records[0].signing_public == repaired.pub.read_text().strip()
    assert records[0].cert_pem == cert.read_bytes() != first


def test_csr_from_another_province_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ca_init(home)
    station = new_station(tmp_path / "station")
    station.csr.write_bytes(pki.make_csr(pki.make_key(), "26/01234/01234-01"))
    result = enroll(home, station)
    assert result.returncode == 1
    assert "province 26" in result.stderr and "province 25" in result.stderr
    assert not (home / "stations").exists()
    assert province("acl", "--home", home).stdout.count("\nuser ") == 1  # the operator only


def test_csr_that_is_not_a_station_id_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ca_init(home)
    station = new_station(tmp_path / "station")
    station.csr.write_bytes(pki.make_csr(pki.make_key(), "province-25"))
    result = enroll(home, station)
    assert result.returncode == 1 and "not a station id" in result.stderr


def test_tampered_csr_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ca_init(home)
    station = new_station(tmp_path / "station")
    # Someone on the way changes the requested identity to a neighbour's (same length).
    pem = station.csr.read_text()
    body = "".join(pem.strip().splitlines()[1:-1])
    der = base64.b64decode(body)
    assert der.count(b"08230-01") == 1
    forged = der.replace(b"08230-01", b"08230-02")
    lines = base64.b64encode(forged).decode()
    station.csr.write_text(
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + "\n".join(lines[i : i + 64] for i in range(0, len(lines), 64))
        + "\n-----END CERTIFICATE REQUEST-----\n"
    )
    result = enroll(home, station)
    assert result.returncode == 1
    assert "signature does not verify" in result.stderr
    assert not (home / "stations").exists()


def test_signing_key_must_be_an_ed25519_public_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ca_init(home)
    station = new_station(tmp_path / "station")
    station.pub.write_text("not a key\n")
    result = enroll(home, station)
    assert result.returncode == 1 and "64 lowercase hex" in result.stderr


def test_keys_of_another_station_are_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ca_init(home)
    one = new_station(tmp_path / "one")
    two = new_station(tmp_path / "two", name="08230-02")
    assert enroll(home, one).returncode == 0
    # A cloned SD card: station two presents station one's report-signing key.
    cloned = province("enroll", two.csr, "--signing-key", one.pub, "--home", home)
    assert cloned.returncode == 1
    assert "already enrolled for 25/08230/08230-01" in cloned.stderr


def test_certificate_for_another_station_is_not_installed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ca_init(home)
    one = new_station(tmp_path / "one")
    two = new_station(tmp_path / "two", name="08230-02")
    assert enroll(home, one).returncode == 0
    assert enroll(home, two).returncode == 0
    before = one.config.read_bytes()
    wrong = install(
        one, home / "stations/25_08230_08230-02.crt", home / "ca/ca.crt", "--broker", BROKER
    )
    assert wrong.returncode == 1
    assert "25/08230/08230-02" in wrong.stderr and "another station" in wrong.stderr
    assert_nothing_installed(one, before)


def test_certificate_for_an_older_request_is_not_installed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ca_init(home)
    old = new_station(tmp_path / "old")
    assert enroll(home, old).returncode == 0
    # The station was re-provisioned since; the province sends the certificate of the old CSR.
    new = new_station(tmp_path / "new")
    before = new.config.read_bytes()
    stale = install(new, home / "stations/25_08230_08230-01.crt", home / "ca/ca.crt")
    assert stale.returncode == 1
    assert "does not match this station's TLS key" in stale.stderr
    assert_nothing_installed(new, before)


def test_certificate_from_another_ca_is_not_installed(tmp_path: Path) -> None:
    home, rogue = tmp_path / "home", tmp_path / "rogue"
    ca_init(home)
    ca_init(rogue)  # same province, same CA name: only the signature tells them apart
    station = new_station(tmp_path / "station")
    assert enroll(rogue, station).returncode == 0
    before = station.config.read_bytes()
    result = install(station, rogue / "stations/25_08230_08230-01.crt", home / "ca/ca.crt")
    assert result.returncode == 1
    assert "does not verify with this CA" in result.stderr
    assert_nothing_installed(station, before)

    not_a_ca = install(
        station, rogue / "stations/25_08230_08230-01.crt", rogue / "operator/operator.crt"
    )
    assert not_a_ca.returncode == 1 and "not a CA certificate" in not_a_ca.stderr
    assert_nothing_installed(station, before)


def test_expired_certificate_is_not_installed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ca_init(home)
    station = new_station(tmp_path / "station")
    # Issued with no lifetime at all: its validity ended the moment it was signed.
    cert = pki.sign_csr(
        station.csr.read_bytes(),
        (home / "ca/ca.crt").read_bytes(),
        (home / "ca/ca.key").read_bytes(),
        days=0,
    )
    (tmp_path / "expired.crt").write_bytes(cert)
    before = station.config.read_bytes()
    result = install(station, tmp_path / "expired.crt", home / "ca/ca.crt")
    assert result.returncode == 1 and "expired" in result.stderr
    assert_nothing_installed(station, before)
