"""install/install.sh into a temporary root (``--root``): the whole install, for real, without
touching this machine.

Loa is really installed: a venv made from Debian's python3 (the station's interpreter), the
project and its dependencies installed by pip, exactly as on a Pi. pip takes the dependencies
from the package registry pip is configured with, the one ``make venv`` used for ``.venv`` (and
its cache): no other network. The installer runs from a snapshot of the checkout, so edits made
to the tree while the test runs cannot pass for a change between the two runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHECKOUT = Path(__file__).resolve().parents[2]
# What install.sh reads from a checkout: the package, its metadata, the unit and the docs.
SNAPSHOT = ("install", "systemd", "docs", "pyproject.toml", "README.md")
SNAPSHOT += ("agent", "hal", "provisioning", "province")
VERSION = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]["version"]
MARKER = "# Loa: relays off from power-on until the agent runs (install/install.sh)"

STATION_TOML = """\
[station]
province = "25"
commune = "08230"
name = "08230-01"

[gpio]
amp_pin = 17

[gpio.zones]
market = 27
school = 22

[inputs]
mains = 5
"""
CONFIG_TXT = "# firmware settings\n[pi4]\narm_boost=1\n\n[all]\ndtparam=audio=on\n"


def venv_python() -> str:
    """Debian's python3, as on a station; this test's own interpreter's base where it has none."""
    system = Path("/usr/bin/python3")
    if system.exists():
        check = [system, "-c", "import sys, venv; sys.exit(sys.version_info < (3, 11))"]
        if subprocess.run(check, capture_output=True).returncode == 0:
            return str(system)
    return str(Path(sys.base_prefix) / "bin" / "python3")


def run_install(src: Path, root: Path, *extra: str) -> str:
    command = [
        "bash",
        str(src / "install" / "install.sh"),
        "--root",
        str(root),
        "--no-apt",
        "--python",
        venv_python(),
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def tree_state(root: Path) -> dict[str, str]:
    """Every path under root with its kind, mode and content hash (links: their target)."""
    state: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            info = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                state[key] = f"link {os.readlink(path)}"
            elif stat.S_ISDIR(info.st_mode):
                state[key] = f"dir {info.st_mode:o}"
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                state[key] = f"file {info.st_mode:o} {digest}"
    return state


class Installed:
    def __init__(self, src: Path, root: Path) -> None:
        self.src, self.root = src, root
        self.first = run_install(src, root, "--set-boot-gpio")
        self.config_txt_after_first = (root / "boot/firmware/config.txt").read_text()
        self.state_after_first = tree_state(root)
        self.second = run_install(src, root, "--set-boot-gpio")
        self.state_after_second = tree_state(root)
        self.actions_after_second = (root / "loa-install-actions.log").read_text()

    @property
    def release(self) -> Path:
        return self.root / "opt/loa/releases" / VERSION


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    src = tmp_path_factory.mktemp("checkout")
    for part in SNAPSHOT:
        origin = CHECKOUT / part
        if origin.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(origin, src / part, ignore=ignore)
        else:
            shutil.copy2(origin, src / part)
    root = tmp_path_factory.mktemp("root")
    (root / "etc/loa").mkdir(parents=True)
    (root / "etc/loa/station.toml").write_text(STATION_TOML)
    (root / "boot/firmware").mkdir(parents=True)
    (root / "boot/firmware/config.txt").write_text(CONFIG_TXT)
    return Installed(src, root)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_loa_is_installed_in_a_release_that_current_names(installed: Installed) -> None:
    root = installed.root
    current = root / "opt/loa/current"
    assert os.readlink(current) == f"releases/{VERSION}"
    help_run = subprocess.run(
        [current / "bin/loa-provision", "--help"], capture_output=True, text=True, timeout=60
    )
    assert help_run.returncode == 0, help_run.stderr
    assert "loa-provision" in help_run.stdout
    # The release's own copy runs, not the checkout or .venv this test came from.
    where = subprocess.run(
        [current / "bin/python", "-c", "import agent, provisioning; print(provisioning.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert Path(where.stdout.strip()).resolve().is_relative_to(installed.release), where
    for tool in ("loa-agent", "loa-provision"):
        assert os.readlink(root / "usr/local/bin" / tool) == f"/opt/loa/current/bin/{tool}"


def test_directories_unit_and_field_settings(installed: Installed) -> None:
    root = installed.root
    assert mode(root / "etc/loa") == 0o750
    assert mode(root / "var/lib/loa") == 0o700

    unit = (root / "etc/systemd/system/loa-agent.service").read_text()
    exec_lines = [line for line in unit.splitlines() if line.startswith("Exec")]
    assert "ExecStart=/opt/loa/current/bin/loa-agent run --config /etc/loa/station.toml" in unit
    # Every command the unit runs comes from the current release, none from the old .venv path,
    # but the boot guard: it lives beside the releases, so a broken release cannot break it.
    guard_line = "ExecStartPre=+/opt/loa/bin/loa-boot-guard --config /etc/loa/station.toml"
    assert [line for line in exec_lines if "loa-boot-guard" in line] == [
        f"{guard_line} --prefix /opt/loa"
    ]
    assert all(
        "/opt/loa/current/bin/loa-" in line for line in exec_lines if "loa-boot-guard" not in line
    ), exec_lines
    assert mode(root / "etc/systemd/system/loa-agent.service") == 0o644
    guard = root / "opt/loa/bin/loa-boot-guard"
    assert guard.read_bytes() == (CHECKOUT / "install/loa-boot-guard").read_bytes()
    assert mode(guard) == 0o755
    assert (
        "chown root:root /opt/loa/bin/loa-boot-guard"
        in (root / "loa-install-actions.log").read_text().splitlines()
    )

    journald = (root / "etc/systemd/journald.conf.d/loa.conf").read_text()
    assert "[Journal]" in journald
    assert "SystemMaxUse=100M" in journald
    assert "RuntimeMaxUse=16M" in journald
    watchdog = (root / "etc/systemd/system.conf.d/loa-watchdog.conf").read_text()
    assert "[Manager]" in watchdog
    assert "RuntimeWatchdogSec=15" in watchdog
    assert "RebootWatchdogSec=" in watchdog

    # Nothing on the machine itself: the user, groups and services are only written down.
    actions = (root / "loa-install-actions.log").read_text().splitlines()
    assert "groupadd --system gpio" in actions
    assert any(a.startswith("useradd --system") and a.endswith(" loa") for a in actions)
    assert "--groups gpio,audio" in next(a for a in actions if a.startswith("useradd"))
    assert "chown root:loa /etc/loa" in actions
    assert "chown loa:loa /var/lib/loa" in actions
    assert "systemctl enable loa-agent" in actions  # the station in this root is provisioned
    assert "/opt/loa/current/bin/loa-provision check" in actions


def test_the_boot_relay_line_comes_from_the_station_config(installed: Installed) -> None:
    text = installed.config_txt_after_first
    assert text.startswith(CONFIG_TXT)  # the firmware's own settings are kept
    # The amplifier first, then the zones; the mains input is not a relay.
    assert text.endswith(f"\n{MARKER}\n[all]\ngpio=17,27,22=op,dl\n")


def test_a_second_run_changes_nothing(installed: Installed) -> None:
    assert "nothing changed" in installed.second, installed.second
    assert "changed:" not in installed.second
    # The actions log is a record of each run, not installed state: compared on its own below.
    log = "loa-install-actions.log"
    first, second = installed.state_after_first, installed.state_after_second
    assert first.keys() == second.keys()
    assert [path for path in first if first[path] != second[path] and path != log] == []
    # Nothing changed, so nothing is reloaded or restarted (a stopped agent would be started).
    for reload in ("daemon-reload", "daemon-reexec", "restart"):
        assert reload not in installed.actions_after_second, installed.actions_after_second


def test_new_pins_replace_the_boot_line_and_are_printed_without_set_boot_gpio(
    installed: Installed,
) -> None:
    # Runs last (it changes the station): an active-low relay board, and other pins.
    root = installed.root
    config = root / "etc/loa/station.toml"
    config.write_text(
        STATION_TOML.replace("amp_pin = 17", "amp_pin = 23\nactive_high = false").replace(
            "school = 22", "school = 24"
        )
    )
    printed = run_install(installed.src, root)
    assert "gpio=23,27,24=op,dh" in printed
    assert installed.config_txt_after_first == (root / "boot/firmware/config.txt").read_text()

    run_install(installed.src, root, "--set-boot-gpio")
    text = (root / "boot/firmware/config.txt").read_text()
    assert text.count(MARKER) == 1
    assert "gpio=17,27,22" not in text
    assert text.endswith(f"\n{MARKER}\n[all]\ngpio=23,27,24=op,dh\n")
