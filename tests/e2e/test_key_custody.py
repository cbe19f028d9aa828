"""The runbook "a commune key was stolen" of docs/key-custody.md, followed with the real CLIs.

Everything the province does goes through ``loa-province`` with one province home, so its
signing log must end up listing exactly what the province signed. The thief signs with the same
tool on his own machine (his own home): the province's log never sees his signatures, which is
how the runbook tells his playlists from the commune's. The broker is left out: ``publish`` is
checked for the topics it would use, and the station takes the files with ``loa-agent ingest``,
which verifies exactly as on MQTT.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.core.dsse import keyid_of
from province.publish import route
from tests.harness.trust import playlist_body

BIN = Path(sys.executable).parent
DESK_KEYS = ("root1", "root2", "root3", "playlist", "command", "emergency", "maintenance")
STATION_ENV = dict(os.environ, LOA_CLOCK_TRUST="system")


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, check=False, timeout=60
    )


def province(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run(BIN / "loa-province", *args)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


class Desk:
    """The province desk: its keys directory and its province home (where the log lives)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = root / "keys"
        self.home = root / "province-home"

    def keygen(self, name: str) -> str:
        out = ok(province("keygen", name, "--dir", self.keys))
        return out.split("keyid ")[1].split()[0]

    def keyring_out(self, version: int) -> Path:
        return self.root / f"keyring-v{version}.json"

    def try_keyring(
        self, version: int, commune_key: str, *extra: str | Path
    ) -> subprocess.CompletedProcess[str]:
        k = self.keys
        return province(
            "keyring", "--province", "25", "--version", str(version),
            "--expires", "2030-01-01T00:00:00+07:00",
            "--key", f"root={k / 'root1.pub'}", "--key", f"root={k / 'root2.pub'}",
            "--key", f"root={k / 'root3.pub'}", "--threshold", "root=2",
            "--key", f"playlist={k / 'playlist.pub'}",
            "--key", f"playlist={k / (commune_key + '.pub')}@25/08230",
            "--key", f"command={k / 'command.pub'}",
            "--key", f"emergency={k / 'emergency.pub'}",
            "--key", f"maintenance={k / 'maintenance.pub'}",
            "--out", self.keyring_out(version), "--home", self.home, *extra,
        )  # fmt: skip

    def keyring(self, version: int, commune_key: str, *extra: str | Path) -> Path:
        ok(self.try_keyring(version, commune_key, *extra))
        return self.keyring_out(version)


def commune_playlist(directory: Path, version: int, note: str) -> Path:
    body = playlist_body(issuer="08230", target="25/08230", version=version)
    body["slots"][0]["id"] = note  # bodies of different versions differ in more than the number
    path = directory / f"08230-v{version}-{note}.json"
    path.write_text(json.dumps(body, ensure_ascii=False, indent=1))
    return path


def sign(body: Path, key: Path, home: Path) -> Path:
    out = body.with_suffix(".signed.json")
    ok(province("sign", body, "--key", key, "--home", home, "--out", out))
    return out


class Station:
    def __init__(self, directory: Path, keyring: Path) -> None:
        self.config = directory / "station.toml"
        init = run(
            BIN / "loa-provision", "init", "--province", "25", "--commune", "08230",
            "--station", "08230-01", "--keyring", keyring, "--dir", directory,
        )  # fmt: skip
        ok(init)

    def ingest(self, *files: Path) -> list[str]:
        done = run(BIN / "loa-agent", "ingest", "--config", self.config, *files, env=STATION_ENV)
        return done.stdout.splitlines()


def log_entries(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (home / "signing-log.jsonl").read_text().splitlines()]


def test_a_stolen_commune_key_is_rotated_out_as_the_runbook_says(tmp_path: Path) -> None:
    desk = Desk(tmp_path / "desk")
    for name in DESK_KEYS:
        desk.keygen(name)
    stolen_keyid = desk.keygen("c08230")
    keyring_v1 = desk.keyring(1, "c08230", "--sign", desk.keys / "root1.key",
                              "--sign", desk.keys / "root2.key")  # fmt: skip
    station = Station(tmp_path / "station", keyring_v1)

    # Before the theft: the commune's playlist v3, signed at the desk.
    bodies = tmp_path / "bodies"
    bodies.mkdir()
    legit_v3 = sign(commune_playlist(bodies, 3, "legit"), desk.keys / "c08230.key", desk.home)
    assert station.ingest(legit_v3) == ["accepted playlist 08230 v3"]

    # The thief copies c08230.key and signs with it on his own machine; stations take it.
    thief_home = tmp_path / "thief-home"
    forged_v9 = sign(commune_playlist(bodies, 9, "forged"), desk.keys / "c08230.key", thief_home)
    assert station.ingest(forged_v9) == ["accepted playlist 08230 v9"]

    # Runbook step 1: the station reports 08230 v9; the signing log has no such signature.
    signed_by_desk = {(e["issuer"], e["label"]) for e in log_entries(desk.home)}
    assert ("08230", "v3") in signed_by_desk and ("08230", "v9") not in signed_by_desk

    # Step 2: a new commune key.
    new_keyid = desk.keygen("c08230-b")

    # Step 3: keyring v2 without the stolen key. One root is not enough, and a refusal is not
    # logged.
    entries_before = len(log_entries(desk.home))
    refused = desk.try_keyring(
        2, "c08230-b", "--previous", keyring_v1, "--sign", desk.keys / "root2.key"
    )
    assert refused.returncode == 1 and "threshold-not-met" in refused.stderr
    assert not desk.keyring_out(2).exists()
    assert len(log_entries(desk.home)) == entries_before
    roots = ("--sign", desk.keys / "root2.key", "--sign", desk.keys / "root3.key")
    keyring_v2 = desk.keyring(2, "c08230-b", "--previous", keyring_v1, *roots)
    ring = json.loads(base64.b64decode(json.loads(keyring_v2.read_bytes())["payload"]))
    assert stolen_keyid not in ring["keys"] and new_keyid in ring["keys"]

    # Step 4: the new commune key signs the commune's playlist; the version may restart low.
    new_v2 = sign(commune_playlist(bodies, 2, "after-theft"), desk.keys / "c08230-b.key", desk.home)

    # Step 5 (publish): retained on keyring/2, then on the commune's playlist topic, which
    # replaces the thief's retained v9.
    now = datetime.now(UTC)
    topics = [(o.topic, o.retain) for o in (route(keyring_v2.read_bytes(), now),
                                            route(new_v2.read_bytes(), now))]  # fmt: skip
    assert topics == [
        ("loa/v1/25/keyring/2", True),
        ("loa/v1/25/08230/playlist/08230", True),
    ]

    # What the station says. The new key is unknown until keyring v2 arrives ...
    assert station.ingest(new_v2) == ["rejected unknown-key"]
    assert station.ingest(keyring_v2) == ["accepted keyring 25 v2"]
    # ... then the stolen key is unknown: a new forgery and a replay of the old one alike.
    forged_v10 = sign(commune_playlist(bodies, 10, "forged"), desk.keys / "c08230.key", thief_home)
    assert station.ingest(forged_v10, forged_v9) == ["rejected unknown-key"] * 2
    # The rotation reset the floor of issuer 08230: v2 goes in under the thief's v9, once.
    assert station.ingest(new_v2) == ["accepted playlist 08230 v2"]
    again_v1 = sign(commune_playlist(bodies, 1, "too-low"), desk.keys / "c08230-b.key", desk.home)
    assert station.ingest(again_v1) == ["rejected rollback"]

    # Step 6: the signing log lists every signature the desk made, and only those.
    entries = log_entries(desk.home)
    assert [(e["kind"], e["issuer"], e["label"]) for e in entries] == [
        ("keyring", "25", "v1"),
        ("playlist", "08230", "v3"),
        ("keyring", "25", "v2"),
        ("playlist", "08230", "v2"),
        ("playlist", "08230", "v1"),
    ]
    assert entries[1]["keyids"] == [stolen_keyid]
    assert entries[3]["keyids"] == entries[4]["keyids"] == [new_keyid]
    root_ids = {keyid_of(bytes.fromhex((desk.keys / f"{r}.pub").read_text().strip()))
                for r in ("root2", "root3")}  # fmt: skip
    assert set(entries[2]["keyids"]) == root_ids
    assert all("file:" in s and "root" in s for s in entries[2]["signers"])

    table = ok(province("log", "--home", desk.home)).splitlines()
    assert table[0].split()[:3] == ["seq", "time", "(UTC)"]
    assert [row.split()[0] for row in table[1:]] == ["1", "2", "3", "4", "5"]
    assert "v9" not in "\n".join(table) and "v10" not in "\n".join(table)
    assert len(ok(province("log", "--home", desk.home, "--tail", "2")).splitlines()) == 3

    verified = ok(province("log", "--home", desk.home, "--verify")).splitlines()
    assert verified == [
        f"signing log {desk.home / 'signing-log.jsonl'}: 5 entries, hash chain intact",
        f"head {entries[-1]['hash']}",
    ]
    # The thief's machine logged his own signatures, in his own home: nothing reaches the desk's.
    assert [e["label"] for e in log_entries(thief_home)] == ["v9", "v10"]


def test_a_tampered_signing_log_fails_verification_with_its_line(tmp_path: Path) -> None:
    desk = Desk(tmp_path / "desk")
    for name in (*DESK_KEYS, "c08230"):
        desk.keygen(name)
    for version in (1, 2, 3):
        sign(commune_playlist(tmp_path, version, "x"), desk.keys / "c08230.key", desk.home)
    path = desk.home / "signing-log.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[2])

    done = province("log", "--home", desk.home, "--verify")

    assert done.returncode == 1
    assert done.stdout.strip() == (
        f"BROKEN {path}: line 2 holds entry 3 where entry 2 belongs: entry 2 was deleted"
    )
    assert "head" not in done.stdout  # a broken log has no head to write into the register


@pytest.mark.parametrize("spec", ["pkcs11:token=loa-root1;object=root1", "PKCS11:object=x"])
def test_a_hardware_token_spec_is_refused_clearly_and_nothing_is_logged(
    tmp_path: Path, spec: str
) -> None:
    body = commune_playlist(tmp_path, 1, "x")
    home = tmp_path / "home"

    done = province("sign", body, "--key", spec, "--home", home)

    assert done.returncode == 1
    assert "not available in this build" in done.stderr
    assert done.stdout == "" and not (home / "signing-log.jsonl").exists()
