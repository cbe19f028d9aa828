"""Keyring rotation as TUF root rotation (PROTOCOL.md section 4), as a table of cases in the
style of python-tuf's ``test_updater_key_rotations.py``, plus the effects on other roles.

Keyring N+1 must be signed by a threshold of N's root keys *and* of its own root keys, with
version exactly N+1. These tests run the pure core (no disk): the station tests elsewhere prove
that the store applies the same effects.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from agent.core.codes import Code
from agent.core.targets import StationId
from agent.core.trust_state import TrustState, apply
from agent.core.verify import Accepted, ClockView, Context, Rejection, Verdict, verify
from agent.schemas import load_schema_set
from tests.harness.trust import (
    command_body,
    emergency_body,
    envelope,
    keyid,
    keyring_body,
    playlist_body,
    public_hex,
)

CTX = Context(
    StationId.parse("25/08230/08230-01"),
    ClockView(datetime(2026, 11, 22, 10, 0, tzinfo=UTC), synchronised=True),
    load_schema_set(),
)


def install(*messages: bytes) -> TrustState:
    state = TrustState()
    for data in (envelope("keyring", keyring_body(1), "root1", "root2"), *messages):
        verdict = verify(state, data, CTX)
        assert isinstance(verdict, Accepted), verdict
        state = apply(state, verdict.effects)
    return state


def with_roles(version: int, **roles: tuple[list[str], int]) -> dict[str, Any]:
    """Keyring body at ``version`` whose named roles use the named test keys and thresholds."""
    doc = keyring_body(version)
    for role, (names, threshold) in roles.items():
        for name in names:
            doc["keys"].setdefault(
                keyid(name), {"scheme": "ed25519", "public": public_hex(name), "scope": ["25"]}
            )
        doc["roles"][role] = {"keyids": [keyid(n) for n in names], "threshold": threshold}
    used = {k for role in doc["roles"].values() for k in role["keyids"]}
    doc["keys"] = {k: v for k, v in doc["keys"].items() if k in used}
    return doc


def code_of(verdict: Verdict) -> str:
    return "accepted" if isinstance(verdict, Accepted) else str(verdict.code)


@dataclass(frozen=True)
class Case:
    roots: list[str]
    threshold: int
    signers: list[str]
    expect: str
    version: int = 2


ROOTS = ["root1", "root2", "root3"]
CASES = {
    "same roots, 2 of 3": Case(ROOTS, 2, ["root1", "root2"], "accepted"),
    "same roots, other pair": Case(ROOTS, 2, ["root2", "root3"], "accepted"),
    "threshold up to 3, all sign": Case(ROOTS, 3, ROOTS, "accepted"),
    "threshold up to 3, two sign": Case(ROOTS, 3, ["root1", "root2"], "threshold-not-met"),
    "threshold down to 1, one signs": Case(ROOTS, 1, ["root1"], "threshold-not-met"),
    "threshold down to 1, two sign": Case(ROOTS, 1, ["root1", "root2"], "accepted"),
    "one key signs twice": Case(ROOTS, 2, ["root1", "root1"], "threshold-not-met"),
    "replace root3, old pair signs": Case(
        ["root1", "root2", "new1"], 2, ["root1", "root2"], "accepted"
    ),
    "replace root3, new key and one old": Case(
        ["root1", "root2", "new1"], 2, ["root1", "new1"], "threshold-not-met"
    ),
    "all new roots, only new sign": Case(
        ["new1", "new2", "new3"], 2, ["new1", "new2"], "unknown-key"
    ),
    "all new roots, only old sign": Case(
        ["new1", "new2", "new3"], 2, ["root1", "root2"], "unknown-key"
    ),
    "all new roots, old and new sign": Case(
        ["new1", "new2", "new3"], 2, ["root1", "root2", "new1", "new2"], "accepted"
    ),
    "all new roots, old pair and one new": Case(
        ["new1", "new2", "new3"], 2, ["root1", "root2", "new1"], "threshold-not-met"
    ),
    "skipped version": Case(ROOTS, 2, ["root1", "root2"], "version-gap", version=3),
    "same version, other content": Case(ROOTS, 1, ["root1", "root2"], "version-conflict", 1),
    "lower version": Case(ROOTS, 2, ["root1", "root2"], "rollback", version=0),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_root_rotation(case: Case) -> None:
    state = install()
    doc = with_roles(case.version, root=(case.roots, case.threshold))
    if case.version == 0:  # the schema forbids 0: put v2 in place, then offer v1 again
        state = install(envelope("keyring", with_roles(2, root=(ROOTS, 2)), "root1", "root2"))
        doc = with_roles(1, root=(ROOTS, 2))
    verdict = verify(state, envelope("keyring", doc, *case.signers), CTX)
    assert code_of(verdict) == case.expect, getattr(verdict, "detail", "")
    if isinstance(verdict, Accepted):
        assert apply(state, verdict.effects).keyring is verdict.message


def test_bad_signature_of_an_old_root_is_reported() -> None:
    state = install()
    good = json.loads(envelope("keyring", with_roles(2, root=(ROOTS, 2)), "root1"))
    forged = json.loads(envelope("keyring", with_roles(2, root=(ROOTS, 1)), "root2"))
    good["signatures"] += forged["signatures"]  # root2's signature is over other bytes
    verdict = verify(state, json.dumps(good).encode(), CTX)
    assert code_of(verdict) == "bad-signature"


def test_walking_several_rotations_in_order() -> None:
    state = install()
    chain = [
        envelope("keyring", with_roles(2, root=(["root1", "root2", "new1"], 2)), "root1", "root2"),
        envelope("keyring", with_roles(3, root=(["root2", "new1", "new2"], 2)), "root2", "new1"),
        envelope("keyring", with_roles(4, root=(["new1", "new2", "new3"], 2)), "new1", "new2"),
    ]
    # Out of order, v4 means nothing yet: its signers are strangers to v1.
    assert code_of(verify(state, chain[2], CTX)) == "unknown-key"
    for data in chain:
        verdict = verify(state, data, CTX)
        assert isinstance(verdict, Accepted), verdict
        state = apply(state, verdict.effects)
    assert state.keyring is not None and state.keyring.version == 4
    # The original roots now mean nothing.
    v5 = envelope("keyring", with_roles(5, root=(ROOTS, 2)), "root1", "root2", "root3")
    assert code_of(verify(state, v5, CTX)) == "unknown-key"


def test_rotating_the_playlist_key_resets_the_issuers_floor() -> None:
    state = install(envelope("playlist", playlist_body(version=9), "playlist"))
    rotated = with_roles(2, playlist=(["new1", "commune-08230"], 1))
    rotated["keys"][keyid("commune-08230")]["scope"] = ["25/08230"]
    verdict = verify(state, envelope("keyring", rotated, "root1", "root2"), CTX)
    assert isinstance(verdict, Accepted), verdict
    state = apply(state, verdict.effects)
    assert state.streams[("25", "25")].floor_reset
    # The retired key is dead; the new key may restart the stream from a lower version…
    old_key = envelope("playlist", playlist_body(version=10), "playlist")
    assert code_of(verify(state, old_key, CTX)) == "unknown-key"
    restart = verify(state, envelope("playlist", playlist_body(version=1), "new1"), CTX)
    assert isinstance(restart, Accepted)
    state = apply(state, restart.effects)
    # …once: after that the floor holds again.
    assert not state.streams[("25", "25")].floor_reset
    again = envelope(
        "playlist", playlist_body(version=1, expires="2035-01-01T00:00:00+07:00"), "new1"
    )
    assert code_of(verify(state, again, CTX)) == "version-conflict"


def test_adding_a_playlist_key_keeps_the_floor() -> None:
    state = install(envelope("playlist", playlist_body(version=9), "playlist"))
    grown = with_roles(2, playlist=(["playlist", "commune-08230", "new1"], 1))
    grown["keys"][keyid("commune-08230")]["scope"] = ["25/08230"]
    verdict = verify(state, envelope("keyring", grown, "root1", "root2"), CTX)
    assert isinstance(verdict, Accepted)
    state = apply(state, verdict.effects)
    lower = envelope("playlist", playlist_body(version=3), "new1")
    assert code_of(verify(state, lower, CTX)) == "rollback"


def test_rotating_the_emergency_key() -> None:
    state = install()
    rotated = with_roles(2, emergency=(["new2"], 1))
    verdict = verify(state, envelope("keyring", rotated, "root1", "root2"), CTX)
    assert isinstance(verdict, Accepted)
    state = apply(state, verdict.effects)
    old = verify(state, envelope("command", emergency_body(id="e1"), "emergency"), CTX)
    assert code_of(old) == "unknown-key"
    new = verify(state, envelope("command", emergency_body(id="e2"), "new2"), CTX)
    assert isinstance(new, Accepted)
    stop = verify(state, envelope("command", command_body(id="s1"), "new2"), CTX)
    assert code_of(stop) == "threshold-not-met"  # the emergency key is not a command key


def test_a_keyring_for_another_province_is_not_for_us() -> None:
    state = install()
    doc = with_roles(2, root=(ROOTS, 2))
    doc["province"] = "26"
    for entry in doc["keys"].values():
        entry["scope"] = ["26"]
    verdict = verify(state, envelope("keyring", doc, "root1", "root2"), CTX)
    assert isinstance(verdict, Rejection)
    assert verdict.code in (Code.OUT_OF_SCOPE, Code.WRONG_AUDIENCE)
    # the old roots are scoped to 25, so they may not vouch for 26
    assert verdict.code == Code.OUT_OF_SCOPE


def test_keyid_that_is_not_the_hash_of_its_key_is_schema() -> None:
    state = install()
    doc = with_roles(2, root=(ROOTS, 2))
    fake = "0" * 64
    doc["keys"][fake] = doc["keys"].pop(keyid("root3"))
    doc["roles"]["root"]["keyids"] = [keyid("root1"), keyid("root2"), fake]
    verdict = verify(state, envelope("keyring", doc, "root1", "root2"), CTX)
    assert code_of(verdict) == "schema"


def test_payload_is_used_as_verified_bytes() -> None:
    state = install()
    data = envelope("playlist", playlist_body(version=2), "playlist")
    verdict = verify(state, data, CTX)
    assert isinstance(verdict, Accepted)
    assert verdict.body == base64.b64decode(json.loads(data)["payload"])
