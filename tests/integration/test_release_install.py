"""The install side of signed releases (docs/releases.md) on real parts: wheels of this project
built at three versions, release venvs under a temporary PREFIX, pip installing offline from a
signed release's wheelhouse, and ``install/loa-boot-guard`` run by ``/bin/sh`` the way systemd
runs it before each start.

The station's ``releases/0.1.0`` is seeded from this checkout's ``.venv`` as ``release-install``
seeds a new release (its site-packages without ``loa``), then given the 0.1.0 wheel; the wheels
are built once per module from copies of the checkout with the version changed (0.1.2 is broken:
``loa-agent run`` raises, ``--version`` still answers, as a release that passes the smoke test
and then fails in service would). Building uses pip's isolated build environment (setuptools
from the package registry pip is configured with, or its cache).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.core import dsse
from tests.harness import trust
from tests.harness.clock import FakeClock
from tests.harness.release_build import (
    GUARD,
    build_wheel,
    clean_env,
    make_release,
    run,
    site_packages,
)
from tests.harness.trust import envelope, keyid, keyring_body, make_station, public_hex

pytestmark = pytest.mark.integration

RELEASE_TYPE = "application/vnd.loa.release+json"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    work = tmp_path_factory.mktemp("wheel-src")
    return {
        "0.1.0": build_wheel(out, work, "0.1.0"),
        "0.1.1": build_wheel(out, work, "0.1.1"),
        "0.1.2": build_wheel(out, work, "0.1.2", broken=True),
    }


def keyring_with_release_role() -> bytes:
    """keyring-v1 plus a release key (new1, the province's scope) and the release role."""
    doc = keyring_body(1)
    doc["keys"][keyid("new1")] = {
        "scheme": "ed25519",
        "public": public_hex("new1"),
        "scope": ["25"],
    }
    doc["roles"]["release"] = {"keyids": [keyid("new1")], "threshold": 1}
    return envelope("keyring", doc, "root1", "root2")


class Station:
    """A provisioned station directory and an install PREFIX with releases/0.1.0 current."""

    def __init__(self, base: Path, wheel: Path) -> None:
        now = datetime.now(UTC)
        made = make_station(base / "station", FakeClock(now), keyring_with_release_role())
        made.store.close()
        self.config = base / "station" / "station.toml"
        self.updates = made.config.paths.state / "updates"
        self.prefix = base / "opt-loa"
        make_release(self.prefix, wheel, "0.1.0")
        os.symlink("releases/0.1.0", self.prefix / "current")

    def current(self) -> str:
        return os.readlink(self.prefix / "current")

    def stage(
        self,
        version: str,
        wheel: Path | None,
        signer: str = "new1",
        tamper: bool = False,
        **changes: Any,
    ) -> None:
        """What the agent leaves for the guard: the envelope, the artifact, request.json."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            if wheel is not None:
                tar.add(wheel, arcname=wheel.name)
        artifact = buffer.getvalue()
        now = datetime.now(UTC)
        body = {
            "kind": "release", "schema": 1, "issuer": "25", "target": "25/08230",
            "version": version, "min_version": "0.1.0",
            "issued_at": (now - timedelta(hours=1)).isoformat(timespec="seconds"),
            "expires": (now + timedelta(days=30)).isoformat(timespec="seconds"),
            "artifact": {
                "url": f"https://media.example.vn/25/loa-{version}.tar.gz",
                "sha256": hashlib.sha256(artifact).hexdigest(),
                "bytes": len(artifact),
            },
        }  # fmt: skip
        body.update(changes)
        raw = json.dumps(body, separators=(",", ":")).encode()
        staged = self.updates / version
        staged.mkdir(parents=True, exist_ok=True)
        (staged / "release.json").write_bytes(
            dsse.sign(RELEASE_TYPE, raw, [trust.test_key(signer)])
        )
        if tamper:  # one byte of the compressed stream changed after signing
            artifact = artifact[:-5] + bytes([artifact[-5] ^ 1]) + artifact[-4:]
        (staged / "artifact.tar.gz").write_bytes(artifact)
        request = {"version": version, "staged_at": now.isoformat(timespec="seconds")}
        (self.updates / "request.json").write_text(json.dumps(request))

    def guard(self) -> subprocess.CompletedProcess[str]:
        """One start's ExecStartPre, as systemd runs it (the shell is POSIX sh)."""
        command = ["/bin/sh", str(GUARD), "--config", str(self.config), "--prefix"]
        done = subprocess.run(
            [*command, str(self.prefix)], capture_output=True, text=True, timeout=600,
            env=clean_env(),
        )  # fmt: skip
        return done

    def start(self) -> subprocess.CompletedProcess[str]:
        """ExecStart: the agent of the release `current` names."""
        agent = self.prefix / "current" / "bin" / "loa-agent"
        return subprocess.run(
            [str(agent), "run", "--config", str(self.config)],
            capture_output=True, text=True, timeout=60, env=clean_env(),
        )  # fmt: skip

    def version_of(self, release: str) -> str:
        agent = self.prefix / release / "bin" / "loa-agent"
        done = run([str(agent), "--version"])
        return done.stdout.strip()

    def read(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.updates / name).read_text())
        return doc

    def has(self, name: str) -> bool:
        return (self.updates / name).exists()


@pytest.fixture
def station(tmp_path: Path, wheels: dict[str, Path]) -> Station:
    return Station(tmp_path, wheels["0.1.0"])


def test_an_update_installs_then_a_broken_one_rolls_back_after_failed_starts(
    station: Station, wheels: dict[str, Path]
) -> None:
    assert station.version_of("current") == "0.1.0"
    station.stage("0.1.1", wheels["0.1.1"])
    guarded = station.guard()
    assert guarded.returncode == 0, guarded.stderr
    assert station.current() == "releases/0.1.1", guarded.stderr
    assert station.version_of("current") == "0.1.1"
    trying = station.read("trying.json")
    assert (trying["version"], trying["previous"], trying["attempts"]) == ("0.1.1", "0.1.0", 0)
    switched = datetime.fromisoformat(trying["switched_at"])
    deadline = datetime.fromisoformat(trying["deadline"])
    assert deadline - switched == timedelta(seconds=600)  # [update] confirm_s's default
    assert trying["deadline_epoch"] == int(deadline.timestamp())
    assert not station.has("request.json") and not station.has("failed.json")
    # The new release is its own: its own loa, no trace of the old one's (here: editable) loa.
    new_site = site_packages(station.prefix / "releases/0.1.1")
    assert sorted(p.name for p in new_site.glob("loa-*.dist-info")) == ["loa-0.1.1.dist-info"]
    assert not list(new_site.glob("__editable__*"))
    assert (new_site / "agent" / "cli.py").exists()
    assert (new_site / "paho").is_dir()  # the dependencies came from the running release

    # A start of the new release is counted; then the new agent confirms (as the agent side
    # does: applied.json, trying.json gone) and the guard leaves the release alone.
    assert station.guard().returncode == 0
    assert station.read("trying.json")["attempts"] == 1
    applied = {"version": "0.1.1", "previous": "0.1.0", "confirmed_at": trying["switched_at"]}
    (station.updates / "applied.json").write_text(json.dumps(applied))
    (station.updates / "trying.json").unlink()
    assert station.guard().returncode == 0
    assert station.current() == "releases/0.1.1"
    assert not station.has("trying.json") and not station.has("rolled-back.json")

    # 0.1.2 passes the smoke test but cannot run: systemd starts it, restarts it...
    station.stage("0.1.2", wheels["0.1.2"])
    assert station.guard().returncode == 0
    assert station.current() == "releases/0.1.2"
    assert station.version_of("current") == "0.1.2"
    starts = 0
    while station.current() == "releases/0.1.2":
        started = station.start()
        assert started.returncode != 0
        assert "release 0.1.2 is broken" in started.stderr
        starts += 1
        assert starts <= 4
        guarded = station.guard()
        assert guarded.returncode == 0, guarded.stderr
    # ...until the guard rolls back: the first start and three counted attempts.
    assert starts == 4
    assert station.current() == "releases/0.1.1"
    rolled = station.read("rolled-back.json")
    assert (rolled["version"], rolled["previous"]) == ("0.1.2", "0.1.1")
    assert rolled["reason"] == "failed to start 4 times"
    assert not station.has("trying.json")
    assert station.version_of("current") == "0.1.1"
    # Three releases at most: the recorded previous (0.1.0) was kept for this trial.
    names = sorted(p.name for p in (station.prefix / "releases").iterdir())
    assert names == ["0.1.0", "0.1.1", "0.1.2"]


def test_a_tampered_artifact_a_downgrade_and_a_stranger_are_refused(
    station: Station, wheels: dict[str, Path]
) -> None:
    cases = [
        (dict(version="0.1.1", wheel=wheels["0.1.1"], tamper=True), "media-hash-mismatch"),
        (dict(version="0.0.9", wheel=wheels["0.1.0"], min_version="0.0.1"), "rollback"),
        (dict(version="0.1.0", wheel=wheels["0.1.0"]), "rollback"),
        (dict(version="0.1.1", wheel=wheels["0.1.1"], signer="stranger"), "unknown-key"),
        (dict(version="0.1.1", wheel=wheels["0.1.1"], signer="playlist"), "threshold-not-met"),
        (
            dict(version="0.1.1", wheel=wheels["0.1.1"], min_version="0.1.1"),
            "update-incompatible",
        ),
        (dict(version="0.1.1", wheel=None), "wheelhouse: no loa-0.1.1"),
    ]
    for case, code in cases:
        station.stage(**case)  # type: ignore[arg-type]
        guarded = station.guard()
        assert guarded.returncode == 0, guarded.stderr  # the old release starts as it was
        failed = station.read("failed.json")
        assert failed["version"] == case["version"]
        assert failed["reason"].startswith(code), (code, failed["reason"])
        assert code in guarded.stderr
        assert station.current() == "releases/0.1.0"
        assert not station.has("request.json") and not station.has("trying.json")
        assert sorted(p.name for p in (station.prefix / "releases").iterdir()) == ["0.1.0"]
        (station.updates / "failed.json").unlink()
    assert station.version_of("current") == "0.1.0"


def test_a_release_that_does_not_confirm_by_its_deadline_is_rolled_back(
    station: Station, wheels: dict[str, Path]
) -> None:
    station.stage("0.1.1", wheels["0.1.1"])
    done = run(
        [str(station.prefix / "current/bin/loa-agent"), "release-install",
         "--config", str(station.config), "--prefix", str(station.prefix)]
    )  # fmt: skip
    assert "0.1.0 -> 0.1.1" in done.stdout
    assert station.current() == "releases/0.1.1"
    # The new agent ran, but never confirmed; its deadline passed while it ran (an hour ago).
    trying = station.read("trying.json")
    for key in ("switched_at", "deadline"):
        moment = datetime.fromisoformat(trying[key]) - timedelta(hours=1)
        trying[key] = moment.isoformat().replace("+00:00", "Z")
    trying["deadline_epoch"] -= 3600
    (station.updates / "trying.json").write_text(json.dumps(trying))
    guarded = station.guard()
    assert guarded.returncode == 0, guarded.stderr
    assert station.current() == "releases/0.1.0"
    rolled = station.read("rolled-back.json")
    assert (rolled["version"], rolled["previous"]) == ("0.1.1", "0.1.0")
    assert rolled["reason"] == "did not confirm within 600 s"
    assert not station.has("trying.json")
    # The next start is the old release's, and the guard has nothing more to do.
    assert station.guard().returncode == 0
    assert station.current() == "releases/0.1.0"


def test_the_guard_cannot_go_back_to_a_missing_release_and_does_not_start(
    station: Station, wheels: dict[str, Path]
) -> None:
    station.stage("0.1.1", wheels["0.1.1"])
    assert station.guard().returncode == 0
    assert station.current() == "releases/0.1.1"
    trying = station.read("trying.json")
    trying["attempts"] = 3
    (station.updates / "trying.json").write_text(json.dumps(trying))
    shutil.rmtree(station.prefix / "releases/0.1.0")
    guarded = station.guard()
    assert guarded.returncode == 1  # the one case in which the unit does not start
    assert "cannot go back to 0.1.0" in guarded.stderr
    assert station.current() == "releases/0.1.1"


def test_a_power_cut_between_trying_json_and_the_switch_ends_the_trial(
    station: Station,
) -> None:
    # release-install writes trying.json, then switches: the power went in between.
    trying = {
        "version": "0.1.1", "previous": "0.1.0", "switched_at": "2026-11-22T08:00:00Z",
        "deadline": "2026-11-22T08:10:00Z", "deadline_epoch": 4102444800, "attempts": 0,
    }  # fmt: skip
    station.updates.mkdir(parents=True, exist_ok=True)
    (station.updates / "trying.json").write_text(json.dumps(trying, indent=1))
    assert station.guard().returncode == 0
    assert station.current() == "releases/0.1.0"
    assert station.read("rolled-back.json")["reason"] == "the switch to 0.1.1 did not happen"
    assert not station.has("trying.json")


def guard_function(name: str) -> str:
    text = GUARD.read_text()
    start = text.index(f"\n{name}() {{")
    return text[start : text.index("\n}\n", start) + 3]


def test_the_guard_reads_the_state_directory_as_the_agent_does(tmp_path: Path) -> None:
    functions = tmp_path / "functions.sh"
    functions.write_text(guard_function("config_state") + guard_function("state_dir"))
    config = tmp_path / "etc" / "station.toml"
    config.parent.mkdir()
    for state_line, expected in (
        ('state = "/var/lib/loa/state"  # as init writes it', Path("/var/lib/loa/state")),
        ("state = 'rel/state'", config.parent / "rel/state"),
        ("", config.parent / "state"),  # agent/config.py's default
    ):
        text = f'[station]\nname = "x"\n\n[paths]\ncache = "c"\n{state_line}\n[audio]\n'
        config.write_text(text + 'state = "not/this"\n')
        script = f'. "{functions}"; CONFIG="{config}"; state_dir'
        done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True)
        assert done.stdout.strip() == str(expected), done.stderr
