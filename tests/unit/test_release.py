"""Signed releases on the station (docs/releases.md): the body, versions, and every verdict of
the verification order for a release, with envelopes signed by test release keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.codes import Code
from agent.core.release import Release, format_version, parse_version, version_step
from agent.core.trust_state import RecordRelease
from agent.core.verify import Accepted, Rejection
from agent.trust_store import TrustStore
from tests.harness.clock import FakeClock
from tests.harness.releases import keyring_envelope, release_body, release_envelope
from tests.harness.trust import Station, make_station

TOPIC = "loa/v1/25/08230/release/25"


@pytest.fixture
def updatable(tmp_path: Path, fake_clock: FakeClock) -> Iterator[Station]:
    made = make_station(tmp_path / "station", fake_clock, keyring_envelope())
    made.ingestor.version = "0.1.0"
    yield made
    made.store.close()


def rejected(station: Station, data: bytes, code: Code, topic: str | None = TOPIC) -> Rejection:
    before = station.fingerprint(), station.state().releases, station.state().release_floor
    verdict = station.ingest(data, topic)
    assert isinstance(verdict, Rejection), verdict
    assert verdict.code == code, verdict.detail
    assert verdict.kind == "release"
    after = station.fingerprint(), station.state().releases, station.state().release_floor
    assert after == before  # a rejection changes nothing
    return verdict


def accepted(station: Station, data: bytes, topic: str | None = TOPIC) -> Accepted:
    verdict = station.ingest(data, topic)
    assert isinstance(verdict, Accepted), verdict
    return verdict


# versions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0.2.0", "10.0.3", "0.0.0", "999999999.1.2"])
def test_versions_round_trip(text: str) -> None:
    assert format_version(parse_version(text)) == text


@pytest.mark.parametrize("text", ["0.2", "0.2.0.1", "0.02.0", "v0.2.0", "0.2.0rc1", "", "0.2.-1",
                                  "1.0.0 ", "١.0.0", "1000000000.0.0"])  # fmt: skip
def test_versions_that_are_not(text: str) -> None:
    with pytest.raises(ValueError):
        parse_version(text)


def test_versions_compare_as_integer_triples() -> None:
    assert parse_version("0.10.0") > parse_version("0.9.9")
    assert parse_version("1.0.0") > parse_version("0.99.99")


def test_release_model() -> None:
    release = Release.from_body(release_body(b"abc"))
    assert release.version == (0, 2, 0) and release.min_version == (0, 1, 0)
    assert release.artifact.bytes == 3 and release.target == "25/08230"
    with pytest.raises(ValueError, match="min_version"):
        Release.from_body(release_body(min_version="0.3.0"))
    with pytest.raises(ValueError, match="expires"):
        Release.from_body(release_body(expires="2026-11-22T08:00:00+07:00"))


def test_version_step_decisions() -> None:
    release = Release.from_body(release_body())
    v = parse_version
    assert version_step(release, "s", v("0.1.0"), None, {}).code is None
    assert version_step(release, "s", v("0.1.0"), None, {(0, 2, 0): "s"}).noop
    assert version_step(release, "s", v("0.2.0"), None, {(0, 2, 0): "s"}).noop
    assert version_step(release, "t", v("0.2.0"), None, {(0, 2, 0): "s"}).code == Code.ROLLBACK
    assert version_step(release, "s", v("0.3.0"), None, {(0, 2, 0): "s"}).code == Code.ROLLBACK
    assert version_step(release, "s", v("0.1.0"), v("0.3.0"), {}).code == Code.ROLLBACK
    older = Release.from_body(release_body(min_version="0.1.5"))
    assert version_step(older, "s", v("0.1.0"), None, {}).code == Code.UPDATE_INCOMPATIBLE


# the verification order ------------------------------------------------------------------------


def test_a_new_release_is_accepted_and_recorded(updatable: Station) -> None:
    data = release_envelope(release_body(), "release")
    verdict = accepted(updatable, data)
    assert verdict.line() == "accepted release 25 v0.2.0"
    assert isinstance(verdict.message, Release) and not verdict.noop
    assert [type(e) for e in verdict.effects] == [RecordRelease]
    assert (0, 2, 0) in updatable.state().releases
    again = accepted(updatable, data)  # retained again after a reconnect
    assert again.noop and again.effects == ()


def test_a_province_wide_and_a_station_release_are_heard(updatable: Station) -> None:
    accepted(updatable, release_envelope(release_body(target="25"), "release"),
             "loa/v1/25/release/25")  # fmt: skip
    station = release_body(target="25/08230/08230-01", version="0.3.0")
    accepted(updatable, release_envelope(station, "release"),
             "loa/v1/25/08230/08230-01/release/25")  # fmt: skip


def test_unsigned_by_a_release_key(updatable: Station) -> None:
    # Signed by a playlist key of the keyring: no release signature at all.
    rejected(updatable, release_envelope(release_body(), "playlist"), Code.THRESHOLD_NOT_MET)


def test_no_release_role_no_release(tmp_path: Path, fake_clock: FakeClock) -> None:
    plain = make_station(tmp_path / "plain", fake_clock)  # the vectors' keyring: no release role
    try:
        verdict = plain.ingest(release_envelope(release_body(), "release"), TOPIC)
        assert isinstance(verdict, Rejection) and verdict.code == Code.UNKNOWN_KEY
        verdict = plain.ingest(release_envelope(release_body(), "playlist"), TOPIC)
        assert isinstance(verdict, Rejection) and verdict.code == Code.THRESHOLD_NOT_MET
    finally:
        plain.store.close()


def test_under_threshold(tmp_path: Path, fake_clock: FakeClock) -> None:
    two = make_station(tmp_path / "two", fake_clock, keyring_envelope(threshold=2))
    two.ingestor.version = "0.1.0"
    try:
        rejected(two, release_envelope(release_body(), "release"), Code.THRESHOLD_NOT_MET)
        # The same key twice still counts once.
        rejected(two, release_envelope(release_body(), "release", "release"),
                 Code.THRESHOLD_NOT_MET)  # fmt: skip
        accepted(two, release_envelope(release_body(), "release", "release2"))
    finally:
        two.store.close()


def test_schema(updatable: Station) -> None:
    rejected(updatable, release_envelope(release_body(version="0.2"), "release"), Code.SCHEMA)
    rejected(updatable, release_envelope(release_body(extra=1), "release"), Code.SCHEMA)
    inverted = release_body(min_version="0.3.0")
    rejected(updatable, release_envelope(inverted, "release"), Code.SCHEMA)


def test_a_commune_key_cannot_sign_a_release(updatable: Station) -> None:
    data = release_envelope(release_body(), "commune-release")
    rejected(updatable, data, Code.OUT_OF_SCOPE)


def test_a_release_for_another_commune(updatable: Station) -> None:
    other = release_body(target="25/08231")
    rejected(updatable, release_envelope(other, "release"), Code.WRONG_AUDIENCE,
             "loa/v1/25/08231/release/25")  # fmt: skip


def test_a_release_on_another_topic(updatable: Station) -> None:
    data = release_envelope(release_body(), "release")
    rejected(updatable, data, Code.WRONG_AUDIENCE, "loa/v1/25/08230/08230-01/release/25")


def test_clock_untrusted(tmp_path: Path, fake_clock: FakeClock) -> None:
    lost = make_station(tmp_path / "lost", fake_clock, keyring_envelope(),
                        clock_trust="kernel", kernel_synchronised=False)  # fmt: skip
    lost.ingestor.version = "0.1.0"
    try:
        rejected(lost, release_envelope(release_body(), "release"), Code.CLOCK_UNTRUSTED)
    finally:
        lost.store.close()


def test_expired_and_not_yet_valid(updatable: Station) -> None:
    old = release_body(issued_at="2026-10-01T08:00:00+07:00", expires="2026-11-01T08:00:00+07:00")
    rejected(updatable, release_envelope(old, "release"), Code.EXPIRED)
    future = release_body(issued_at="2026-11-23T08:00:00+07:00")
    rejected(updatable, release_envelope(future, "release"), Code.NOT_YET_VALID)


def test_a_downgrade(updatable: Station) -> None:
    updatable.ingestor.version = "0.3.0"
    down = release_body(version="0.2.5", min_version="0.1.0")
    rejected(updatable, release_envelope(down, "release"), Code.ROLLBACK)
    same = release_body(version="0.3.0")  # the running version, never accepted before
    rejected(updatable, release_envelope(same, "release"), Code.ROLLBACK)


def test_a_replay_of_an_older_release(updatable: Station) -> None:
    first = release_envelope(release_body(), "release")
    accepted(updatable, first)
    updatable.ingestor.version = "0.3.0"  # updated since, through 0.2.0 and 0.3.0
    rejected(updatable, first, Code.ROLLBACK)


def test_below_the_version_floor(updatable: Station) -> None:
    # The station confirmed 0.3.0 once and was then rolled back to 0.1.0 by hand: 0.2.0 stays
    # refused, whatever runs now.
    updatable.store.raise_release_floor((0, 3, 0), updatable.clock.now())
    rejected(updatable, release_envelope(release_body(), "release"), Code.ROLLBACK)


def test_update_incompatible(updatable: Station) -> None:
    needs = release_body(min_version="0.1.5")
    rejected(updatable, release_envelope(needs, "release"), Code.UPDATE_INCOMPATIBLE)


def test_a_running_version_that_is_not_comparable(updatable: Station) -> None:
    updatable.ingestor.version = "0.1.0.dev3"
    rejected(updatable, release_envelope(release_body(), "release"), Code.UPDATE_INCOMPATIBLE)


def test_the_release_floor_persists_and_only_rises(tmp_path: Path, fake_clock: FakeClock) -> None:
    path = tmp_path / "trust.db"
    with TrustStore(path) as store:
        assert store.snapshot().release_floor is None
        store.raise_release_floor((0, 10, 0), fake_clock.now())
        store.raise_release_floor((0, 9, 0), fake_clock.now())  # "0.9.0" > "0.10.0" as text
        assert store.snapshot().release_floor == (0, 10, 0)
    with TrustStore(path) as store:
        assert store.snapshot().release_floor == (0, 10, 0)
        row = store._db.execute("SELECT value FROM meta WHERE key = 'release_floor'").fetchone()
        assert row == ("0.10.0",)


def test_a_recorded_release_survives_a_restart(updatable: Station, tmp_path: Path) -> None:
    data = release_envelope(release_body(), "release")
    accepted(updatable, data)
    with TrustStore(updatable.config.paths.trust_db) as other:
        assert (0, 2, 0) in other.snapshot().releases
