"""``loa-agent ingest`` is safe while the agent runs: the state lock serialises verify-and-write.

Several processes race to ingest the same envelopes into one station. Exactly one of them may
accept each command id and each playlist version; the others must see its result (replay,
no-op). Without the lock two of them could both verify against the old state and both accept.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.trust import command_body, envelope, playlist_body

BIN = Path(sys.executable).parent
VECTORS_KEYRING = Path(__file__).resolve().parents[2].parent / "shared/vectors/keyring-v1.json"


@pytest.mark.integration
def test_racing_ingest_processes_accept_each_id_once(tmp_path: Path) -> None:
    init = subprocess.run(
        [str(BIN / "loa-provision"), "init", "--province", "25", "--commune", "08230",
         "--station", "08230-01", "--keyring", str(VECTORS_KEYRING), "--dir", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    files = []
    for n in range(12):
        path = tmp_path / f"cmd-{n}.json"
        doc = command_body(
            id=f"race-{n}",
            issued_at="2026-11-01T00:00:00+07:00",
            expires="2036-01-01T00:00:00+07:00",
        )
        path.write_bytes(envelope("command", doc, "command"))
        files.append(str(path))
    playlist = tmp_path / "playlist.json"
    playlist.write_bytes(envelope("playlist", playlist_body(version=4), "playlist"))
    files.append(str(playlist))

    env = dict(os.environ, LOA_CLOCK_TRUST="system")
    config = str(tmp_path / "station.toml")
    racers = [
        subprocess.Popen(
            [str(BIN / "loa-agent"), "ingest", "--config", config, *files],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    outputs = [r.communicate(timeout=120)[0].splitlines() for r in racers]
    for n in range(12):
        lines = [out[n] for out in outputs]
        assert lines.count(f"accepted command 25 race-{n}") == 1, lines
        assert lines.count("rejected replay") == 3, lines
    # The playlist: accepted by all four (the later ones as byte-identical no-ops).
    assert [out[12] for out in outputs] == ["accepted playlist 25 v4"] * 4
