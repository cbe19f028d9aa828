"""Real releases of this project for tests (docs/releases.md, the install side): wheels of the
checkout built at other versions, and a station's ``PREFIX/releases/<version>`` venv.

A wheel is built from a copy of the checkout's package parts with ``pyproject.toml``'s version
changed (``broken``: ``loa-agent run`` raises at once while ``--version`` still answers, as a
release that passes the install's smoke test and then fails in service would). Building uses
pip's isolated build environment (setuptools from the package registry pip is configured with,
or its cache). A release venv is made as ``loa-agent release-install`` makes one: seeded with
this checkout's ``.venv`` site-packages without ``loa``, then given the wheel, offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from agent.release_install import seed_site_packages

CHECKOUT = Path(__file__).resolve().parents[2]
GUARD = CHECKOUT / "install" / "loa-boot-guard"
PARTS = ("pyproject.toml", "README.md", "agent", "hal", "provisioning", "province")
BROKEN_RUN = '    raise RuntimeError("release {version} is broken (a test release)")\n'


def clean_env() -> dict[str, str]:
    """The environment without the test run's LOA_* and PYTHON* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("LOA_", "PYTHON"))}


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    """A command that must succeed, pip seeing no configuration of this machine."""
    env = clean_env()
    env["PIP_CONFIG_FILE"] = os.devnull
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def source_copy(work: Path, version: str, broken: bool = False) -> Path:
    """The checkout's package parts copied under ``work`` at ``version``."""
    src = work / f"src-{version}"
    src.mkdir()
    for part in PARTS:
        origin = CHECKOUT / part
        if origin.is_dir():
            shutil.copytree(origin, src / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, src / part)
    pyproject = src / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('version = "0.1.0"', f'version = "{version}"', 1)
    )
    if broken:
        cli = src / "agent" / "cli.py"
        text = cli.read_text()
        head = "def cmd_run(config_path: Path, log_level: str) -> int:\n"
        assert head in text
        cli.write_text(text.replace(head, head + BROKEN_RUN.format(version=version), 1))
    return src


def build_wheel(out: Path, work: Path, version: str, broken: bool = False) -> Path:
    """``out/loa-<version>-py3-none-any.whl``, built by pip from a copy of the checkout."""
    src = source_copy(work, version, broken)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300, cwd=work,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    wheel = out / f"loa-{version}-py3-none-any.whl"
    assert wheel.exists(), list(out.iterdir())
    return wheel


def site_packages(release: Path) -> Path:
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return release / "lib" / pyver / "site-packages"


def make_release(prefix: Path, wheel: Path, version: str) -> Path:
    """``prefix/releases/<version>``: a venv seeded like release-install's, with ``wheel``."""
    release = prefix / "releases" / version
    run([sys.executable, "-m", "venv", "--without-pip", str(release)])
    seed_site_packages(Path(sysconfig.get_path("purelib")), site_packages(release))
    pip = [str(release / "bin/python"), "-m", "pip", "install", "-q", "--no-deps"]
    run([*pip, "--no-index", str(wheel)])
    return release
