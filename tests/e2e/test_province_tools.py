"""The province's desk tools as an officer runs them, feeding a station provisioned from them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.trust import command_body, playlist_body

BIN = Path(sys.executable).parent
ROLES = ("root1", "root2", "root3", "playlist", "command", "emergency", "maintenance", "c08230")


@pytest.fixture(autouse=True)
def province_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``sign`` and ``keyring`` log into the province home: keep it out of the working tree."""
    home = tmp_path / "province-home"
    monkeypatch.setenv("LOA_PROVINCE_HOME", str(home))
    return home


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, check=False, timeout=60
    )


def province(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run(BIN / "loa-province", *args)


def make_keys(keys: Path) -> None:
    for name in ROLES:
        result = province("keygen", name, "--dir", keys)
        assert result.returncode == 0, result.stderr
        assert "fingerprint" in result.stdout


def build_keyring(
    keys: Path, out: Path, version: int = 1, *extra: str | Path
) -> subprocess.CompletedProcess[str]:
    return province(
        "keyring", "--province", "25", "--version", str(version),
        "--expires", "2030-01-01T00:00:00+07:00",
        "--key", f"root={keys / 'root1.pub'}", "--key", f"root={keys / 'root2.pub'}",
        "--key", f"root={keys / 'root3.pub'}", "--threshold", "root=2",
        "--key", f"playlist={keys / 'playlist.pub'}",
        "--key", f"playlist={keys / 'c08230.pub'}@25/08230",
        "--key", f"command={keys / 'command.pub'}",
        "--key", f"emergency={keys / 'emergency.pub'}",
        "--key", f"maintenance={keys / 'maintenance.pub'}",
        "--out", out, *extra,
    )  # fmt: skip


def test_keygen_writes_private_key_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    assert province("keygen", "root1", "--dir", tmp_path).returncode == 0
    mode = stat.S_IMODE((tmp_path / "root1.key").stat().st_mode)
    assert mode == 0o600
    assert len((tmp_path / "root1.pub").read_text().strip()) == 64
    before = (tmp_path / "root1.key").read_bytes()
    again = province("keygen", "root1", "--dir", tmp_path)
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
    assert (tmp_path / "root1.key").read_bytes() == before


def test_keyring_needs_its_root_threshold(tmp_path: Path) -> None:
    make_keys(tmp_path)
    out = tmp_path / "k.json"
    one = build_keyring(tmp_path, out, 1, "--sign", tmp_path / "root1.key")
    assert one.returncode == 1
    assert "threshold-not-met" in one.stderr
    assert not out.exists()
    wrong = build_keyring(tmp_path, out, 1, "--sign", tmp_path / "playlist.key")
    assert wrong.returncode == 1 and not out.exists()


def test_keygen_keyring_provision_sign_ingest(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    make_keys(keys)
    ring = tmp_path / "keyring-v1.json"
    built = build_keyring(keys, ring, 1, "--sign", keys / "root1.key", "--sign", keys / "root3.key")
    assert built.returncode == 0, built.stderr

    station = tmp_path / "station"
    init = run(
        BIN / "loa-provision", "init", "--province", "25", "--commune", "08230",
        "--station", "08230-01", "--keyring", ring, "--dir", station,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    assert "root" in init.stdout and "2/3" in init.stdout

    body = tmp_path / "playlist.json"
    body.write_text(json.dumps(playlist_body(version=3), ensure_ascii=False, indent=1))
    env_file = tmp_path / "playlist.env.json"
    signed = province("sign", body, "--key", keys / "playlist.key", "--out", env_file)
    assert signed.returncode == 0, signed.stderr

    commune_body = tmp_path / "commune.json"
    commune_body.write_text(json.dumps(playlist_body(issuer="08230", target="25/08230")))
    commune_env = tmp_path / "commune.env.json"
    assert (
        province(
            "sign", commune_body, "--key", keys / "c08230.key", "--out", commune_env
        ).returncode
        == 0
    )

    stop_body = tmp_path / "stop.json"
    stop_body.write_text(
        json.dumps(
            command_body(issued_at="2026-11-01T00:00:00+07:00", expires="2036-01-01T00:00:00+07:00")
        )
    )
    stop = province("sign", stop_body, "--key", keys / "command.key")
    assert stop.returncode == 0
    stop_env = tmp_path / "stop.env.json"
    stop_env.write_text(stop.stdout)

    env = dict(os.environ, LOA_CLOCK_TRUST="system")
    ingest = run(
        BIN / "loa-agent", "ingest", "--config", station / "station.toml",
        env_file, commune_env, stop_env, env=env,
    )  # fmt: skip
    assert ingest.stdout.splitlines() == [
        "accepted playlist 25 v3",
        "accepted playlist 08230 v1",
        "accepted command 25 t-0001",
    ], ingest.stderr
    assert ingest.returncode == 0

    rotated = tmp_path / "keyring-v2.json"
    rotation = build_keyring(
        keys, rotated, 2, "--sign", keys / "root1.key", "--sign", keys / "root2.key",
        "--previous", ring,
    )  # fmt: skip
    assert rotation.returncode == 0, rotation.stderr
    applied = run(
        BIN / "loa-agent", "ingest", "--config", station / "station.toml", rotated, env=env
    )
    assert applied.stdout.strip() == "accepted keyring 25 v2"


def test_sign_refuses_a_body_that_fails_the_schema(tmp_path: Path) -> None:
    assert province("keygen", "playlist", "--dir", tmp_path).returncode == 0
    bad = playlist_body()
    bad["slots"][0]["volume"] = 250
    body = tmp_path / "bad.json"
    body.write_text(json.dumps(bad))
    out = tmp_path / "bad.env.json"
    result = province("sign", body, "--key", tmp_path / "playlist.key", "--out", out)
    assert result.returncode == 1
    assert "volume" in result.stderr
    assert not out.exists()
    body.write_text('{"kind": "playlist", "kind": "command"}')
    dup = province("sign", body, "--key", tmp_path / "playlist.key", "--out", out)
    assert dup.returncode == 1 and "duplicate" in dup.stderr
