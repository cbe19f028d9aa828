"""A revoked station is refused by the real broker at the TLS handshake, while another station
still connects: mosquitto 2.0 runs on the province CA with the ``crlfile`` and ACL that
``loa-province crl`` and ``loa-province revoke`` wrote, and re-reads both on the SIGHUP that
``revoke --broker-pid`` sends, without a restart. Everything is made with the CLIs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from province import pki
from province.mosquitto import BrokerFiles, Mosquitto, find_mosquitto
from tests.harness.broker import ConnectOutcome, attempt_connect

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
STATIONS = ("25/08230/08230-01", "25/08230/08230-02")


def province(*args: str | Path, home: Path) -> str:
    result = subprocess.run(
        [str(BIN / "loa-province"), *(str(a) for a in args), "--home", str(home)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, f"loa-province {args[0]}: {result.stderr}"
    return result.stdout


def connect(broker: Mosquitto, cn: str, files: tuple[Path, Path]) -> ConnectOutcome:
    return attempt_connect(broker, client_id=cn, certfile=files[0], keyfile=files[1])


def test_a_revoked_station_is_refused_at_the_handshake(tmp_path: Path) -> None:
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("mosquitto binary not found (install the Debian package: make sysdeps)")
    home, broker_dir = tmp_path / "home", tmp_path / "broker"
    province("ca", "init", "--province", "25", home=home)
    creds: dict[str, tuple[Path, Path]] = {}
    for n, station in enumerate(STATIONS):
        key = tmp_path / f"s{n}.key"
        key.write_bytes(pki.make_key())
        csr = tmp_path / f"s{n}.csr"
        csr.write_bytes(pki.make_csr(key.read_bytes(), station))
        signing = tmp_path / f"s{n}.pub"
        signing.write_text(f"{n + 1:02x}" * 32 + "\n")  # any Ed25519 point will do here
        province("enroll", csr, "--signing-key", signing, "--out", tmp_path / f"s{n}.crt",
                 home=home)  # fmt: skip
        creds[station] = (tmp_path / f"s{n}.crt", key)
    province("ca", "server-cert", "--ip", "127.0.0.1", "--out-dir", broker_dir, home=home)
    province("acl", "--out", broker_dir / "acl", home=home)
    province("crl", "--crl-out", broker_dir / "crl.pem", home=home)  # the empty one, from the start

    files = BrokerFiles(
        broker_dir / "ca.crt", broker_dir / "server.crt", broker_dir / "server.key",
        broker_dir / "acl", broker_dir / "crl.pem",
    )  # fmt: skip
    probe = (home / "operator/operator.crt", home / "operator/operator.key")
    with Mosquitto(broker_dir, files, probe, executable=executable) as broker:
        assert f"crlfile {files.crl}" in broker.conf_path.read_text()
        lost, other = STATIONS
        for station in STATIONS:
            outcome = connect(broker, station, creds[station])
            assert outcome.connected, f"{station} before revoke: {outcome.detail}"

        reloads = broker.reload_count()
        out = province(
            "revoke", lost, "--reason", "stolen", "--crl-out", files.crl, "--acl-out", files.acl,
            "--broker-pid", str(broker.pid), home=home,
        )  # fmt: skip
        assert "SIGHUP" in out
        broker.wait_reloaded(reloads)
        log_before = len(broker.log_text())

        refused = connect(broker, lost, creds[lost])
        assert not refused.connected, refused.detail
        # What mosquitto says: OpenSSL refused the client's certificate (the revoked one);
        # the client saw the connection closed during or right after the handshake.
        # mosquitto may log it a moment after the client saw the close: wait for the line.
        deadline = time.monotonic() + 10
        while "certificate verify failed" not in broker.log_text()[log_before:]:
            assert time.monotonic() < deadline, broker.log_text()[log_before:]
            time.sleep(0.05)
        after = broker.log_text()[log_before:]
        assert f"as {lost}" not in after
        still = connect(broker, other, creds[other])
        assert still.connected, f"{other} after revoking {lost}: {still.detail}"

        # mosquitto read the new CRL itself, not only the ACL: without the station's block
        # the ACL would have admitted the connection and denied its topics.
        crl = pki.load_crl(files.crl.read_bytes(), files.ca.read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(
            pki.serial_number(creds[lost][0].read_bytes())
        )
