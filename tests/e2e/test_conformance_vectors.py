"""The protocol's conformance suite, run the way an outside check runs it: the real CLIs.

``loa-provision init`` installs ``shared/vectors/keyring-v1.json`` for station 25/08230/08230-01,
then ``loa-agent ingest`` takes the files of ``manifest.json`` in order, one process per file
(state must survive between processes), and every line must be the manifest's verdict.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.harness.trust import VECTORS

BIN = Path(sys.executable).parent
LINE = re.compile(r"\A(accepted (playlist|command|keyring|time) [0-9]{2,5} \S+|rejected [a-z-]+)\Z")


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, check=False, timeout=60
    )


def test_manifest_verdicts_one_process_per_file(tmp_path: Path) -> None:
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    station = manifest["station"].split("/")
    init = run(
        BIN / "loa-provision", "init", "--province", station[0], "--commune", station[1],
        "--station", station[2], "--keyring", VECTORS / "keyring-v1.json", "--dir", tmp_path,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    env = dict(os.environ, LOA_CLOCK_TRUST="system")
    for entry in manifest["files"]:
        result = run(
            BIN / "loa-agent", "ingest", "--config", tmp_path / "station.toml",
            VECTORS / entry["file"], env=env,
        )  # fmt: skip
        line = result.stdout.strip()
        assert LINE.match(line), (entry["file"], result.stdout, result.stderr)
        verdict = "accepted" if line.startswith("accepted") else line.split()[1]
        assert verdict == entry["expect"], (entry["file"], entry["note"], result.stderr)
        assert result.returncode == (0 if verdict == "accepted" else 1)


def test_manifest_in_one_call_exits_1_and_prints_a_line_per_file(tmp_path: Path) -> None:
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    init = run(
        BIN / "loa-provision", "init", "--province", "25", "--commune", "08230",
        "--station", "08230-01", "--keyring", VECTORS / "keyring-v1.json", "--dir", tmp_path,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    files = [VECTORS / e["file"] for e in manifest["files"]]
    env = dict(os.environ, LOA_CLOCK_TRUST="system")
    result = run(
        BIN / "loa-agent", "ingest", "--config", tmp_path / "station.toml", *files, env=env
    )
    lines = result.stdout.splitlines()
    assert len(lines) == len(files)
    got = ["accepted" if ln.startswith("accepted") else ln.split()[1] for ln in lines]
    assert got == [e["expect"] for e in manifest["files"]]
    assert lines[0] == "accepted playlist 25 v1"
    assert lines[14] == "accepted command 25 v-0001"
    assert result.returncode == 1


def test_usage_and_config_errors_exit_2(tmp_path: Path) -> None:
    missing = run(BIN / "loa-agent", "ingest", "--config", tmp_path / "nope.toml", "x.json")
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr
    no_files = run(BIN / "loa-agent", "ingest", "--config", tmp_path / "nope.toml")
    assert no_files.returncode == 2
    (tmp_path / "bad.toml").write_text("[station]\nprovince = 25\n")
    bad = run(BIN / "loa-agent", "ingest", "--config", tmp_path / "bad.toml", "x.json")
    assert bad.returncode == 2
    assert "station.province" in bad.stderr


def test_all_accepted_exits_0(tmp_path: Path) -> None:
    init = run(
        BIN / "loa-provision", "init", "--province", "25", "--commune", "08230",
        "--station", "08230-01", "--keyring", VECTORS / "keyring-v1.json", "--dir", tmp_path,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    env = dict(os.environ, LOA_CLOCK_TRUST="system")
    result = run(
        BIN / "loa-agent", "ingest", "--config", tmp_path / "station.toml",
        VECTORS / "00-playlist-v1.json", VECTORS / "01-playlist-v2.json", env=env,
    )  # fmt: skip
    assert result.stdout.splitlines() == ["accepted playlist 25 v1", "accepted playlist 25 v2"]
    assert result.returncode == 0
