"""The province side of signed releases (docs/releases.md) without a broker or pip: release
keys in the keyring, the release body and its checks, signing through ``loa-province release
sign`` against the home's published keyring, the topic, the stations' ACL lines, and
``loa-province updates`` over a registry filled the way the collector fills it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.core import dsse
from agent.core.models import Keyring
from agent.core.release import parse_version
from agent.core.reports import event_body
from agent.core.targets import StationId
from agent.core.verify import PAYLOAD_TYPES
from province import acl, release
from province.cli import main
from province.errors import ProvinceError
from province.publish import route
from province.registry import Registry, received_at_text
from province.signing import BodyError, check_body
from province.signing_log import log_path, verify_log

NOW = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)
ROLES = ("root", "playlist", "command", "emergency", "maintenance")
A, B, C = "25/08230/08230-01", "25/08230/08230-02", "25/08231/08231-01"


def run(*args: str | Path) -> int:
    return main([str(a) for a in args])


class Desk:
    """Key files, a keyring with a release role, and a province home that published it."""

    def __init__(self, tmp: Path, release_threshold: int | None = 1) -> None:
        self.keys, self.home = tmp / "keys", tmp / "home"
        for name in (*ROLES, "rel1", "rel2", "stranger"):
            assert run("keygen", name, "--dir", self.keys) == 0
        self.home.mkdir()
        with Registry(self.home / "registry.db") as registry:
            registry.set_meta("province", "25")
            for station in (A, B, C):
                registry.add_station(StationId.parse(station), b"cert", "00" * 32)
        if release_threshold is not None:
            self.publish_keyring(release_threshold)

    def key(self, name: str) -> Path:
        return self.keys / f"{name}.key"

    def publish_keyring(self, threshold: int, version: int = 1, with_release: bool = True) -> None:
        specs = [f"{role}={self.keys / role}.pub" for role in ROLES]
        if with_release:
            specs += [f"release={self.keys / 'rel1.pub'}", f"release={self.keys / 'rel2.pub'}"]
        out = self.home / f"keyring-{version}.json"
        args: list[str | Path] = ["keyring", "--province", "25", "--version", str(version)]
        for spec in specs:
            args += ["--key", spec]
        if with_release:
            args += ["--threshold", f"release={threshold}"]
        args += ["--sign", self.key("root"), "--out", out, "--home", self.home]
        assert run(*args) == 0
        envelope = out.read_bytes()
        body = dsse.parse_envelope(envelope, len(envelope)).body
        with Registry(self.home / "registry.db") as registry:
            registry.record_published(
                f"loa/v1/25/keyring/{version}", "keyring", "25", "25", f"v{version}", body,
                envelope,
            )  # fmt: skip

    def sign(self, *keys: str, target: str = "25/08230", version: str = "0.2.0") -> int:
        args: list[str | Path] = [
            "release", "sign", "--version", version, "--min-version", "0.1.0",
            "--target", target, "--url", f"https://media.example.vn/loa-{version}.tar.gz",
            "--artifact", self.wheelhouse(version), "--out", self.home / "release.json",
            "--home", self.home,
        ]  # fmt: skip
        for name in keys:
            args += ["--key", self.key(name)]
        return run(*args)

    def wheelhouse(self, version: str) -> Path:
        path = self.home / f"loa-{version}.tar.gz"
        if not path.exists():
            wheels = self.home / "wheels"
            wheels.mkdir(exist_ok=True)
            (wheels / release.wheel_name(version)).write_bytes(b"PK not really a wheel")
            path.write_bytes(release.tarball(wheels, [release.wheel_name(version)]))
        return path


def body_of(envelope: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(dsse.parse_envelope(envelope, len(envelope)).body)
    return doc


# -- keys and keyring -------------------------------------------------------------------------


def test_keyring_carries_a_release_role_with_its_threshold(tmp_path: Path) -> None:
    desk = Desk(tmp_path, release_threshold=2)
    envelope = (desk.home / "keyring-1.json").read_bytes()
    keyring = Keyring.from_body(body_of(envelope))
    assert keyring.roles["release"].threshold == 2
    assert len(keyring.roles["release"].keyids) == 2


def test_keyring_refuses_a_threshold_for_a_role_without_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desk = Desk(tmp_path, release_threshold=None)
    args: list[str | Path] = ["keyring", "--province", "25", "--version", "1"]
    for role in ROLES:
        args += ["--key", f"{role}={desk.keys / role}.pub"]
    args += ["--threshold", "release=2", "--sign", desk.key("root"), "--out", tmp_path / "k.json"]
    assert run(*args, "--home", desk.home) == 1
    assert "role without keys" in capsys.readouterr().err
    assert not (tmp_path / "k.json").exists()


# -- the body ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0.1.0", "1.20.300", "999999999.0.0"])
def test_versions_are_integer_triples(text: str) -> None:
    assert parse_version(text) == tuple(int(p) for p in text.split("."))
    assert parse_version("0.10.0") > parse_version("0.9.9")


@pytest.mark.parametrize("text", ["0.1", "0.1.0.1", "01.2.3", "1.2.3rc1", "v1.2.3", " 1.2.3", 1])
def test_other_versions_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match=r"MAJOR\.MINOR\.PATCH"):
        parse_version(text)


def good_body(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "release", "schema": 1, "issuer": "25", "target": "25/08230",
        "version": "0.2.0", "min_version": "0.1.0",
        "issued_at": "2026-11-22T08:00:00+07:00", "expires": "2026-12-22T08:00:00+07:00",
        "artifact": {"url": "https://media.example.vn/25/loa-0.2.0.tar.gz",
                     "sha256": "ab" * 32, "bytes": 123456},
    }  # fmt: skip
    doc.update(changes)
    return doc


def test_the_contracts_example_body_is_a_release() -> None:
    assert check_body(json.dumps(good_body()).encode()) == "release"


@pytest.mark.parametrize(
    "changes",
    [
        {"min_version": "0.3.0"},  # above version
        {"target": "26/08230"},  # outside the issuer's province
        {"issuer": "25/08230"},  # release keys are province keys
        {"target": "25/08230/release"},  # a station may not be named after a topic word
        {"version": "0.2"},
        {"expires": "2026-11-22T08:00:00+07:00"},  # not after issued_at
        {"artifact": {"url": "ftp://x/y", "sha256": "ab" * 32, "bytes": 1}},
        {"artifact": {"url": "https://x/y", "sha256": "AB" * 32, "bytes": 1}},
        {"artifact": {"url": "https://x/y", "sha256": "ab" * 32, "bytes": 0}},
        {"artifact": {"url": "https://x/y", "sha256": "ab" * 32}},
        {"extra": 1},
    ],
)
def test_bodies_stations_would_refuse_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(BodyError):
        check_body(json.dumps(good_body(**changes)).encode())


def test_release_body_takes_hash_and_length_from_the_artifact(tmp_path: Path) -> None:
    path = tmp_path / "a.tar.gz"
    path.write_bytes(b"x" * 1000)
    artifact = release.Artifact.of(path)
    body = release.release_body(
        "25/08230/08230-01", "0.2.0", "0.1.0", "https://m.example.vn/a.tar.gz", artifact, NOW,
        timedelta(days=30),
    )  # fmt: skip
    doc = json.loads(body)
    assert doc["issuer"] == "25" and doc["target"] == "25/08230/08230-01"
    assert doc["artifact"] == {
        "url": "https://m.example.vn/a.tar.gz",
        "sha256": hashlib.sha256(b"x" * 1000).hexdigest(),
        "bytes": 1000,
    }
    assert doc["issued_at"] == "2026-11-22T01:00:00Z" and doc["expires"] == "2026-12-22T01:00:00Z"


def test_with_version_changes_only_the_project_version() -> None:
    text = '[project]\nname = "loa"\nversion = "0.1.0"\n\n[tool.x]\ny = "version"\n'
    assert release.with_version(text, "0.2.0") == text.replace('"0.1.0"', '"0.2.0"')
    with pytest.raises(ValueError):
        release.with_version(text, "0.2.0-test")
    with pytest.raises(ProvinceError):
        release.with_version('[project]\nname = "loa"\n', "0.2.0")


def test_a_wheelhouse_must_hold_the_versions_wheel_at_its_top(tmp_path: Path) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    for name in ("loa-0.2.0-py3-none-any.whl", "paho_mqtt-2.1.0-py3-none-any.whl"):
        (wheels / name).write_bytes(name.encode())
    good = tmp_path / "good.tar.gz"
    good.write_bytes(release.tarball(wheels, sorted(p.name for p in wheels.iterdir())))
    assert release.wheelhouse_wheels(good, "0.2.0") == sorted(p.name for p in wheels.iterdir())
    assert good.read_bytes() == release.tarball(wheels, [p.name for p in wheels.iterdir()])
    with pytest.raises(ProvinceError, match=r"does not hold loa-0\.3\.0"):
        release.wheelhouse_wheels(good, "0.3.0")
    (tmp_path / "plain").write_bytes(b"not gzip")
    with pytest.raises(ProvinceError, match="not a gzip tarball"):
        release.wheelhouse_wheels(tmp_path / "plain", "0.2.0")
    (wheels / "sub").mkdir()
    (wheels / "sub" / "loa-0.2.0-py3-none-any.whl").write_bytes(b"x")
    nested = tmp_path / "nested.tar.gz"
    nested.write_bytes(release.tarball(wheels, ["sub/loa-0.2.0-py3-none-any.whl"]))
    with pytest.raises(ProvinceError, match="more than wheels"):
        release.wheelhouse_wheels(nested, "0.2.0")


# -- signing -----------------------------------------------------------------------------------


def test_sign_writes_a_release_envelope_the_keyring_accepts_and_logs_it(tmp_path: Path) -> None:
    desk = Desk(tmp_path, release_threshold=2)
    assert desk.sign("rel1", "rel2") == 0
    envelope = (desk.home / "release.json").read_bytes()
    parsed = dsse.parse_envelope(envelope, len(envelope))
    assert parsed.payload_type == PAYLOAD_TYPES["release"] == "application/vnd.loa.release+json"
    doc = json.loads(parsed.body)
    artifact = release.Artifact.of(desk.wheelhouse("0.2.0"))
    assert doc["artifact"]["sha256"] == artifact.sha256
    assert doc["artifact"]["bytes"] == artifact.bytes
    assert (doc["issuer"], doc["target"], doc["version"]) == ("25", "25/08230", "0.2.0")
    log = verify_log(log_path(desk.home))
    assert log.ok
    last = log.entries[-1]
    assert (last.kind, last.issuer, last.target, last.label) == ("release", "25", "25/08230",
                                                                 "v0.2.0")  # fmt: skip


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        (("rel1",), "threshold-not-met"),  # 1 of the 2 the keyring wants
        (("rel1", "stranger"), "threshold-not-met"),
        (("playlist", "command"), "unknown-key|threshold-not-met"),  # not release keys
    ],
)
def test_sign_refuses_what_the_published_keyring_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: Sequence[str], words: str
) -> None:
    desk = Desk(tmp_path, release_threshold=2)
    entries = len(verify_log(log_path(desk.home)).entries)
    assert desk.sign(*keys) == 1
    err = capsys.readouterr().err
    assert any(w in err for w in words.split("|")), err
    assert not (desk.home / "release.json").exists()
    assert len(verify_log(log_path(desk.home)).entries) == entries  # nothing logged


def test_sign_refuses_when_the_keyring_has_no_release_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desk = Desk(tmp_path, release_threshold=None)
    desk.publish_keyring(1, with_release=False)
    assert desk.sign("rel1") == 1
    assert "no 'release' role" in capsys.readouterr().err


def test_sign_refuses_a_target_outside_the_province_and_a_foreign_artifact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desk = Desk(tmp_path)
    assert desk.sign("rel1", target="26/09001") == 1
    assert "not in province 25" in capsys.readouterr().err
    desk.wheelhouse("0.1.9").rename(desk.wheelhouse("0.2.0"))  # 0.1.9's wheels, named 0.2.0
    assert desk.sign("rel1") == 1
    assert "does not hold loa-0.2.0" in capsys.readouterr().err


def test_sign_without_a_registry_checks_the_body_and_signatures_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desk = Desk(tmp_path, release_threshold=None)
    (desk.home / "registry.db").unlink()
    assert desk.sign("rel1") == 0
    assert "not checked against one" in capsys.readouterr().out


# -- topic and ACL -----------------------------------------------------------------------------


def test_a_release_goes_retained_to_its_target_and_issuer(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    assert desk.sign("rel1", target="25/08230/08230-01") == 0
    outgoing = route((desk.home / "release.json").read_bytes(), NOW)
    assert outgoing.topic == "loa/v1/25/08230/08230-01/release/25"
    assert (outgoing.kind, outgoing.label, outgoing.retain, outgoing.expiry_s) == (
        "release", "v0.2.0", True, None,
    )  # fmt: skip


def test_stations_read_the_release_topics_of_their_province_commune_and_own() -> None:
    rules = acl.station_rules(A)
    assert [r for r in rules if "/release/" in r] == [
        "topic read loa/v1/25/release/+",
        "topic read loa/v1/25/08230/release/+",
        f"topic read loa/v1/{A}/release/+",
    ]
    with pytest.raises(ValueError, match="reserved topic word"):
        acl.parse_station_id("25/08230/release")


def test_release_publish_takes_only_releases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desk = Desk(tmp_path)
    keyring = desk.home / "keyring-1.json"
    assert run("release", "publish", keyring, "--home", desk.home, "--broker", "mqtts://x:1") == 1
    assert "is a keyring, not a release" in capsys.readouterr().err


# -- updates -----------------------------------------------------------------------------------


class Reports:
    """Heartbeats, births and events stored as the collector stores them."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.seq: dict[tuple[str, str], int] = {}

    @staticmethod
    def now() -> str:
        # The collector's clock, like the one that stamps what is published.
        return received_at_text(datetime.now(UTC))

    def _next(self, station: str, kind: str) -> int:
        seq = self.seq.get((station, kind), -1) + 1
        self.seq[(station, kind)] = seq
        return seq

    def heartbeat(self, station: str, version: str) -> None:
        seq = self._next(station, "heartbeat")
        doc = {"kind": "heartbeat", "schema": 1, "station": station, "seq": seq, "session": 1,
               "ts": "2026-11-22T01:00:00Z", "state": "idle", "agent_version": version}  # fmt: skip
        self.registry.store_report(
            station, "heartbeat", seq, 1, json.dumps(doc).encode(), None, self.now()
        )

    def birth(self, station: str, version: str, at: datetime) -> None:
        doc = {"online": True, "station": station, "session": 2, "agent_version": version}
        self.registry.set_station_state(station, True, json.dumps(doc).encode(),
                                        received_at_text(at))  # fmt: skip

    def event(self, station: str, code: str, version: str, reason: str | None = None) -> None:
        seq = self._next(station, "event")
        fields: dict[str, Any] = {"version": version, "previous": "0.1.0"}
        if reason is not None:
            fields["reason"] = reason
        doc = event_body(StationId.parse(station), seq, 1, NOW, "update", code, "", fields)
        self.registry.store_report(
            station, "event", seq, 1, json.dumps(doc).encode(), None, self.now()
        )


def publish_release(registry: Registry, target: str, version: str, expires: datetime) -> None:
    doc = good_body(target=target, version=version, expires=expires.isoformat())
    registry.record_published(
        f"loa/v1/{target}/release/25", "release", "25", target, f"v{version}",
        json.dumps(doc).encode(), b"{}",
    )  # fmt: skip


def states(registry: Registry, target: str = "25") -> dict[str, tuple[Any, ...]]:
    later = datetime.now(UTC) + timedelta(seconds=1)
    return {
        u.station: (u.running, u.release, u.state, u.reason)
        for u in release.updates(registry, target, later)
    }


def test_updates_follow_each_station_through_its_events(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    stations = [f"25/08230/08230-{n:02d}" for n in range(3, 10)]
    far = datetime.now(UTC) + timedelta(days=30)
    with Registry(desk.home / "registry.db") as registry:
        for station in stations:
            registry.add_station(StationId.parse(station), b"cert", "00" * 32)
        reports = Reports(registry)
        for station in (A, B, C, *stations):
            reports.heartbeat(station, "0.1.0")
        assert set(states(registry).values()) == {("0.1.0", None, "up to date", None)}

        publish_release(registry, "25/08230", "0.2.0", far)
        s3, s4, s5, s6, s7, s8, s9 = stations
        reports.event(B, "update-available", "0.2.0")
        reports.event(s3, "update-waiting", "0.2.0")
        reports.event(s4, "update-staged", "0.2.0")
        reports.event(s5, "update-failed", "0.2.0", "pip install failed")
        reports.event(s6, "update-rolled-back", "0.2.0", "did not confirm within 600 s")
        reports.event(s7, "update-staged", "0.2.0")
        reports.event(s7, "update-applied", "0.2.0")
        reports.heartbeat(s8, "0.2.0")  # running it: applied, whatever it said before
        reports.event(s9, "update-refused", "0.2.0", "update-incompatible")
        reports.event(s9, "update-failed", "0.1.9", "an older release's failure")
        found = states(registry)
        assert found == {
            A: ("0.1.0", "0.2.0", "pending", None),
            B: ("0.1.0", "0.2.0", "pending", None),
            C: ("0.1.0", None, "up to date", None),  # another commune: no release for it
            s3: ("0.1.0", "0.2.0", "waiting", None),
            s4: ("0.1.0", "0.2.0", "waiting", None),
            s5: ("0.1.0", "0.2.0", "failed", "pip install failed"),
            s6: ("0.1.0", "0.2.0", "rolled back", "did not confirm within 600 s"),
            s7: ("0.1.0", "0.2.0", "applied", None),
            s8: ("0.2.0", "0.2.0", "applied", None),
            s9: ("0.1.0", "0.2.0", "failed", "update-incompatible"),
        }
        assert set(states(registry, "25/08231")) == {C}


def test_updates_pick_the_highest_current_release_covering_a_station(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    far = datetime.now(UTC) + timedelta(days=30)
    with Registry(desk.home / "registry.db") as registry:
        reports = Reports(registry)
        reports.heartbeat(A, "0.1.0")
        reports.heartbeat(B, "0.1.0")
        reports.birth(B, "0.3.0", datetime.now(UTC) + timedelta(seconds=1))  # later: it counts
        publish_release(registry, "25", "0.2.0", far)
        publish_release(registry, A, "0.3.0", far)
        publish_release(registry, "25/08231", "0.4.0", far)
        publish_release(registry, "25/08231", "0.2.1", far)  # replaces 0.4.0 on that topic
        found = states(registry)
        assert found[A] == ("0.1.0", "0.3.0", "pending", None)
        assert found[B] == ("0.3.0", "0.2.0", "up to date", None)  # ahead of its release
        assert found[C] == (None, "0.2.1", "pending", None)
        publish_release(registry, "25", "0.3.0", datetime.now(UTC) - timedelta(seconds=1))
        assert states(registry)[C] == (None, "0.3.0", "expired", None)


def test_updates_cli_prints_a_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desk = Desk(tmp_path)
    with Registry(desk.home / "registry.db") as registry:
        Reports(registry).heartbeat(A, "0.1.0")
        publish_release(registry, "25/08230", "0.2.0", datetime.now(UTC) + timedelta(days=3))
    capsys.readouterr()
    assert run("updates", "--home", desk.home, "--target", "25/08230") == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == [
        "station", "running", "release", "for", "state", "since", "reason",
    ]  # fmt: skip
    assert f"{A}  0.1.0    0.2.0    25/08230  pending" in table
    assert run("updates", "--home", desk.home, "--json") == 0
    rows = {r["station"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {A, B, C}
    assert rows[B]["running"] is None and rows[B]["state"] == "pending"
    assert rows[C]["release"] is None and rows[C]["state"] == "unknown"
    assert run("updates", "--home", desk.home, "--target", "26") == 1
