"""``loa-province revoke`` and ``crl`` as an operator runs them (``main(argv)`` on a real
province home): the registry keeps the station as revoked, the CRL (parsed with cryptography)
lists its serial under a growing CRL number, the ACL leaves it out, ``stations`` hides it, a
replacement can be enrolled under the same id, and coverage stops counting its as-runs from
the revocation on, saying how many it set aside and why.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import keyfiles
from agent.core.reports import AsRun, signed_asrun
from agent.core.targets import StationId
from province import pki
from province.cli import main
from province.collector import STORED, ReportIntake
from province.coverage import SET_ASIDE_REVOKED, build_report
from province.coverage_render import render_html, render_text
from province.registry import Registry
from tests.harness.trust import body_bytes, playlist_body

A1 = StationId.parse("25/08230/08230-01")
A2 = StationId.parse("25/08230/08230-02")
VN = timezone(timedelta(hours=7))
EVERY_DAY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Province:
    """A province home made with the CLI, with stations enrolled from their own key files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.signing: dict[StationId, Ed25519PrivateKey] = {}
        assert self.run("ca", "init", "--province", "25") == 0

    def run(self, *args: str | Path) -> int:
        return main([str(a) for a in args] + ["--home", str(self.home)])

    def enroll(self, station: StationId, *, replace: bool = False) -> bytes:
        directory = self.root / station.path.replace("/", "_") / str(len(self.signing))
        directory.mkdir(parents=True)
        csr = directory / "station.csr"
        csr.write_bytes(pki.make_csr(pki.make_key(), station.path))
        signing = keyfiles.generate()
        keyfiles.save_private(directory / "station.key", signing)
        pub = directory / "station.pub"
        pub.write_text(keyfiles.public_hex(signing) + "\n")
        self.signing[station] = signing
        cert = directory / "station.crt"
        extra = ["--replace"] if replace else []
        assert self.run("enroll", csr, "--signing-key", pub, "--out", cert, *extra) == 0
        return cert.read_bytes()

    def registry(self) -> Registry:
        return Registry(self.home / "registry.db")

    def crl(self) -> x509.CertificateRevocationList:
        ca = (self.home / "ca/ca.crt").read_bytes()
        return pki.load_crl((self.home / "ca/crl.pem").read_bytes(), ca)


@pytest.fixture
def province(tmp_path: Path) -> Province:
    p = Province(tmp_path)
    p.enroll(A1)
    p.enroll(A2)
    return p


def reason_of(entry: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


def test_crl_starts_empty_and_revocations_grow_it(
    province: Province, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broker_crl = tmp_path / "broker" / "crl.pem"
    at_ca_init = province.crl()  # `ca init` wrote the empty CRL a broker needs from the start
    assert len(at_ca_init) == 0 and pki.crl_number(at_ca_init) == 1
    assert province.run("crl", "--crl-out", broker_crl) == 0
    empty = province.crl()
    ca = x509.load_pem_x509_certificate((province.home / "ca/ca.crt").read_bytes())
    assert len(empty) == 0 and pki.crl_number(empty) == 2
    assert broker_crl.read_bytes() == (province.home / "ca/crl.pem").read_bytes()
    # A CRL that outlives nothing it vouches for: it expires with the CA, never before.
    assert empty.next_update_utc == ca.not_valid_after_utc
    aki = empty.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest

    with province.registry() as registry:
        a1 = registry.lookup_station(A1.path)
        a2 = registry.lookup_station(A2.path)
    assert a1 is not None and a2 is not None
    acl = tmp_path / "broker" / "acl"
    capsys.readouterr()
    assert province.run("revoke", A1.path, "--reason", "stolen from the commune hall",
                        "--crl-out", broker_crl, "--acl-out", acl) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"revoked {A1.path}" in out and "sudo systemctl reload mosquitto" in out
    first = province.crl()
    entry = first.get_revoked_certificate_by_serial_number(pki.serial_number(a1.cert_pem))
    assert entry is not None and reason_of(entry) == x509.ReasonFlags.key_compromise
    assert abs(entry.revocation_date_utc - datetime.now(UTC)) < timedelta(minutes=10)
    assert pki.crl_number(first) == 3 and len(first) == 1
    assert broker_crl.read_bytes() == (province.home / "ca/crl.pem").read_bytes()
    assert f"user {A1.path}\n" not in acl.read_text() and f"user {A2.path}\n" in acl.read_text()

    lost = "2026-11-20T10:00:00+07:00"
    assert province.run("revoke", A2.path, "--crl-reason", "cessation-of-operation",
                        "--since", lost) == 0  # fmt: skip
    second = province.crl()
    assert pki.crl_number(second) == 4 and len(second) == 2
    entry2 = second.get_revoked_certificate_by_serial_number(pki.serial_number(a2.cert_pem))
    assert entry2 is not None and reason_of(entry2) == x509.ReasonFlags.cessation_of_operation
    invalid = entry2.extensions.get_extension_for_class(x509.InvalidityDate).value
    assert invalid.invalidity_date_utc == datetime(2026, 11, 20, 3, tzinfo=UTC)
    assert second.get_revoked_certificate_by_serial_number(entry.serial_number) is not None

    # Again (a retry after a failed reload): nothing new, the files are written anew.
    assert province.run("revoke", A1.path) == 0
    assert "already revoked" in capsys.readouterr().out
    assert pki.crl_number(province.crl()) == 5 and len(province.crl()) == 2


def test_registry_keeps_the_row_and_stations_hides_it(
    province: Province, capsys: pytest.CaptureFixture[str]
) -> None:
    assert province.run("revoke", A1.path, "--reason", "lost in the flood") == 0
    with province.registry() as registry:
        assert [s.id for s in registry.stations()] == [A2]
        row = registry.lookup_station(A1.path)
        assert row is not None and row.revoked_at is not None
        assert row.revoke_reason == "lost in the flood"
        [revocation] = registry.revocations()
        assert revocation.station == A1.path and revocation.crl_reason == "key-compromise"
    capsys.readouterr()
    assert province.run("stations") == 0
    out = capsys.readouterr().out
    assert A1.path not in out and A2.path in out
    assert "1 revoked station not shown (--all shows them)" in out
    assert province.run("stations", "--all") == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if A1.path in line)
    assert "REVOKED" in line and "lost in the flood" in line


def test_a_replacement_gets_a_new_serial_and_the_old_one_stays_revoked(
    province: Province, capsys: pytest.CaptureFixture[str]
) -> None:
    with province.registry() as registry:
        old = registry.lookup_station(A1.path)
    assert old is not None
    assert province.run("revoke", A1.path) == 0
    new_cert = province.enroll(A1, replace=True)
    assert pki.serial_number(new_cert) != pki.serial_number(old.cert_pem)
    with province.registry() as registry:
        assert [s.id for s in registry.stations()] == [A1, A2]
        [revocation] = registry.revocations()
        assert revocation.replaced_at is not None
    assert province.run("crl") == 0
    crl = province.crl()
    assert crl.get_revoked_certificate_by_serial_number(pki.serial_number(old.cert_pem))
    assert crl.get_revoked_certificate_by_serial_number(pki.serial_number(new_cert)) is None
    # And the replacement can be lost too: both certificates are then on the list.
    assert province.run("revoke", A1.path, "--reason", "stolen again") == 0
    assert len(province.crl()) == 2


def test_refusals(province: Province, capsys: pytest.CaptureFixture[str]) -> None:
    assert province.run("revoke", "25/08230/08230-09") == 1
    assert "is not enrolled" in capsys.readouterr().err
    assert province.run("revoke", "26/08230/08230-01") == 1
    assert "not in province 25" in capsys.readouterr().err
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert province.run("revoke", A1.path, "--since", future) == 1
    assert "in the future" in capsys.readouterr().err
    with province.registry() as registry:
        assert registry.revocations() == [] and len(registry.stations()) == 2


# -- coverage ------------------------------------------------------------------------------------


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, 20, hour, minute, tzinfo=VN)


def slot(slot_id: str, start: str) -> dict[str, Any]:
    return {"id": slot_id, "start": start, "days": EVERY_DAY, "items": ["news"]}


def test_coverage_counts_as_runs_before_the_revocation_only(
    province: Province, capsys: pytest.CaptureFixture[str]
) -> None:
    body = playlist_body(
        slots=[slot("morning", "06:00"), slot("late", "09:55"), slot("noon", "11:00")]
    )
    received = [at(0)]
    with province.registry() as registry:
        registry.record_published(
            "loa/v1/25/playlist/25", "playlist", "25", "25", "v1", body_bytes(body), b"{}"
        )
        intake = ReportIntake(registry, "25", lambda: received[0])
        seqs: dict[StationId, int] = {}

        def asrun(station: StationId, slot_id: str, scheduled: datetime, started: datetime) -> None:
            seq = seqs.get(station, 0)
            seqs[station] = seq + 1
            played = AsRun(
                slot=slot_id, stream="25@25", playlist_version=1, media="news",
                sha256="ab" * 32, scheduled_at=scheduled, started_at=started,
                ended_at=started + timedelta(minutes=10), played_s=600.0, outcome="complete",
                reason=None, zones=("all",), volume=80, relay_ok=True, amp_power_ok=True,
                output_level_db=-20.0, clock_trusted=True,
            )  # fmt: skip
            received[0] = started + timedelta(minutes=15)
            envelope = signed_asrun(station, seq, 1, played, province.signing[station])
            handled = intake.handle(f"{station.prefix}/telemetry/asrun", envelope)
            assert handled.outcome == STORED, handled.reason

        for station in (A1, A2):
            asrun(station, "morning", at(6), at(6))
            # Started late, after A1 went missing at 10:00: A1's word no longer counts.
            asrun(station, "late", at(9, 55), at(10, 1))
            asrun(station, "noon", at(11), at(11))

    # Stolen at 10:00, noticed and revoked later; its reports were all stored by then.
    assert province.run("revoke", A1.path, "--since", at(10).isoformat(),
                        "--reason", "stolen from the commune hall") == 0  # fmt: skip
    with province.registry() as registry:
        report = build_report(registry, at(0), at(0) + timedelta(days=1), at(23))
    rows = {row.slot: row for row in report.rows}
    assert (rows["morning"].expected, rows["morning"].complete) == (2, 2)
    late = rows["late"]
    assert (late.expected, late.complete, late.no_report) == (2, 1, 1)
    [aside] = [s for s in late.stations if s.station == A1.path]
    assert aside.cause == SET_ASIDE_REVOKED and "stolen from the commune hall" in aside.detail
    # Revoked before the noon bulletin began: not expected there at all.
    assert (rows["noon"].expected, rows["noon"].complete) == (1, 1)
    assert [s.station for s in rows["noon"].stations] == [A2.path]
    [set_aside] = report.set_aside
    assert (set_aside.station, set_aside.reason, set_aside.count) == (A1.path, "station revoked", 2)
    assert report.set_aside_count == 2
    text = render_text(report)
    assert "as-runs set aside: 2" in text and "station revoked" in text
    assert "As-runs set aside (2)" in render_html(report)

    # The operator's own command says it too.
    capsys.readouterr()
    assert province.run("coverage", "--from", at(0).isoformat(), "--to",
                        (at(0) + timedelta(days=1)).isoformat()) == 0  # fmt: skip
    assert "as-runs set aside: 2" in capsys.readouterr().out
