"""Signed time beacons and the time floor (PROTOCOL.md section 9), through the pure core."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.core.targets import StationId
from agent.core.trust_state import TrustState, apply
from agent.core.verify import Accepted, ClockView, Context, Rejection, Verdict, verify
from agent.schemas import load_schema_set
from tests.harness.trust import emergency_body, envelope, keyring_body, playlist_body

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
STATION = StationId.parse("25/08230/08230-01")


def ctx(now: datetime = NOW, synchronised: bool = True) -> Context:
    return Context(STATION, ClockView(now, synchronised), load_schema_set())


def provisioned() -> TrustState:
    verdict = verify(TrustState(), envelope("keyring", keyring_body(1), "root1", "root2"), ctx())
    assert isinstance(verdict, Accepted)
    return apply(TrustState(), verdict.effects)


def beacon(ts: datetime, province: str = "25", *signers: str) -> bytes:
    doc = {"kind": "time", "schema": 1, "province": province, "ts": ts.isoformat()}
    return envelope("time", doc, *(signers or ("maintenance",)))


def code(verdict: Verdict) -> str:
    return "accepted" if isinstance(verdict, Accepted) else str(verdict.code)


def test_beacon_raises_the_floor_and_an_older_one_is_a_noop() -> None:
    state = provisioned()
    first = verify(state, beacon(NOW - timedelta(minutes=1)), ctx())
    assert isinstance(first, Accepted) and first.line().startswith("accepted time 25 ")
    state = apply(state, first.effects)
    assert state.time_floor == NOW - timedelta(minutes=1)
    older = verify(state, beacon(NOW - timedelta(minutes=2)), ctx())
    assert isinstance(older, Accepted) and older.noop and older.effects == ()


def test_beacon_needs_the_maintenance_role_and_this_province() -> None:
    state = provisioned()
    assert code(verify(state, beacon(NOW, "25", "playlist"), ctx())) == "threshold-not-met"
    assert code(verify(state, beacon(NOW, "26"), ctx())) == "out-of-scope"


def test_beacon_from_the_future_is_refused_by_a_trusted_clock() -> None:
    state = provisioned()
    verdict = verify(state, beacon(NOW + timedelta(hours=1)), ctx())
    assert isinstance(verdict, Rejection) and verdict.code == "not-yet-valid"


def test_untrusted_station_takes_the_beacon_as_its_floor() -> None:
    state = provisioned()
    stale_clock = NOW - timedelta(days=400)  # a Pi that booted at its last saved time
    verdict = verify(state, beacon(NOW), ctx(stale_clock, synchronised=False))
    assert isinstance(verdict, Accepted)
    state = apply(state, verdict.effects)
    assert state.time_floor == NOW
    # Even when the kernel claims sync, a clock below the floor is not trusted.
    playlist = envelope("playlist", playlist_body(version=2), "playlist")
    assert code(verify(state, playlist, ctx(stale_clock, synchronised=True))) == "clock-untrusted"
    # An emergency issued after the floor still gets through; one from before it does not.
    fresh = emergency_body(id="e-1", issued_at=(NOW + timedelta(seconds=5)).isoformat())
    stale = emergency_body(id="e-2", issued_at=(NOW - timedelta(days=1)).isoformat())
    untrusted = ctx(stale_clock, synchronised=False)
    assert code(verify(state, envelope("command", fresh, "emergency"), untrusted)) == "accepted"
    assert code(verify(state, envelope("command", stale, "emergency"), untrusted)) == (
        "clock-untrusted"
    )


def test_trust_alerts_follow_keyring_expiry_and_clock_trust() -> None:
    from agent.core.verify import Limits, trust_alerts

    short = envelope(
        "keyring", keyring_body(1, expires="2026-12-01T00:00:00+07:00"), "root1", "root2"
    )
    verdict = verify(TrustState(), short, ctx())
    assert isinstance(verdict, Accepted)
    state = apply(TrustState(), verdict.effects)
    limits = Limits()
    assert trust_alerts(state, ClockView(NOW, True), limits) == ()
    later = NOW + timedelta(days=10)
    assert trust_alerts(state, ClockView(later, True), limits) == ("keyring-expired",)
    much_later = NOW + timedelta(days=45)
    assert trust_alerts(state, ClockView(much_later, True), limits) == (
        "keyring-expired",
        "keyring-grace-over",
    )
    # Untrusted: judged at the floor (here none yet, so nothing is known about expiry).
    assert trust_alerts(state, ClockView(much_later, False), limits) == ("clock-untrusted",)
