"""The updater against a real HTTP server (tests/harness/media_server.py) and a real trust store:
an accepted release's artifact fetched with the media cache's checks, staged when the window
opens (request.json, exit status 75 asked), and refused when it is not what the release says.
The station's own starts (outcomes of the privileged side, the confirmation) run here too."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from agent.core.release import Release
from agent.core.verify import Accepted
from agent.updater import EX_TEMPFAIL, ArtifactFetched, Updater
from tests.harness.clock import FakeClock
from tests.harness.media_server import MediaServer
from tests.harness.releases import keyring_envelope, release_body, release_envelope, wheelhouse
from tests.harness.trust import Station, make_station

pytestmark = pytest.mark.integration
TOPIC = "loa/v1/25/08230/release/25"


@dataclass
class Rig:
    station: Station
    updater: Updater
    fetched: queue.Queue[ArtifactFetched]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    stops: list[tuple[int, str]] = field(default_factory=list)

    @property
    def updates(self) -> Path:
        return self.station.config.paths.state / "updates"

    def codes(self) -> list[str]:
        return [code for code, _ in self.events]

    def accept(self, data: bytes) -> Release:
        verdict = self.station.ingest(data, TOPIC)
        assert isinstance(verdict, Accepted) and isinstance(verdict.message, Release), verdict
        self.updater.on_release(verdict.message, data, verdict.noop)
        return verdict.message

    def settle(self) -> ArtifactFetched:
        """The fetch thread's result, handled as the runtime thread would."""
        done = self.fetched.get(timeout=10)
        self.updater.on_fetched(done)
        return done


def make_rig(
    tmp_path: Path, clock: FakeClock, running: str = "0.1.0", station: Station | None = None
) -> Rig:
    """A station with release keys and its updater; ``station``: the same station restarted
    (a new updater over the state the old one left)."""
    if station is None:
        station = make_station(tmp_path / "station", clock, keyring_envelope())
    station.ingestor.version = running
    config = replace(station.config, media=replace(station.config.media, allow_http=True))
    fetched: queue.Queue[ArtifactFetched] = queue.Queue()
    rig = Rig(station, None, fetched)  # type: ignore[arg-type]
    rig.updater = Updater(
        config,
        clock,
        running,
        report=lambda code, detail, fields: rig.events.append((code, fields)),
        deliver=fetched.put,
        stop=lambda status, reason: rig.stops.append((status, reason)),
        raise_floor=lambda v: station.store.raise_release_floor(v, clock.now()),
        reverify=station.ingest,
    )
    return rig


@pytest.fixture
def rig(tmp_path: Path, fake_clock: FakeClock) -> Iterator[Rig]:
    made = make_rig(tmp_path, fake_clock)
    yield made
    made.station.store.close()


def test_a_good_artifact_is_staged_and_the_agent_asks_for_75(
    rig: Rig, media_server: MediaServer
) -> None:
    artifact = wheelhouse("0.2.0")
    body = release_body(artifact)
    body["artifact"]["url"] = media_server.add("/25/loa-0.2.0.tar.gz", artifact)
    data = release_envelope(body, "release")
    rig.accept(data)
    assert rig.codes() == ["update-available"]
    assert rig.settle().error is None
    staged = rig.updates / "0.2.0"
    assert (staged / "artifact.tar.gz").read_bytes() == artifact
    assert (staged / "release.json").read_bytes() == data
    assert not (rig.updates / "request.json").exists()  # the watch tick decides
    rig.updater.on_watch(on_air=True, plan=[])
    assert rig.codes()[-1] == "update-waiting" and rig.stops == []
    rig.updater.on_watch(on_air=True, plan=[])
    assert rig.codes().count("update-waiting") == 1  # reported once
    rig.updater.on_watch(on_air=False, plan=[])
    request = json.loads((rig.updates / "request.json").read_bytes())
    assert request["version"] == "0.2.0" and request["staged_at"].endswith("Z")
    assert rig.codes()[-1] == "update-staged"
    assert rig.stops == [(EX_TEMPFAIL, "update to 0.2.0 staged")]
    # Nothing but the contract's files is left in the version's directory.
    assert sorted(p.name for p in staged.iterdir()) == ["artifact.tar.gz", "release.json"]


def test_a_tampered_artifact_is_refused_and_nothing_staged(
    rig: Rig, media_server: MediaServer
) -> None:
    artifact = wheelhouse("0.2.0")
    tampered = bytearray(artifact)
    tampered[-1] ^= 0xFF
    url = media_server.add("/25/loa-0.2.0.tar.gz", bytes(tampered))
    body = release_body(artifact)
    body["artifact"]["url"] = url
    rig.accept(release_envelope(body, "release"))
    done = rig.settle()
    assert done.code == "media-hash-mismatch"
    code, fields = rig.events[-1]
    assert code == "update-refused" and fields["reason"] == "media-hash-mismatch"
    rig.updater.on_watch(on_air=False, plan=[])
    assert not (rig.updates / "0.2.0" / "artifact.tar.gz").exists()
    assert not (rig.updates / "request.json").exists() and rig.stops == []
    assert not any(p.name.endswith(".tar.gz") for p in rig.updates.rglob("*"))


@pytest.mark.parametrize(("served", "code"), [(b"x", "media-too-large"),
                                              (b"", "media-hash-mismatch")])  # fmt: skip
def test_a_wrong_length_is_refused(
    rig: Rig, media_server: MediaServer, served: bytes, code: str
) -> None:
    artifact = wheelhouse("0.2.0")
    body_bytes = artifact + served if served else artifact[:-10]  # longer / shorter
    url = media_server.add("/25/loa-0.2.0.tar.gz", body_bytes)
    body = release_body(artifact)
    body["artifact"]["url"] = url
    rig.accept(release_envelope(body, "release"))
    assert rig.settle().code == code
    rig.updater.on_watch(on_air=False, plan=[])
    assert not (rig.updates / "request.json").exists() and rig.stops == []


def test_a_failed_fetch_is_tried_again_after_its_back_off(
    rig: Rig, media_server: MediaServer, fake_clock: FakeClock
) -> None:
    artifact = wheelhouse("0.2.0")
    url = media_server.add("/a.tar.gz", b"", status=503, retry_after="60")
    body = release_body(artifact)
    body["artifact"]["url"] = url
    rig.accept(release_envelope(body, "release"))
    assert rig.settle().code == "media-unreachable"
    media_server.add("/a.tar.gz", artifact)
    rig.updater.on_watch(on_air=False, plan=[])
    assert rig.fetched.empty() and media_server.hits("/a.tar.gz") == 1  # the server said 60 s
    fake_clock.advance(61)
    rig.updater.on_watch(on_air=False, plan=[])
    assert rig.settle().error is None
    rig.updater.on_watch(on_air=False, plan=[])
    assert (rig.updates / "request.json").exists()


def test_start_reports_the_privileged_sides_outcomes(rig: Rig) -> None:
    rig.updates.mkdir(parents=True)
    (rig.updates / "0.2.0").mkdir()
    (rig.updates / "0.2.0" / "release.json").write_bytes(b"{}")
    (rig.updates / "rolled-back.json").write_text(json.dumps(
        {"version": "0.2.0", "previous": "0.1.0", "reason": "did not confirm within 600 s",
         "at": "2026-11-22T10:00:00Z"}))  # fmt: skip
    (rig.updates / "failed.json").write_text(json.dumps(
        {"version": "0.3.0", "reason": "pip failed", "at": "2026-11-22T10:00:00Z"}))  # fmt: skip
    rig.updater.start()
    assert rig.codes() == ["update-rolled-back", "update-failed"]
    assert rig.events[0][1] == {"version": "0.2.0", "previous": "0.1.0",
                                "reason": "did not confirm within 600 s"}  # fmt: skip
    assert not (rig.updates / "rolled-back.json").exists()
    assert not (rig.updates / "failed.json").exists()
    assert not (rig.updates / "0.2.0").exists()  # not resumed, not retried


def test_an_unconsumed_request_is_not_staged_again(rig: Rig, media_server: MediaServer) -> None:
    artifact = wheelhouse("0.2.0")
    body = release_body(artifact)
    body["artifact"]["url"] = media_server.add("/a.tar.gz", artifact)
    data = release_envelope(body, "release")
    rig.accept(data)
    rig.settle()
    rig.updater.on_watch(on_air=False, plan=[])
    assert (rig.updates / "request.json").exists()
    # Restarted without the boot guard: reported, forgotten, no restart loop.
    again = make_rig(Path(), rig.station.clock, station=rig.station)
    again.updater.start()
    assert again.codes() == ["update-failed"]
    assert not (rig.updates / "request.json").exists() and not (rig.updates / "0.2.0").exists()
    again.accept(data)  # the retained release again: a no-op, not pursued
    assert again.codes() == ["update-failed"] and again.fetched.empty()


def test_a_staged_release_is_resumed_after_a_restart(rig: Rig, media_server: MediaServer) -> None:
    artifact = wheelhouse("0.2.0")
    body = release_body(artifact)
    body["artifact"]["url"] = media_server.add("/a.tar.gz", artifact)
    rig.accept(release_envelope(body, "release"))
    rig.settle()
    rig.updater.on_watch(on_air=True, plan=[])  # waiting for the window, then a restart
    again = make_rig(Path(), rig.station.clock, station=rig.station)
    again.updater.start()
    assert again.settle().error is None  # verified again from the file, no download
    assert media_server.hits("/a.tar.gz") == 1
    again.updater.on_watch(on_air=False, plan=[])
    assert again.stops and (again.updates / "request.json").exists()


def test_the_new_version_confirms_after_its_first_heartbeat_is_acknowledged(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    rig = make_rig(tmp_path, fake_clock, running="0.2.0")
    (rig.updates / "0.1.0").mkdir(parents=True)
    (rig.updates / "0.2.0").mkdir()
    (rig.updates / "trying.json").write_text(json.dumps(
        {"version": "0.2.0", "previous": "0.1.0", "switched_at": "2026-11-22T09:59:00Z",
         "deadline": "2026-11-22T10:10:00Z", "attempts": 1}))  # fmt: skip
    rig.updater.start()
    rig.updater.heartbeat_sent(3)  # before READY: not the one
    rig.updater.ready()
    rig.updater.heartbeat_sent(4)
    rig.updater.heartbeat_sent(5)
    rig.updater.on_receipt({"heartbeat": 3})
    assert (rig.updates / "trying.json").exists() and rig.events == []
    fake_clock.advance(60)
    rig.updater.on_receipt({"heartbeat": 4, "event": 9})
    applied = json.loads((rig.updates / "applied.json").read_bytes())
    assert applied == {"version": "0.2.0", "previous": "0.1.0",
                       "confirmed_at": "2026-11-22T10:01:00Z"}  # fmt: skip
    assert not (rig.updates / "trying.json").exists()
    assert rig.station.state().release_floor == (0, 2, 0)
    assert rig.codes() == ["update-applied"]
    assert not (rig.updates / "0.1.0").exists() and (rig.updates / "0.2.0").exists()
    rig.updater.on_watch(on_air=False, plan=[])
    assert rig.stops == []
    rig.station.store.close()


def test_no_confirmation_by_the_deadline_stops_for_the_rollback(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    rig = make_rig(tmp_path, fake_clock, running="0.2.0")
    rig.updates.mkdir(parents=True)
    (rig.updates / "trying.json").write_text(json.dumps(
        {"version": "0.2.0", "previous": "0.1.0", "switched_at": "2026-11-22T09:59:00Z",
         "deadline": "2026-11-22T10:10:00Z", "attempts": 0}))  # fmt: skip
    rig.updater.start()
    rig.updater.ready()
    rig.updater.heartbeat_sent(0)
    fake_clock.advance(601)
    rig.updater.on_receipt({"heartbeat": 0})  # too late
    rig.updater.on_watch(on_air=False, plan=[])
    assert rig.stops == [(EX_TEMPFAIL, "update not confirmed in time")]
    assert (rig.updates / "trying.json").exists() and not (rig.updates / "applied.json").exists()
    assert rig.station.state().release_floor is None
    rig.station.store.close()
