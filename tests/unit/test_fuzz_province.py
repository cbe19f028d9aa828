"""Fuzzing of the province's readers of what stations stored (issue 13, part "fuzz").

The collector stores an as-run whatever its body says once the station's own key signed it (a
deeper check would hold that kind's watermark forever, province/collector.py), and heartbeats
and events unsigned. So a compromised station, holding its own key, decides every byte the
province's reports read: coverage (the KPI), availability, the HTTT export and the renderers.
The property: whatever one station stored, the province's reports are still produced, and the
honest station's row still counts its complete as-run.

Counts go to one reliability Scenario (tests/harness/fuzz.py) before the assert.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.core import dsse
from agent.core.reports import ASRUN_TYPE, AsRun, asrun_body, to_bytes
from agent.core.targets import StationId
from province.collector import STORED, ReportIntake
from province.coverage import build_report
from province.coverage_render import (
    render_availability,
    render_below,
    render_csv,
    render_details,
    render_summary,
    render_table,
)
from province.httt_export import export
from province.registry import Registry
from tests.harness.fuzz import Tally, budget, fuzz_and_record
from tests.harness.mutate import JSON, mutated, mutated_doc
from tests.harness.trust import body_bytes, playlist_body

FILE = "tests/unit/test_fuzz_province.py"
VN = timezone(timedelta(hours=7))
HONEST, ROGUE = StationId.parse("25/08230/08230-01"), StationId.parse("25/08230/08230-02")
KEYS = {HONEST: 1, ROGUE: 2}
WINDOW = (datetime(2026, 11, 23, 0, 0, tzinfo=VN), datetime(2026, 11, 24, 0, 0, tzinfo=VN))
NOW = datetime(2026, 11, 23, 18, 0, tzinfo=VN)
MORNING = datetime(2026, 11, 23, 6, 0, tzinfo=VN)
EVERY_DAY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def key(station: StationId) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([KEYS[station]]) * 32)


def asrun_doc(station: StationId, seq: int) -> dict[str, Any]:
    record = AsRun(
        slot="morning", stream="25@25", playlist_version=1, media="news", sha256="ab" * 32,
        scheduled_at=MORNING, started_at=MORNING, ended_at=MORNING + timedelta(minutes=10),
        played_s=600.0, outcome="complete", reason=None, zones=("all",), volume=80,
        relay_ok=True, amp_power_ok=True, output_level_db=-12.0, clock_trusted=True,
    )  # fmt: skip
    return asrun_body(station, seq, 1, record)


def heartbeat_doc(station: StationId, seq: int) -> dict[str, Any]:
    return {"kind": "heartbeat", "schema": 1, "station": station.path, "seq": seq, "session": 1,
            "ts": "2026-11-23T08:00:00+07:00", "uptime_s": 1.0, "state": "idle",
            "clock": {"trusted": True}, "link": {"connected": True}, "volume": 80,
            "agent_version": "0.1.0"}  # fmt: skip


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry.db") as reg:
        for station in (HONEST, ROGUE):
            reg.add_station(station, b"cert", dsse.public_raw(key(station)).hex())
        body = playlist_body(
            version=2, slots=[{"id": "morning", "start": "06:00", "days": EVERY_DAY,
                               "items": ["news"]}],
        )  # fmt: skip
        reg.record_published(
            "loa/v1/25/playlist/25", "playlist", "25", "25", "v2", body_bytes(body), b"{}"
        )
        yield reg


class Rogue:
    """The compromised station: any body, its own key, the next seq so the collector keeps it."""

    def __init__(self, intake: ReportIntake) -> None:
        self.intake = intake
        self.seq = {"asrun": 0, "heartbeat": 0, "event": 0}

    def send(self, kind: str, doc: Any) -> bool:
        seq = self.seq[kind]
        if isinstance(doc, dict):
            # What the intake checks (kind, station, seq) is kept, the rest is the fuzz's.
            doc = {**doc, "kind": kind, "station": ROGUE.path, "seq": seq}
        body = to_bytes(doc) if not isinstance(doc, bytes) else doc
        payload = (
            dsse.sign(ASRUN_TYPE, body, [key(ROGUE)], compact=True) if kind == "asrun" else body
        )
        handled = self.intake.handle(f"{ROGUE.prefix}/telemetry/{kind}", payload)
        if handled.outcome == STORED:
            self.seq[kind] = seq + 1
            return True
        return False


BODIES = st.one_of(
    mutated_doc(asrun_doc(ROGUE, 0)),
    mutated_doc(heartbeat_doc(ROGUE, 0)),
    st.dictionaries(
        st.sampled_from(["stream", "slot", "scheduled_at", "started_at", "outcome", "reason",
                         "clock_trusted", "ts", "clock", "link", "state", "media", "played_s",
                         "volume", "agent_version", "code", "report_kind", "first_seq"]),
        JSON, max_size=6,
    ).map(lambda extra: {**asrun_doc(ROGUE, 0), **extra}),
    JSON,
)  # fmt: skip


def test_fuzz_province_readers_of_stored_reports(registry: Registry, tmp_path: Path) -> None:
    intake = ReportIntake(registry, "25", lambda: NOW)
    honest = dsse.sign(ASRUN_TYPE, to_bytes(asrun_doc(HONEST, 0)), [key(HONEST)], compact=True)
    assert intake.handle(f"{HONEST.prefix}/telemetry/asrun", honest).outcome == STORED
    rogue = Rogue(intake)
    out = tmp_path / "export"

    def run(tally: Tally) -> None:
        @settings(max_examples=budget(150))
        @given(st.sampled_from(["asrun", "heartbeat", "event"]), BODIES)
        # Found by this fuzz: a signed as-run whose stream is a list made coverage raise
        # TypeError (unhashable), taking down the whole province's KPI report.
        @example("asrun", {**asrun_doc(ROGUE, 0), "stream": ["25@25"]})
        def prop(kind: str, doc: Any) -> None:
            if not rogue.send(kind, doc):
                tally.refuse()
                return
            report = build_report(registry, *WINDOW, NOW)
            for text in (
                render_table(report.rows), render_csv(report.rows), render_details(report.rows),
                render_summary(report.communes), render_below(report.days),
                render_availability(report.available),
            ):  # fmt: skip
                assert isinstance(text, str)
            export(registry, WINDOW[0].astimezone(UTC), WINDOW[1].astimezone(UTC), out)
            # The honest station's complete as-run still counts, whatever the rogue sent.
            mine = [
                o
                for row in report.rows
                if row.slot == "morning"
                for o in row.stations
                if o.station == HONEST.path
            ]
            assert [o.status for o in mine] == ["complete"], mine
            tally.ok()

        prop()

    fuzz_and_record(
        "province readers of stored reports (coverage, availability, HTTT export, renderers)",
        "A compromised station (its own key) stores as-runs, heartbeats and events with "
        "arbitrary fields through the real collector intake; after each, the coverage report, "
        "its renderers and the HTTT export are built from the registry and the honest "
        "station's complete as-run must still count. accepted = reports stored and read.",
        run, tmp_path, FILE,
    )  # fmt: skip


# --- enrollment: the station's certificate request (province/enrollment.py) --------------------

# A request for a key on secp112r1 (OpenSSL signs it; cryptography cannot load the curve):
# enroll raised cryptography's UnsupportedAlgorithm from is_signature_valid, not ProvinceError.
SECP112R1_CSR = b"""-----BEGIN CERTIFICATE REQUEST-----
MIGLMFcCAQAwHDEaMBgGA1UEAwwRMjUvMDgyMzAvMDgyMzAtMDkwMjAQBgcqhkjO
PQIBBgUrgQQABgMeAAQ1kfETxIMuq700Sd9ijy7QBl2jSIJ9uQToIM7woAAwCgYI
KoZIzj0EAwIDJAAwIQIOCrHXUNYAQXtrS+I69d0CDwC4CGaxmk9qVqVdvcDg+Q==
-----END CERTIFICATE REQUEST-----
"""


def _csr_der(cn: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    private = ec.derive_private_key(7, ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    csr = (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(private, hashes.SHA256())
    )
    return csr.public_bytes(Encoding.DER)


def _pem(der: bytes) -> bytes:
    import base64
    import textwrap

    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return (
        f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n".encode()
    )


def test_fuzz_enrollment_certificate_requests(tmp_path: Path) -> None:
    from province.enrollment import ProvinceHome, enroll, init_ca
    from province.errors import ProvinceError

    home = ProvinceHome(tmp_path / "home")
    init_ca(home, "25")
    signing = dsse.public_raw(key(HONEST)).hex()
    base = _csr_der("25/08230/08230-05")

    def run(tally: Tally) -> None:
        @settings(max_examples=budget(100))
        @given(
            st.one_of(
                st.binary(max_size=200),
                mutated(base).map(_pem),
                st.sampled_from(["25/08230/08230-06", "26/08230/x", "25/08230/ack", "a" * 64])
                .map(_csr_der)
                .map(_pem),
            ),
            st.sampled_from([signing, signing.upper(), signing[:-2], "zz" * 32]),
        )
        @example(SECP112R1_CSR, signing)
        def prop(csr: bytes, signing_public: str) -> None:
            try:
                enroll(home, csr, signing_public, out=tmp_path / "cert.pem")
            except ProvinceError:
                tally.refuse()
            else:
                tally.ok()

        prop()

    fuzz_and_record(
        "enrollment.enroll (a station's certificate request)",
        "Arbitrary bytes, DER-mutated ECDSA requests re-wrapped in PEM, requests with odd CNs, "
        "signing keys of the wrong spelling, against a real province CA and registry: an "
        "Enrollment or ProvinceError.",
        run, tmp_path, FILE,
    )  # fmt: skip
