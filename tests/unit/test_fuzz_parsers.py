"""Fuzzing of every station-side parser of outside input (issue 13, part "fuzz").

For each parser: arbitrary inputs and mutations of a valid one. The property is the same
everywhere: the parser returns a value or raises *only* its documented error (with a section 8
code where PROTOCOL.md applies), never anything else; where a round trip exists (encode then
parse, format then parse) it gives back what went in. Hangs are caught by the example budget
itself: a parser that loops makes the run exceed CI's time, and every example is bounded small.

Each test counts what the parser did with every example in its own body and writes one
reliability Scenario (tests/harness/fuzz.py) before asserting. Budgets: tests/harness/fuzz.py
(``budget(n)``; ``LOA_RELIABILITY_LONG=1`` runs 10 times more, still derandomized).
"""

from __future__ import annotations

import base64
import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.core import dsse, strict
from agent.core.codes import Code, Rejected
from agent.core.release import Release, format_version, parse_version
from agent.core.reports import (
    AsRun,
    Health,
    asrun_body,
    event_body,
    heartbeat_body,
    parse_receipt,
    to_bytes,
)
from agent.core.schema import SchemaError
from agent.core.targets import StationId, is_within, may_sign
from agent.core.timefmt import format_rfc3339, parse_local_time, parse_rfc3339
from agent.core.trust_state import (
    Effect,
    RaiseReleaseFloor,
    RaiseTimeFloor,
    RecordRelease,
    RememberCommand,
    StorePlaylist,
    TrustState,
    apply,
)
from agent.core.verify import Accepted, ClockView, Context, Rejection, verify
from agent.schemas import load_schema_set
from tests.corpus.hostile import KNOWN_GOOD, NOW, beacon, emergency, p6, signed, stop
from tests.harness.fuzz import Tally, budget, fuzz_and_record
from tests.harness.mutate import JSON, mutated, mutated_doc
from tests.harness.releases import release_body
from tests.harness.trust import STATION, VECTORS, body_bytes, envelope, keyring_body

FILE = "tests/unit/test_fuzz_parsers.py"
SCHEMAS = load_schema_set()
SECTION8 = {str(code) for code in Code}
CTX = Context(StationId.parse(STATION), ClockView(NOW, synchronised=True), SCHEMAS)


def fuzz(n: int) -> settings:
    return settings(max_examples=budget(n))


# --- strict base64 and JSON (agent/core/strict.py) ---------------------------------------------

B64_TEXT = st.one_of(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=", max_size=24
    ),
    st.text(max_size=24),
    st.binary(max_size=18).map(lambda raw: base64.b64encode(raw).decode()),
    st.binary(max_size=18).map(lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("=")),
)


def test_fuzz_strict_b64decode(tmp_path: Path) -> None:
    def run(tally: Tally) -> None:
        @fuzz(400)
        @given(B64_TEXT, st.binary(max_size=40), st.booleans())
        def prop(text: str, raw: bytes, urlsafe: bool) -> None:
            try:
                decoded = strict.b64decode(text)
            except strict.StrictDecodeError:
                tally.refuse()
            else:
                tally.ok()
                # Canonical: the bytes have exactly one spelling per alphabet, and this is one.
                again = {
                    base64.b64encode(decoded).decode(),
                    base64.urlsafe_b64encode(decoded).decode(),
                }
                assert text in again | {s.rstrip("=") for s in again}
            # Round trip: whatever bytes, both alphabets' encodings decode back to them.
            spelled = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
            assert strict.b64decode(spelled) == raw

        prop()

    fuzz_and_record(
        "strict.b64decode (base64 of envelopes)",
        "Arbitrary text, base64-alphabet text and real encodings: decoded or StrictDecodeError; "
        "what decodes re-encodes to the same text; every encoding decodes back.",
        run, tmp_path, FILE,
    )  # fmt: skip


JSON_TEXTS = [
    b'{"a": [1, 2.5, "x", null, true, {"b": "\\u00e9"}]}',
    KNOWN_GOOD,
    body_bytes(p6()),
]


def test_fuzz_strict_loads(tmp_path: Path) -> None:
    def run(tally: Tally) -> None:
        @fuzz(500)
        @given(
            st.one_of(
                st.binary(max_size=200),
                st.sampled_from(JSON_TEXTS).flatmap(mutated),
                JSON.map(lambda v: json.dumps(v).encode()).flatmap(mutated),
            ),
            JSON,
        )
        @example(("[" * 500 + '"\\ud800"' + "]" * 500).encode(), None)  # the fixed RecursionError
        @example(('{"a":' * 100_000).encode(), None)
        def prop(data: bytes, value: Any) -> None:
            try:
                strict.loads(data)
            except strict.StrictDecodeError:
                tally.refuse()
            else:
                tally.ok()
            # Round trip: a JSON value within the strict rules loads back equal.
            assert strict.loads(json.dumps(value).encode()) == value

        prop()

    fuzz_and_record(
        "strict.loads (JSON of envelopes, bodies, reports)",
        "Arbitrary bytes and byte-mutated JSON documents: a value or StrictDecodeError; every "
        "JSON value dumps and loads back equal.",
        run, tmp_path, FILE,
    )  # fmt: skip


# --- DSSE envelopes (agent/core/dsse.py) -------------------------------------------------------

ENVELOPES = [
    KNOWN_GOOD,
    envelope("command", stop("h-fuzz-1"), "command"),
    envelope("time", beacon(), "maintenance"),
    dsse.sign(
        "x/y",
        b"",
        [dsse.as_signing_key(__import__("tests.harness.trust").harness.trust.test_key("root1"))],
    ),
]


def test_fuzz_dsse_parse_envelope(tmp_path: Path) -> None:
    def run(tally: Tally) -> None:
        @fuzz(400)
        @given(
            st.one_of(
                st.binary(max_size=300),
                st.sampled_from(ENVELOPES).flatmap(mutated),
                st.fixed_dictionaries(
                    {"payloadType": JSON, "payload": JSON, "signatures": JSON}
                ).map(lambda d: json.dumps(d).encode()),
            ),
            st.text(min_size=1, max_size=30),
            st.binary(max_size=200),
        )
        def prop(data: bytes, ptype: str, body: bytes) -> None:
            try:
                dsse.parse_envelope(data, 4096)
            except Rejected as exc:
                assert exc.code in (Code.TOO_LARGE, Code.BAD_ENVELOPE), exc
                tally.refuse(exc.code)
            else:
                tally.ok()
            # Round trip: what sign() writes parses back to the same type, body, signature.
            from tests.harness.trust import test_key

            key = test_key("playlist")
            parsed = dsse.parse_envelope(dsse.sign(ptype, body, [key]), 1 << 20)
            assert (parsed.payload_type, parsed.body) == (ptype, body)
            assert parsed.verifies_with(dsse.public_raw(key), parsed.signatures[0])

        prop()

    fuzz_and_record(
        "dsse.parse_envelope",
        "Arbitrary bytes, byte-mutated real envelopes, envelopes of arbitrary JSON fields: an "
        "Envelope or Rejected(too-large | bad-envelope); sign() output parses back and verifies.",
        run, tmp_path, FILE,
    )  # fmt: skip


# --- schemas (agent/core/schema.py) ------------------------------------------------------------

VALID_BODIES: dict[str, dict[str, Any]] = {
    "playlist": p6(),
    "command": emergency("h-fuzz-2"),
    "keyring": keyring_body(2),
    "time": beacon(),
    "release": release_body(),
}


def test_fuzz_schema_validate(tmp_path: Path) -> None:
    def run(tally: Tally) -> None:
        kinds = sorted(VALID_BODIES)

        @fuzz(400)
        @given(
            st.sampled_from([*kinds, "asrun", "heartbeat", "envelope", "nope"]),
            st.one_of(
                JSON,
                st.sampled_from(kinds).flatmap(lambda k: mutated_doc(VALID_BODIES[k])),
                st.sampled_from(kinds).map(lambda k: VALID_BODIES[k]),
            ),
        )
        def prop(kind: str, doc: Any) -> None:
            try:
                SCHEMAS.validate(kind, doc)
            except SchemaError:
                tally.refuse()
            else:
                tally.ok()

        prop()
        for kind, doc in VALID_BODIES.items():
            SCHEMAS.validate(kind, doc)  # the bases are valid: mutations start from accepted

    fuzz_and_record(
        "schema.SchemaSet.validate (message bodies)",
        "Arbitrary JSON values and one-field mutations of valid bodies of every kind: passes or "
        "SchemaError (the verifier's `schema` code).",
        run, tmp_path, FILE,
    )  # fmt: skip


# --- station ids and topics (agent/core/targets.py) --------------------------------------------

ID_TEXT = st.one_of(
    st.text(max_size=50),
    st.from_regex(r"\A[0-9]{2}/[0-9]{5}/[a-z0-9-]{1,33}\Z"),
    st.sampled_from(["25/08230/08230-01", "25/08230/playlist", "25/08230", "/", "25//x"]).flatmap(
        lambda s: st.just(s) | st.text(max_size=3).map(lambda t: s + t)
    ),
)


def test_fuzz_station_ids_and_scopes(tmp_path: Path) -> None:
    def run(tally: Tally) -> None:
        @fuzz(500)
        @given(ID_TEXT, st.lists(ID_TEXT, max_size=3), ID_TEXT, ID_TEXT)
        @example("25/08230/٠٨", [], "", "")  # Unicode digits are not ASCII digits
        def prop(path: str, scope: list[str], issuer: str, target: str) -> None:
            try:
                station = StationId.parse(path)
            except ValueError:
                tally.refuse()
            else:
                tally.ok()
                assert station.path == path  # one spelling: the parse gives back the text
                assert StationId.parse(station.path) == station
                assert all(is_within(path, scope) for scope in station.audience)
                assert path.isascii() and "/" not in station.name
            # Total functions: they answer, never raise, for any text.
            assert isinstance(may_sign(tuple(scope), issuer, target), bool)
            assert isinstance(is_within(target, issuer), bool)

        prop()

    fuzz_and_record(
        "targets.StationId.parse, may_sign, is_within (station ids, topics, scopes)",
        "Arbitrary and near-valid ids: a StationId that prints back the same text, or "
        "ValueError; scope checks answer a bool for any text.",
        run, tmp_path, FILE,
    )  # fmt: skip


# --- wire times (agent/core/timefmt.py) --------------------------------------------------------

ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=7)), timezone(-timedelta(hours=23, minutes=59)),
     timezone(timedelta(hours=23, minutes=59)), timezone(timedelta(minutes=-30))]
)  # fmt: skip
TIME_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["2026-11-23T06:00:00+07:00", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z",
                     "2026-02-29T00:00:00Z", "2026-11-23T06:00:60Z",
                     "2026-11-23T06:00:00.1234567Z"])
    .flatmap(lambda s: st.just(s) | st.text(max_size=2).map(lambda t: s[:-1] + t)),
    st.from_regex(
        r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,7})?"
        r"(Z|[+-][0-9]{2}:[0-9]{2})\Z"
    ),
)  # fmt: skip


def test_fuzz_rfc3339_and_local_times(tmp_path: Path) -> None:
    def run(tally: Tally) -> None:
        @fuzz(500)
        @given(
            TIME_TEXT,
            st.text(max_size=10) | st.from_regex(r"\A[0-9]{2}:[0-9]{2}(:[0-9]{2})?\Z"),
            st.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(8998, 12, 30),
                         timezones=ZONES),
        )  # fmt: skip
        @example("2026-11-23T06:00:00+24:00", "24:00", datetime(2026, 1, 1, tzinfo=UTC))
        def prop(text: str, local: str, moment: datetime) -> None:
            try:
                parsed = parse_rfc3339(text)
            except ValueError:
                tally.refuse()
            else:
                tally.ok()
                assert parsed.tzinfo is not None
                # The range promise: a grace period or a skew added never overflows.
                assert parsed + timedelta(days=400) > parsed - timedelta(days=400)
            with contextlib.suppress(ValueError):  # a time of day, or ValueError
                parse_local_time(local)
            # Round trip: format then parse is the same instant, to the second.
            whole = moment.replace(microsecond=0)
            assert parse_rfc3339(format_rfc3339(whole)) == whole

        prop()

    fuzz_and_record(
        "timefmt.parse_rfc3339, parse_local_time (wire and schedule times)",
        "Arbitrary and near-valid time texts: an aware datetime in 1970..8999 that survives "
        "+-400 days, or ValueError; format then parse is the identity.",
        run, tmp_path, FILE,
    )  # fmt: skip


# --- release manifests (agent/core/release.py) -------------------------------------------------


VERSION_TEXT = st.one_of(
    st.sampled_from(["0.1.0", "0.2.0", "1.0.0", "999999999.0.0", "0.02.0", "1.0", "1.0.0rc1"]),
    st.from_regex(r"\A[0-9]{1,10}\.[0-9]{1,3}\.[0-9]{1,3}\Z"),
)
_RB = release_body()
RELEASE_FIELDS = st.fixed_dictionaries(
    {
        **{k: st.just(v) for k, v in _RB.items()},
        "version": VERSION_TEXT,
        "min_version": VERSION_TEXT,
        "issued_at": st.just(_RB["issued_at"]) | TIME_TEXT,
        "expires": st.just(_RB["expires"]) | TIME_TEXT,
        "artifact": st.fixed_dictionaries(
            {
                "url": st.sampled_from(
                    [_RB["artifact"]["url"], "http://x/\x7f", "ftp://x/y", "https://a b/"]
                )
                | st.text(max_size=12).map(lambda t: "https://" + t),
                "sha256": st.just(_RB["artifact"]["sha256"]),
                "bytes": st.just(_RB["artifact"]["bytes"]) | st.integers(-1, 2**53),
            }
        ),
    }
)


def test_fuzz_release_manifests(tmp_path: Path) -> None:
    def run(tally: Tally) -> None:
        @fuzz(400)
        @given(
            st.text(max_size=20) | st.from_regex(r"\A\d{1,10}\.\d{1,3}\.\d{1,3}\Z"),
            mutated_doc(release_body()) | RELEASE_FIELDS,
            st.tuples(*[st.integers(0, 999_999_999)] * 3),
        )
        def prop(text: str, doc: Any, version: tuple[int, int, int]) -> None:
            try:
                parsed = parse_version(text)
            except ValueError:
                pass
            else:
                assert format_version(parsed) == text  # canonical: one text per version
            assert parse_version(format_version(version)) == version
            try:
                SCHEMAS.validate("release", doc)
            except SchemaError:
                tally.refuse("schema")
                return
            try:
                release = Release.from_body(doc)
            except ValueError:
                tally.refuse("schema")
            else:
                tally.ok()
                assert release.min_version <= release.version
                assert release.issued_at < release.expires

        prop()

    fuzz_and_record(
        "release.parse_version, Release.from_body (signed release manifests)",
        "One-field mutations of a valid release body that still pass its schema: a Release or "
        "ValueError; version texts parse to the one canonical spelling and back.",
        run, tmp_path, FILE,
    )  # fmt: skip


# --- receipts and report bodies (agent/core/reports.py) ----------------------------------------

STATION_ID = StationId.parse(STATION)
HEALTH = Health(1.0, "idle", {"25@25": 5}, 1, 80, "0.1.0", {}, {}, {}, {}, {})


def test_fuzz_receipts_and_report_bodies(tmp_path: Path) -> None:
    def run(tally: Tally) -> None:
        @fuzz(400)
        @given(
            st.one_of(
                st.binary(max_size=80),
                JSON.map(lambda v: json.dumps(v).encode()),
                st.dictionaries(st.sampled_from(["asrun", "event", "heartbeat", "x"]),
                                JSON | st.integers(), max_size=4).map(to_bytes).flatmap(mutated),
            ),
            st.integers(0, 2**53 - 1), st.integers(0, 2**31), st.text(max_size=600),
            st.sampled_from(["complete", "partial", "failed"]),
            st.floats(), st.datetimes(timezones=ZONES,
            min_value=datetime(1971, 1, 2), max_value=datetime(8998, 1, 1)),
            st.none() | st.floats(),
        )  # fmt: skip
        # Found by the long run: a reason over 200 characters (asrun.schema.json's maxLength).
        @example(b"", 0, 0, "0" * 201, "failed", 0.0, datetime(2000, 1, 1, tzinfo=UTC), None)
        # NaN or infinite numbers made the body invalid JSON, which the collector refuses.
        @example(b"", 0, 0, "", "complete", float("inf"), datetime(2000, 1, 1, tzinfo=UTC),
                 float("-inf"))  # fmt: skip
        def prop(
            payload: bytes, seq: int, session: int, text: str, outcome: str, played: float,
            moment: datetime, level: float | None,
        ) -> None:  # fmt: skip
            try:
                marks = parse_receipt(payload)
            except ValueError:
                tally.refuse()
            else:
                tally.ok()
                assert all(type(v) is int and v >= -1 for v in marks.values())
                assert set(marks) <= {"asrun", "event", "heartbeat"}
            # What the station builds always passes the schema the collector's coverage reads.
            run_ = AsRun("s", "25@25", 1, None, None, moment, moment, moment, played, outcome,
                         text or None, ("all",), 80, None, None, level, True)  # fmt: skip
            body = to_bytes(asrun_body(STATION_ID, seq, session, run_))
            SCHEMAS.validate("asrun", strict.loads(body))  # strict JSON: what the collector reads
            SCHEMAS.validate("heartbeat", heartbeat_body(STATION_ID, seq, session, moment, HEALTH))
            event = event_body(STATION_ID, seq, session, moment, "envelope", None, text)
            assert strict.loads(to_bytes(event)) == event and len(event["detail"]) <= 500

        prop()

    fuzz_and_record(
        "reports.parse_receipt and the report builders",
        "Arbitrary and mutated receipt payloads: watermarks of known kinds or ValueError; "
        "as-run and heartbeat bodies built from arbitrary values pass their schemas.",
        run, tmp_path, FILE,
    )  # fmt: skip


# --- the trust state (agent/core/trust_state.py) -----------------------------------------------

MOMENTS = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(8999, 1, 1), timezones=ZONES
)
VERSIONS = st.tuples(*[st.integers(0, 10**9)] * 3)
EFFECTS = st.one_of(
    st.builds(RaiseTimeFloor, MOMENTS),
    st.builds(RememberCommand, st.text(max_size=8), MOMENTS),
    st.builds(RecordRelease, VERSIONS, st.text(max_size=4)),
    st.builds(RaiseReleaseFloor, VERSIONS),
    st.builds(StorePlaylist, st.tuples(st.text(max_size=3), st.text(max_size=3)),
              st.integers(0, 2**53), st.text(max_size=4), st.binary(max_size=4),
              st.binary(max_size=4)),
)  # fmt: skip


def test_fuzz_trust_state_apply(tmp_path: Path) -> None:
    def run(tally: Tally) -> None:
        @fuzz(400)
        @given(st.lists(st.lists(EFFECTS, max_size=5).map(tuple), max_size=5))
        def prop(batches: list[tuple[Effect, ...]]) -> None:
            state = TrustState()
            for effects in batches:
                before = (state.time_floor, state.release_floor, dict(state.commands))
                after = apply(state, effects)
                tally.ok()
                # apply never changes the snapshot it was given, floors only rise.
                assert (state.time_floor, state.release_floor, dict(state.commands)) == before
                if state.time_floor is not None:
                    assert after.time_floor is not None and after.time_floor >= state.time_floor
                if state.release_floor is not None:
                    assert after.release_floor is not None
                    assert after.release_floor >= state.release_floor
                state = after

        prop()

    fuzz_and_record(
        "trust_state.apply (effects of accepted messages)",
        "Arbitrary sequences of effects: apply never raises, never changes its input snapshot, "
        "and the time and release floors never go down.",
        run, tmp_path, FILE,
    )  # fmt: skip


# --- the time beacon and the whole verifier (agent/core/verify.py) -----------------------------


def _install() -> TrustState:
    state = TrustState()
    for data in ((VECTORS / "keyring-v1.json").read_bytes(), KNOWN_GOOD):
        verdict = verify(state, data, CTX)
        assert isinstance(verdict, Accepted), verdict
        state = apply(state, verdict.effects)
    return state


STATE = _install()
BEACON_DOC = beacon(ts="2026-11-22T17:01:00+07:00")


def _judge(tally: Tally, data: bytes, ctx: Context = CTX) -> Accepted | Rejection:
    verdict = verify(STATE, data, ctx)
    if isinstance(verdict, Rejection):
        assert str(verdict.code) in SECTION8, verdict
        tally.refuse(verdict.code)
    else:
        tally.ok()
    return verdict


def test_fuzz_time_beacon(tmp_path: Path) -> None:
    expires = STATE.keyring.expires if STATE.keyring else NOW

    def run(tally: Tally) -> None:
        @fuzz(300)
        @given(
            st.one_of(
                TIME_TEXT,
                MOMENTS.map(format_rfc3339),
                st.integers(-(10**9), 10**9).map(
                    lambda s: format_rfc3339(NOW + timedelta(seconds=s))
                ),
            ),
            st.sampled_from(["25", "25", "25", "25", "26", "2", "25/08230", ""]),
            st.booleans(),
            st.booleans(),
        )
        def prop(ts: str, province: str, synchronised: bool, mutate_more: bool) -> None:
            doc = dict(BEACON_DOC, ts=ts, province=province)
            ctx = Context(CTX.station, ClockView(NOW, synchronised), SCHEMAS, topic=None)
            verdict = _judge(tally, signed("time", body_bytes(doc), "maintenance"), ctx)
            if isinstance(verdict, Accepted):
                # No beacon, however signed, lifts the floor beyond the keyring's life.
                for effect in verdict.effects:
                    assert isinstance(effect, RaiseTimeFloor)
                    assert effect.floor <= expires + CTX.limits.keyring_grace
                    if synchronised:
                        assert effect.floor <= NOW + CTX.limits.clock_skew

        prop()

    fuzz_and_record(
        "time beacon (verify of signed time bodies)",
        "Beacons signed by the maintenance key with arbitrary ts and province, clock trusted "
        "or not: a verdict with a section 8 code, never an exception; an accepted beacon never "
        "raises the floor past the keyring's life or (trusted clock) past now + skew.",
        run, tmp_path, FILE,
    )  # fmt: skip


VERIFY_BASES = [
    KNOWN_GOOD,
    envelope("command", stop("h-fuzz-1"), "command"),
    envelope("command", emergency("h-fuzz-2"), "emergency"),
    envelope("time", BEACON_DOC, "maintenance"),
    envelope("keyring", keyring_body(2), "root1", "root2"),
]


def test_fuzz_verify_envelopes(tmp_path: Path) -> None:
    def run(tally: Tally) -> None:
        @fuzz(400)
        @given(
            st.one_of(
                st.binary(max_size=300),
                st.sampled_from(VERIFY_BASES).flatmap(mutated),
                JSON.map(lambda v: json.dumps(v).encode()),
            )
        )
        def prop(data: bytes) -> None:
            verdict = _judge(tally, data)
            if isinstance(verdict, Accepted):
                # Only unsigned framing may have changed: the body is one of the signed ones.
                assert verdict.body in {dsse.parse_envelope(b, 1 << 22).body for b in VERIFY_BASES}

        prop()

    fuzz_and_record(
        "verify (the section 8 pipeline, unsigned mutations)",
        "Arbitrary bytes, arbitrary JSON and byte-mutated valid envelopes of every kind: a "
        "verdict with a section 8 code, never an exception; an acceptance carries a body that "
        "was signed (tests/unit/test_mutation_fuzz.py re-signs mutated bodies).",
        run, tmp_path, FILE,
    )  # fmt: skip
