"""Mutation fuzzing of the pure trust core (``agent.core.verify.verify``) with hypothesis.

Valid envelopes of every kind are mutated at the byte level (flip, insert, delete, replace
anywhere in the envelope's JSON or in the body under the old signatures) and at the field level
(one field of the envelope or of the body swapped for another type, a boundary value, removed,
or joined by a new one; the body then re-signed or not). Whatever comes out:

- the verifier never raises;
- a rejection carries one of the section 8 codes;
- an acceptance either verified exactly the original body bytes (only the unsigned framing
  changed), or the envelope was re-signed, and then an independent oracle written here (roles,
  thresholds, scopes, audience and time window of keyring-v1, as PROTOCOL.md states them) must
  agree that the signers could sign it, and the state after it must still judge every probe
  envelope without raising.

Runs are derandomized (the same examples every time) and use no example database; the budget
is ``budget(300)`` examples per test, LONG_FACTOR (10) times that with ``LOA_RELIABILITY_LONG=1``.
"""

from __future__ import annotations

import base64
import copy
import json
import operator
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.core.targets import StationId
from agent.core.trust_state import TrustState, apply
from agent.core.verify import Accepted, ClockView, Context, Rejection, Verdict, verify
from agent.schemas import load_schema_set
from tests.corpus.hostile import KNOWN_GOOD, NOW, beacon, emergency, p6, signed, stop
from tests.harness.fuzz import budget
from tests.harness.trust import (
    KEY_NAMES,
    PAYLOAD,
    STATION,
    VECTORS,
    body_bytes,
    envelope,
    keyid,
    keyring_body,
    playlist_body,
)

FUZZ = settings(
    max_examples=budget(300),  # 10x with LOA_RELIABILITY_LONG=1 (tests/harness/fuzz.py)
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CTX = Context(StationId.parse(STATION), ClockView(NOW, synchronised=True), load_schema_set())
SECTION8 = {
    "too-large", "bad-envelope", "wrong-payload-type", "bad-signature", "unknown-key",
    "threshold-not-met", "schema", "out-of-scope", "wrong-audience", "clock-untrusted",
    "expired", "not-yet-valid", "rollback", "version-conflict", "version-gap", "replay",
    "keyring-expired",
}  # fmt: skip


def install(*messages: bytes) -> TrustState:
    state = TrustState()
    for data in ((VECTORS / "keyring-v1.json").read_bytes(), *messages):
        verdict = verify(state, data, CTX)
        assert isinstance(verdict, Accepted), verdict
        state = apply(state, verdict.effects)
    return state


# keyring v1, province playlist v5 in force, one command id remembered.
STATE = install(KNOWN_GOOD, envelope("command", stop("h-fuzz-seen"), "command"))

# name -> (kind, body, signers): each accepted on STATE as it stands.
BASES: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "playlist": ("playlist", p6(), ("playlist",)),
    "commune-playlist": (
        "playlist",
        playlist_body(version=1, issuer="08230", target="25/08230"),
        ("commune-08230",),
    ),
    "stop": ("command", stop("h-fuzz-1"), ("command",)),
    "emergency": ("command", emergency("h-fuzz-2"), ("emergency",)),
    "resync": ("command", stop("h-fuzz-3", action="resync"), ("maintenance",)),
    "keyring": ("keyring", keyring_body(2), ("root1", "root2")),
    "beacon": ("time", beacon(ts="2026-11-22T17:01:00+07:00"), ("maintenance",)),
}
ENVELOPES = {name: envelope(kind, doc, *signers) for name, (kind, doc, signers) in BASES.items()}
BODIES = {name: body_bytes(doc) for name, (_, doc, _) in BASES.items()}
PROBES = [
    *ENVELOPES.values(),
    KNOWN_GOOD,
    envelope("playlist", playlist_body(version=4), "playlist"),
]

EDGE_TIMES = [
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-23:59",
    "9999-12-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+23:59",
    "1970-01-01T00:00:00Z",
    "2026-11-22T10:00:00Z",
    "2026-11-22T10:05:00Z",
    "2026-11-22T10:05:01Z",
    "2026-11-22T09:59:59.999999Z",
    "2024-02-29T00:00:00+07:00",
    "2036-01-01T00:00:00+07:00",
]
POOL: list[Any] = [
    None, True, False, 0, 1, -1, 2**53 - 1, 2**53, -(2**53), 10**30, 1.5, -0.0, 1e308,
    float("nan"), float("inf"), "", "x" * 10_240, "../../etc/passwd", "\u202e", "\x00", "\ud800",
    [], {}, [None], {"": None}, "25", "26", "08230", "08231", "25/08230", "25/08231",
    "25/08230/08230-01", "25/08230/08230-02", "emergency", "cancel", "stop", "resync",
    "live_start", "set_volume", "playlist", "command", "keyring", "time", "Asia", "localtime",
    "file:///etc/passwd", "javascript:alert(1)", "https://media.example.vn/x.mp3",
    *EDGE_TIMES, *PAYLOAD.values(), *(keyid(n) for n in KEY_NAMES),
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(POOL),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.lists(st.sampled_from(["all", "news", "mon", "25"]), max_size=3),
)


# --- an oracle for re-signed acceptances, from PROTOCOL.md sections 4 and 8 ---------------------

ROLE_MEMBERS = {
    "root": {"root1", "root2", "root3"},
    "playlist": {"playlist", "commune-08230"},
    "command": {"command", "commune-08230"},
    "emergency": {"emergency"},
    "maintenance": {"maintenance"},
}
THRESHOLD = {"root": 2}
ACTION_ROLE = {
    "emergency": "emergency", "cancel": "emergency", "live_start": "command",
    "live_stop": "command", "stop": "command", "set_volume": "command", "relay_test": "command",
    "resync": "maintenance",
}  # fmt: skip
SCOPE = {"commune-08230": "25/08230"}  # every other test key of keyring-v1 is scoped to 25
AUDIENCE = {"25", "25/08230", STATION}


def may_sign(signer: str, issuer: str, target: str) -> bool:
    scope = SCOPE.get(signer, "25")
    inside = target == scope or target.startswith(scope + "/")
    return inside and issuer == scope.split("/")[-1]


def oracle_allows(kind: str, doc: dict[str, Any], signers: tuple[str, ...]) -> str | None:
    """None if keyring-v1 lets ``signers`` sign ``doc`` for this station now, else why not."""
    role = {"playlist": "playlist", "keyring": "root", "time": "maintenance"}.get(kind)
    if kind == "command":
        role = ACTION_ROLE.get(doc.get("action", ""))
    if role is None:
        return f"no role for {kind}"
    members = set(signers) & ROLE_MEMBERS[role]
    if kind in ("keyring", "time"):
        issuer = target = doc["province"]
    else:
        issuer, target = doc["issuer"], doc["target"]
    in_scope = {s for s in members if may_sign(s, issuer, target)}
    if len(in_scope) < THRESHOLD.get(role, 1):
        return f"{sorted(members)} may not sign as {issuer} for {target} in role {role}"
    if target not in AUDIENCE:
        return f"target {target} is not this station's"
    if kind in ("playlist", "command"):
        if datetime.fromisoformat(doc["issued_at"]) > NOW + timedelta(minutes=5):
            return "issued in the future"
        if datetime.fromisoformat(doc["expires"]) <= NOW:
            return "expired"
    return None


# --- checking one mutated envelope ------------------------------------------------------------


def judge(data: bytes, base: str, signers: tuple[str, ...] | None) -> Verdict:
    """Verify ``data`` (mutated from ``base``; re-signed by ``signers`` if not None)."""
    verdict = verify(STATE, data, CTX)
    event(f"{base}: {verdict.code if isinstance(verdict, Rejection) else 'accepted'}")
    if isinstance(verdict, Rejection):
        assert str(verdict.code) in SECTION8, verdict
        return verdict
    assert isinstance(verdict, Accepted)
    if signers is None:
        assert verdict.body == BODIES[base], "accepted a body nobody signed"
        return verdict
    doc = json.loads(verdict.body)
    why_not = oracle_allows(verdict.kind, doc, signers)
    assert why_not is None, f"accepted although {why_not}"
    after = apply(STATE, verdict.effects)
    for probe in PROBES:
        again = verify(after, probe, CTX)  # must not raise on the state it left
        assert isinstance(again, Accepted) or str(again.code) in SECTION8
    return verdict


# --- byte level -------------------------------------------------------------------------------


@st.composite
def byte_mutations(draw: st.DrawFn) -> tuple[str, bytes, str]:
    base = draw(st.sampled_from(sorted(BASES)))
    where = draw(st.sampled_from(["envelope", "body"]))
    data = bytearray(ENVELOPES[base] if where == "envelope" else BODIES[base])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "replace"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif data:
            data[at] = draw(st.integers(0, 255))
    if where == "body":
        doc = json.loads(ENVELOPES[base])
        doc["payload"] = base64.b64encode(bytes(data)).decode()
        return base, json.dumps(doc).encode(), where
    return base, bytes(data), where


def test_every_base_envelope_is_accepted() -> None:
    for name, data in ENVELOPES.items():
        verdict = verify(STATE, data, CTX)
        assert isinstance(verdict, Accepted), (name, verdict)


@FUZZ
@given(byte_mutations())
def test_byte_mutations_are_rejected_or_harmless(case: tuple[str, bytes, str]) -> None:
    base, data, _ = case
    judge(data, base, None)


# --- field level ------------------------------------------------------------------------------

Path = tuple[str | int, ...]


def paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every place in a JSON document: object members and array items, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*prefix, index)
            yield from paths(item, (*prefix, index))


def parent_of(doc: Any, path: Path) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


@st.composite
def body_mutation(draw: st.DrawFn, doc: dict[str, Any]) -> dict[str, Any]:
    mutated = copy.deepcopy(doc)
    places = list(paths(mutated))
    # Top-level fields first half the time: they decide kind, issuer, target, times, versions.
    if draw(st.booleans()):
        places = [p for p in places if len(p) == 1]
    path = draw(st.sampled_from(places))
    parent = parent_of(mutated, path)
    op = draw(st.sampled_from(["replace", "remove", "add"]))
    if op == "replace":
        parent[path[-1]] = draw(VALUES)
    elif op == "remove":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.sampled_from(["extra", "id", "action", "issuer", "x" * 65]))] = draw(VALUES)
    else:
        parent.insert(int(path[-1]), draw(VALUES))
    return mutated


@st.composite
def signer_sets(draw: st.DrawFn, legit: tuple[str, ...]) -> tuple[str, ...]:
    if draw(st.booleans()):
        return legit
    names = st.sampled_from([*KEY_NAMES[:9]])
    return tuple(draw(st.lists(names, min_size=1, max_size=3)))


@st.composite
def field_mutations(draw: st.DrawFn) -> tuple[str, bytes, tuple[str, ...] | None]:
    base = draw(st.sampled_from(sorted(BASES)))
    kind, doc, legit = BASES[base]
    if draw(st.booleans()):
        body = json.dumps(draw(body_mutation(doc))).encode()
        if draw(st.booleans()):
            signers = draw(signer_sets(legit))
            return base, signed(kind, body, *signers), signers
        env = json.loads(ENVELOPES[base])
        env["payload"] = base64.b64encode(body).decode()
        return base, json.dumps(env).encode(), None
    env = json.loads(ENVELOPES[base])
    field = draw(st.sampled_from(["payloadType", "payload", "signatures", "keyid", "sig", "new"]))
    sigs = env["signatures"]
    if field == "payload":
        raw = BODIES[base]
        env["payload"] = draw(
            st.sampled_from(
                [
                    base64.urlsafe_b64encode(raw).decode(),
                    base64.urlsafe_b64encode(raw).decode().rstrip("="),
                    base64.b64encode(raw).decode().rstrip("="),
                    base64.b64encode(raw + b" ").decode(),
                ]
            )
            | VALUES
        )
    elif field == "signatures":
        env["signatures"] = draw(
            st.sampled_from([[], sigs * 2, sigs[::-1], sigs[:1], sigs * 17, [sigs[0]] * 16])
            | VALUES
        )
    elif field in ("keyid", "sig"):
        index = draw(st.integers(0, len(sigs) - 1))
        if draw(st.booleans()):
            del sigs[index][field]
        else:
            sigs[index][field] = draw(VALUES)
    elif field == "new":
        env[draw(st.sampled_from(["extra", "payloadtype", "Payload"]))] = draw(VALUES)
    else:
        env["payloadType"] = draw(VALUES)
    return base, json.dumps(env).encode(), None


@FUZZ
@given(field_mutations())
def test_field_mutations_are_rejected_or_legitimately_signed(
    case: tuple[str, bytes, tuple[str, ...] | None],
) -> None:
    base, data, signers = case
    judge(data, base, signers)


# --- times at the edges, legitimately signed --------------------------------------------------

TIME_FIELDS = {
    "playlist": ("issued_at", "valid_from", "expires"),
    "stop": ("issued_at", "expires"),
    "emergency": ("issued_at", "expires"),
    "keyring": ("expires",),
    "beacon": ("ts",),
}
ZONES = [UTC, timezone(timedelta(hours=7)), timezone(timedelta(hours=23, minutes=59)),
         timezone(-timedelta(hours=23, minutes=59))]  # fmt: skip
TIMES = st.one_of(
    st.sampled_from(EDGE_TIMES),
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(ZONES),
    ).map(lambda moment: moment.isoformat().replace("+00:00", "Z")),
)


@FUZZ
@given(st.sampled_from(sorted(TIME_FIELDS)), st.data())
def test_legitimate_times_at_the_edges_never_break_the_core(base: str, data: st.DataObject) -> None:
    kind, doc, signers = BASES[base]
    changed = dict(doc)
    for name in TIME_FIELDS[base]:
        if data.draw(st.booleans(), label=f"change {name}"):
            changed[name] = data.draw(TIMES, label=name)
    judge(signed(kind, body_bytes(changed), *signers), base, signers)


# --- any change to a signed body --------------------------------------------------------------


@FUZZ
@given(st.sampled_from(sorted(BASES)), st.data())
def test_any_change_to_a_signed_body_is_bad_signature(base: str, data: st.DataObject) -> None:
    """Section 8 step 4: the role key signed other bytes, so its signature failed. For commands
    this holds when the change makes the action unreadable too: the key that signed belongs to
    a command-capable role, whichever role the lost action would have named."""
    body = bytearray(BODIES[base])
    for _ in range(data.draw(st.integers(1, 4), label="changes")):
        at = data.draw(st.integers(0, len(body) - 1), label="at")
        body[at] = data.draw(st.integers(0, 255).filter(partial(operator.ne, body[at])))
    env = json.loads(ENVELOPES[base])
    env["payload"] = base64.b64encode(bytes(body)).decode()
    verdict = verify(STATE, json.dumps(env).encode(), CTX)
    assert isinstance(verdict, Rejection) and verdict.code == "bad-signature", verdict
