"""Fuzzing of the parsers of files and of what stations send (issue 13, part "fuzz"): the
station's config (station.toml), key files, CAP inside commands, and the province collector's
intake, which reads what a possibly compromised station publishes.

The property, per parser: a value or *only* the documented error (ConfigError, KeyFileError,
CapError; the collector never raises and records every refusal with a reason), never anything
else. The collector's is checked from the outside: after the run, every as-run the registry
stored must be a body this test signed with that station's key (``accepted_unsigned`` = 0), and
every report stored must name the station and kind of its topic.

Counts go to one reliability Scenario per parser (tests/harness/fuzz.py) before the assert.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.config import ConfigError, load_config, read_config, unknown_keys
from agent.core import dsse
from agent.core.cap import CapError, decide
from agent.core.reports import AsRun, signed_asrun, to_bytes
from agent.core.targets import StationId
from agent.keyfiles import KeyFileError, load_private, load_public_hex
from province.collector import (
    CONFLICT,
    DUPLICATE,
    IGNORED,
    REFUSED,
    STATE,
    STORED,
    ReportIntake,
)
from province.registry import Registry, open_registry
from tests.harness.fuzz import Tally, budget, fuzz_and_record
from tests.harness.mutate import JSON, mutated, mutated_text
from tests.unit.test_cap import (
    NEAR_VALID,
    OASIS_EARTHQUAKE_UPDATE,
    OASIS_THUNDERSTORM,
    TIMES,
    command,
)

FILE = "tests/unit/test_fuzz_inputs.py"


def fuzz(n: int) -> settings:
    return settings(max_examples=budget(n))


# --- station.toml (agent/config.py) ------------------------------------------------------------

FULL_TOML = """
[station]
province = "25"
commune = "08230"
name = "08230-01"

[paths]
state = "var/state"
outbox = "out.db"

[trust]
clock = "system"
keyring_grace_days = 0
clock_skew_s = 3600

[broker]
urls = ["mqtts://broker-a.example:8883"]
keepalive_s = 60
time_beacons = "always"

[gpio]
amp_pin = 17
[gpio.zones]
market = 0
school = 53

[audio]
device = "hw:1,0"
warmup_s = 1.5
chime_categories = ["announcement", "news"]

[inputs]
mains = 5

[live]
allowed_hosts = ["stream.example.vn:443"]

[emergency]
repeat = 2
"""


def test_fuzz_station_toml(tmp_path: Path) -> None:
    load_config(FULL_TOML, {}, tmp_path)  # the base is valid: mutations start from accepted

    def run(tally: Tally) -> None:
        @fuzz(300)
        @given(
            st.one_of(st.text(max_size=200), mutated_text(FULL_TOML, 6)),
            st.sampled_from([{}, {"LOA_HAL": "sim"}, {"LOA_CLOCK_TRUST": "bogus"}]),
        )
        @example("a = " + "[" * 600 + "]" * 600, {})  # tomllib's RecursionError, fixed
        @example("a = " + "{b = " * 600 + "1" + "}" * 600, {})
        def prop(text: str, env: dict[str, str]) -> None:
            try:
                load_config(text, env, tmp_path)
            except ConfigError:
                tally.refuse()
            else:
                tally.ok()
            assert isinstance(unknown_keys(text), list)  # never raises either

        prop()

    fuzz_and_record(
        "config.load_config (station.toml)",
        "Arbitrary text and character-mutated full configs, with and without environment "
        "overrides: a Config or ConfigError; unknown_keys answers a list for any text.",
        run, tmp_path, FILE,
    )  # fmt: skip


def test_fuzz_station_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "station.toml"

    def run(tally: Tally) -> None:
        @fuzz(150)
        @given(st.one_of(st.binary(max_size=100), mutated(FULL_TOML.encode("utf-8"))))
        @example(b"\xff\xfe[station]")  # not UTF-8: was a UnicodeDecodeError, fixed
        def prop(data: bytes) -> None:
            path.write_bytes(data)
            try:
                read_config(path, {})
            except ConfigError:
                tally.refuse()
            else:
                tally.ok()

        prop()

    fuzz_and_record(
        "config.read_config (the station.toml file's bytes)",
        "Arbitrary and byte-mutated config files on disk: a Config or ConfigError.",
        run, tmp_path, FILE,
    )  # fmt: skip


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "station.toml"
    path.write_bytes(b'[station]\nprovince = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_config(path, {})


@pytest.mark.parametrize("nested", ["[" * 600 + "]" * 600, "{b = " * 600 + "1" + "}" * 600])
def test_toml_nested_too_deeply_is_a_config_error(nested: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config("a = " + nested, {}, tmp_path)
    assert unknown_keys("a = " + nested) == []


# --- key files (agent/keyfiles.py) -------------------------------------------------------------

_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PRIVATE_PEM = _KEY.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
PUBLIC_HEX = _KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex().encode()
# An EC key on secp112r1, which OpenSSL 3 cannot load: load_private raised UnsupportedAlgorithm
# (not a KeyFileError) until the fuzzing of issue 13 found it.
SECP112R1_PEM = b"""-----BEGIN PRIVATE KEY-----
ME4CAQAwEAYHKoZIzj0CAQYFK4EEAAYENzA1AgEBBA7QTzRbuIq80y6k3WoUkqEg
Ax4ABK4w6L7RjntflJ3wMbjsjH0DdBTLujnahw+ApZc=
-----END PRIVATE KEY-----
"""
OTHER_PEMS = [
    SECP112R1_PEM,
    _KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
    b"-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
    b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA==\n-----END EC PRIVATE KEY-----\n",
]


def test_fuzz_key_files(tmp_path: Path) -> None:
    path = tmp_path / "key"

    def run(tally: Tally) -> None:
        @fuzz(300)
        @given(
            st.one_of(
                st.binary(max_size=120),
                mutated(PRIVATE_PEM),
                mutated(PUBLIC_HEX),
                st.sampled_from([PRIVATE_PEM, PUBLIC_HEX, *OTHER_PEMS]),
            )
        )
        @example(SECP112R1_PEM)
        def prop(data: bytes) -> None:
            path.write_bytes(data)
            for load in (load_private, load_public_hex):
                try:
                    load(path)
                except KeyFileError:
                    tally.refuse()
                else:
                    tally.ok()

        prop()
        path.write_bytes(PRIVATE_PEM)
        assert load_public_hex(path).encode() == PUBLIC_HEX  # a private key gives its public half

    fuzz_and_record(
        "keyfiles.load_private, load_public_hex (key files)",
        "Arbitrary bytes, byte-mutated PKCS#8 PEM and public hex, other PEM kinds: a key or "
        "KeyFileError.",
        run, tmp_path, FILE,
    )  # fmt: skip


def test_a_key_on_a_curve_openssl_cannot_load_is_a_key_file_error(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(SECP112R1_PEM)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_private(path)
    with pytest.raises(KeyFileError):
        load_public_hex(path)


# --- CAP inside commands (agent/core/cap.py) ---------------------------------------------------


def test_fuzz_cap(tmp_path: Path) -> None:
    def run(tally: Tally) -> None:
        @fuzz(300)
        @given(
            st.one_of(
                NEAR_VALID.map(lambda cap: command(cap=cap)),
                JSON.map(lambda cap: command(cap=cap)),
                st.sampled_from([OASIS_THUNDERSTORM, OASIS_EARTHQUAKE_UPDATE])
                .flatmap(lambda xml: mutated(xml.encode("utf-8")))
                .map(lambda raw: command(cap_xml=raw.decode("utf-8", "replace"))),
                st.text(max_size=200).map(lambda text: command(cap_xml=text)),
            ),
            TIMES,
            st.booleans(),
        )
        def prop(doc: dict[str, Any], expires: datetime, sound_tests: bool) -> None:
            try:
                decision = decide(doc, expires, sound_tests=sound_tests)
            except CapError:
                tally.refuse("schema")
            else:
                tally.ok()
                assert decision.expires <= expires

        prop()

    fuzz_and_record(
        "cap.decide (CAP in commands, structured and XML)",
        "Near-valid structured CAP, arbitrary JSON, byte-mutated OASIS XML examples, arbitrary "
        "text as XML: a decision not outliving the command, or CapError (code schema).",
        run, tmp_path, FILE,
    )  # fmt: skip


# --- the province collector (province/collector.py) --------------------------------------------

ONE = StationId.parse("25/08230/08230-01")
TWO = StationId.parse("25/08230/08230-02")  # enrolled; the fuzz impersonates it from ONE's key
NOW = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
KINDS = ("heartbeat", "asrun", "event")


def key(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


def asrun(seq: int, station: StationId, signer: Ed25519PrivateKey) -> bytes:
    record = AsRun(
        slot="morning", stream="25@25", playlist_version=1, media="news", sha256="ab" * 32,
        scheduled_at=datetime(2026, 11, 22, 23, 0, tzinfo=UTC), started_at=None, ended_at=None,
        played_s=0.0, outcome="missed", reason=None, zones=("all",), volume=80, relay_ok=None,
        amp_power_ok=None, output_level_db=None, clock_trusted=True,
    )  # fmt: skip
    return signed_asrun(station, seq, 1, record, signer)


def report(kind: str, seq: Any, station: str, **extra: Any) -> bytes:
    body = {"kind": kind, "schema": 1, "station": station, "seq": seq, "session": 1,
            "ts": "2026-11-23T08:00:00+07:00", **extra}  # fmt: skip
    return to_bytes(body)


SEQS = st.one_of(st.integers(0, 50), st.integers(-(2**53), 2**53), JSON)
TOPICS = st.one_of(
    st.sampled_from([f"{s.prefix}/telemetry/{k}" for s in (ONE, TWO) for k in KINDS]),
    st.sampled_from([f"{ONE.prefix}/state", "loa/v1/26/08230/x/state", "loa/v1/25/+/#/state"]),
    st.text(max_size=40),
    st.sampled_from([f"{ONE.prefix}/telemetry/heartbeat"]).flatmap(lambda t: mutated_text(t, 2)),
)


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    station = draw(st.sampled_from([ONE, TWO]))
    seq = draw(SEQS)
    choice = draw(st.sampled_from(["asrun", "report", "state", "lost", "raw", "mutated"]))
    if choice == "asrun":
        signer = key(draw(st.sampled_from([1, 2, 3])))
        return asrun(draw(st.integers(0, 50)), station, signer)
    if choice == "report":
        return report(draw(st.sampled_from([*KINDS, "x"])), seq, station.path)
    if choice == "state":
        return to_bytes({"online": draw(JSON), "station": station.path})
    if choice == "lost":
        return report("event", seq, station.path, code="reports-dropped",
                      report_kind=draw(st.sampled_from(KINDS)), first_seq=draw(SEQS),
                      last_seq=draw(SEQS))  # fmt: skip
    if choice == "raw":
        return draw(st.binary(max_size=100))
    base = draw(st.sampled_from([asrun(0, ONE, key(1)), report("heartbeat", 0, ONE.path)]))
    return draw(mutated(base))


def _topic_of(payload: bytes, fallback: str) -> str:
    """The topic a station would publish ``payload`` on, or ``fallback``."""
    try:
        envelope = dsse.parse_envelope(payload, 1 << 20)
        body = json.loads(envelope.body)
    except Exception:
        try:
            body = json.loads(payload)
        except Exception:
            return fallback
    if not isinstance(body, dict) or not isinstance(body.get("station"), str):
        return fallback
    if "online" in body:
        return f"loa/v1/{body['station']}/state"
    return f"loa/v1/{body['station']}/telemetry/{body.get('kind')}"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with open_registry(str(tmp_path / "registry.db")) as reg:
        reg.add_station(ONE, b"cert-1", dsse.public_raw(key(1)).hex())
        reg.add_station(TWO, b"cert-2", dsse.public_raw(key(2)).hex())
        yield reg


def test_fuzz_collector_intake(registry: Registry, tmp_path: Path) -> None:
    intake = ReportIntake(registry, "25", lambda: NOW)
    # The as-run bodies a station's own key really signed: nothing else may be stored.
    honest: set[tuple[str, bytes]] = set()
    outcomes: dict[str, int] = {}

    def run(tally: Tally) -> None:
        @fuzz(300)
        @given(TOPICS, payloads(), st.integers(0, 3))
        def prop(topic: str, payload: bytes, honest_topic: int) -> None:
            if honest_topic:  # three in four on the topic the payload names (if it names one)
                topic = _topic_of(payload, topic)
            for station, n in ((ONE, 1), (TWO, 2)):
                try:
                    envelope = dsse.parse_envelope(payload, 1 << 20)
                except Exception:
                    break
                if any(envelope.verifies_with(dsse.public_raw(key(n)), s)
                       for s in envelope.signatures):  # fmt: skip
                    honest.add((station.path, envelope.body))
            handled = intake.handle(topic, payload)  # must never raise
            outcomes[handled.outcome] = outcomes.get(handled.outcome, 0) + 1
            assert handled.outcome in (STORED, DUPLICATE, CONFLICT, STATE, IGNORED, REFUSED)
            if handled.outcome == REFUSED:
                assert handled.reason
                tally.refuse(handled.reason.partition(":")[0])
            else:
                tally.ok()

        prop()

    failure: AssertionError | None = None
    unsigned = 0
    misfiled = 0
    try:
        fuzz_and_record(
            "collector.ReportIntake.handle (what stations send)",
            "Arbitrary and mutated topics and payloads: reports and as-runs of two enrolled "
            "stations, as-runs signed by the wrong or an unknown key, bad seqs, reports-dropped "
            "ranges, raw bytes. The intake never raises and refuses with a reason; afterwards "
            "the registry is read: every stored as-run is a body signed by its station's key.",
            run, tmp_path, FILE,
        )  # fmt: skip
    except AssertionError as exc:
        failure = exc
    for kind in KINDS:
        for stored in registry.reports(kind):
            doc = json.loads(stored.body)
            misfiled += doc.get("station") != stored.station or doc.get("kind") != kind
            if kind == "asrun":
                unsigned += (stored.station, stored.body) not in honest
    from tests.harness.reliability import Scenario, record

    counts = {"accepted_unsigned": unsigned, "misfiled": misfiled, "outcomes": outcomes}
    scenario = Scenario(
        part="fuzz",
        name="collector: stored reports after the intake fuzz",
        how="After the collector intake fuzz, every stored report is read back from the "
        "registry: an as-run not signed by its station's key, or a report filed under a station "
        "or kind its body does not name, counts against the bar.",
        counts=counts,
        bar={"accepted_unsigned": 0, "misfiled": 0},
    )
    record(scenario, f"LOA_RELIABILITY_LONG=1 .venv/bin/pytest -q {FILE}", 0.0, tmp_path)
    if failure is not None:
        raise failure
    assert (unsigned, misfiled) == (0, 0)
    assert outcomes.get(STORED, 0) > 0 and outcomes.get(REFUSED, 0) > 0  # both paths ran
