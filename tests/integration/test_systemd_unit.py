"""systemd/loa-agent.service as systemd reads it: ``systemd-analyze verify`` finds nothing to
say (every key known, every syscall group and device class real), the exposure ``security
--offline=true`` rates is at most 2.5, and it keeps what the agent relies on (Type=notify with
a watchdog, safe-off after every stop)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.unit_security import TARGET, UNIT, analyze
from tests.harness.station_proc import BIN

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("systemd-analyze") is None,
        reason="systemd-analyze is not installed (Debian package: systemd; make sysdeps)",
    ),
]
INSTALLED = "/opt/loa/current/bin/loa-agent"
GUARD = "/opt/loa/bin/loa-boot-guard"
CHECKOUT_GUARD = Path(__file__).resolve().parents[2] / "install" / "loa-boot-guard"


def settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_exposure_is_at_most_the_target() -> None:
    exposure, counted = analyze(UNIT)
    assert exposure <= TARGET, counted


def test_systemd_finds_nothing_to_say_about_the_unit(tmp_path: Path) -> None:
    # verify checks that the Exec binaries exist: point them at this checkout's, as installed.
    unit = tmp_path / "loa-agent.service"
    text = UNIT.read_text()
    assert INSTALLED in text
    assert GUARD in text
    text = text.replace(INSTALLED, str(BIN / "loa-agent"))
    unit.write_text(text.replace(GUARD, str(CHECKOUT_GUARD)))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    # verify exits 0 after warnings such as an unknown key: any word from it is a finding.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_unit_keeps_what_the_agent_relies_on() -> None:
    unit = settings()
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert float(unit["WatchdogSec"][0]) > 0
    assert unit["Restart"] == ["on-failure"]
    assert any("safe-off --config /etc/loa/station.toml" in v for v in unit["ExecStopPost"])
    assert unit["ExecStart"] == [f"{INSTALLED} run --config /etc/loa/station.toml"]
    # Updates (docs/releases.md): the guard as root before every start, outside any release;
    # the agent's exit 75 (an update staged) restarts it into the install.
    assert unit["ExecStartPre"] == [f"+{GUARD} --config /etc/loa/station.toml --prefix /opt/loa"]
    assert unit["RestartForceExitStatus"] == ["75"]
    assert unit["User"] == ["loa"]
    assert "LOA_FAULT" not in UNIT.read_text()  # the fault points stay a test's business
