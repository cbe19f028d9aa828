"""Build a keyring body from keys, roles, thresholds and scopes, and check it as a station would.

A keyring that no station would accept must not leave the province's desk: before writing, the
signed envelope goes through the station's own verifier, as an initial keyring or, with the
previous keyring given, as the rotation N -> N+1 (both root thresholds). The ``release`` role
(docs/releases.md) is optional: without it the keyring's stations trust no release.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from agent.core.dsse import keyid_of
from agent.core.models import ROLE_NAMES
from agent.core.targets import StationId
from agent.core.timefmt import format_rfc3339
from agent.core.trust_state import TrustState, apply
from agent.core.verify import Accepted, ClockView, Context, verify
from agent.schemas import load_schema_set
from province.signer import Signer
from province.signing import BodyError, canonical_json, sign_body

REQUIRED_ROLES = ("root", "playlist", "command", "emergency", "maintenance")


@dataclass(frozen=True)
class KeySpec:
    role: str
    public_hex: str
    scope: tuple[str, ...]


def build_body(
    province: str,
    version: int,
    expires: datetime,
    specs: Iterable[KeySpec],
    thresholds: Mapping[str, int],
    live_hosts: Sequence[str] = (),
) -> dict[str, object]:
    keys: dict[str, dict[str, object]] = {}
    roles: dict[str, list[str]] = {}
    for spec in specs:
        if spec.role not in ROLE_NAMES:
            raise BodyError(f"unknown role {spec.role!r}; roles are {', '.join(ROLE_NAMES)}")
        kid = keyid_of(bytes.fromhex(spec.public_hex))
        scope = sorted(spec.scope or (province,))
        known = keys.get(kid)
        if known is not None and known["scope"] != scope:
            raise BodyError(f"key {kid[:16]} is given with two different scopes")
        keys[kid] = {"scheme": "ed25519", "public": spec.public_hex, "scope": scope}
        roles.setdefault(spec.role, [])
        if kid not in roles[spec.role]:
            roles[spec.role].append(kid)
    missing = [r for r in REQUIRED_ROLES if r not in roles]
    if missing:
        raise BodyError(f"every keyring needs keys for the roles: {', '.join(missing)}")
    # A threshold for a role without keys would vanish from the body: a mistyped role name, or
    # a release threshold given without its keys, must not pass as a keyring that has them.
    keyless = sorted(set(thresholds) - set(roles))
    if keyless:
        raise BodyError(f"--threshold for a role without keys (give --key ROLE=FILE): {keyless}")
    body: dict[str, object] = {
        "kind": "keyring",
        "schema": 1,
        "province": province,
        "version": version,
        "expires": format_rfc3339(expires),
        "keys": keys,
        "roles": {
            name: {"keyids": sorted(kids), "threshold": thresholds.get(name, 1)}
            for name, kids in roles.items()
        },
    }
    if live_hosts:
        body["live_hosts"] = sorted(set(live_hosts))
    return body


def sign_keyring(
    body: Mapping[str, object],
    signers: Sequence[Signer],
    previous_envelope: bytes | None,
    now: datetime,
) -> bytes:
    """Sign and verify as a station of the province would; raise BodyError if it would refuse."""
    envelope = sign_body(canonical_json(body), signers)
    province = str(body["province"])
    # Any station of the province sees a keyring the same way; this one is a stand-in.
    station = StationId(province, "00000", "keyring-check")
    ctx = Context(station, ClockView(now, synchronised=True), load_schema_set())
    state = TrustState()
    if previous_envelope is not None:
        first = verify(state, previous_envelope, ctx)
        if not isinstance(first, Accepted):
            raise BodyError(f"the previous keyring does not verify: {first.code} ({first.detail})")
        state = apply(state, first.effects)
    verdict = verify(state, envelope, ctx)
    if not isinstance(verdict, Accepted):
        raise BodyError(f"stations would reject this keyring: {verdict.code} ({verdict.detail})")
    return envelope
