"""``loa-agent safe-off`` (the unit's ``ExecStopPost``) run as systemd runs it, with
``LOA_HAL=sim``: the amplifier and every zone relay end off, for relay boards of either
polarity, and a configuration it cannot read is a usage error."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.core.targets import StationId
from provisioning.init import InitRequest, provision
from tests.harness.station_proc import AMP_PIN, BIN, NORTH_PIN, SOUTH_PIN
from tests.harness.trust import STATION, VECTORS

pytestmark = pytest.mark.integration


def provisioned(directory: Path, active_high: bool) -> Path:
    result = provision(
        InitRequest(
            StationId.parse(STATION),
            (VECTORS / "keyring-v1.json").read_bytes(),
            directory,
            clock_trust="system",
        ),
        datetime.now(UTC),
    )
    config = result.config_path.read_text()
    config = config.replace(
        "[gpio]\n", f"[gpio]\namp_pin = {AMP_PIN}\nactive_high = {str(active_high).lower()}\n"
    )
    config = config.replace(
        "[gpio.zones]\n", f"[gpio.zones]\nnorth = {NORTH_PIN}\nsouth = {SOUTH_PIN}\n"
    )
    result.config_path.write_text(config)
    return result.config_path


def safe_off(config: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LOA_HAL="sim")
    return subprocess.run(
        [str(BIN / "loa-agent"), "safe-off", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("active_high", [True, False], ids=["active-high", "active-low"])
def test_every_relay_ends_off(tmp_path: Path, active_high: bool) -> None:
    config = provisioned(tmp_path / "station", active_high)
    done = safe_off(config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "safe-off: amp=off north=off south=off"
    history = json.loads((tmp_path / "station" / "state" / "sim-pins-safe-off.json").read_text())
    assert set(history) == {str(AMP_PIN), str(NORTH_PIN), str(SOUTH_PIN)}
    # Off is a low pin on an active-high board, a high one on an active-low board; the pin
    # never showed "on" on its way there.
    off = not active_high
    for pin, states in history.items():
        assert states[-1][1] is off, (pin, states)
        assert all(state is off for _, state in states[1:]), (pin, states)


def test_an_unreadable_config_is_a_usage_error(tmp_path: Path) -> None:
    done = safe_off(tmp_path / "missing.toml")
    assert done.returncode == 2
    assert "loa-agent:" in done.stderr
