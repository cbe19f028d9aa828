"""``loa-provision factory-reset``: the station forgets who it is (ETSI EN 303 645, provision
5.11: user data can be erased). Removed: the private keys and certificates, the state (trust
database, outbox, volume), the media cache, Loa's own log directory, and the config file, whose
absence is what "not provisioned" means. The machine then needs ``init`` and a new enrollment;
the province should revoke the old certificate (``loa-province revoke``).

Private keys are overwritten with zeros before they are unlinked. On an SD card or eMMC the
flash controller may keep the old blocks: whoever hands over or discards a card that held a
station's keys should also revoke its certificate, and destroy the card if it leaves the
province's hands. The journal (``journalctl``) is the machine's, not Loa's: ``--journal``
also vacuums it.

Refused while the agent runs: it would write the state back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import Config

LOG_DIR = Path("/var/log/loa")


class ResetError(RuntimeError):
    pass


@dataclass
class ResetPlan:
    files: list[Path] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)
    secrets: Path | None = None  # the keys directory: every file overwritten before removal

    def describe(self) -> list[str]:
        return [str(p) for p in (*self.directories, *self.files)]


def plan(config: Config, config_path: Path, log_dir: Path = LOG_DIR) -> ResetPlan:
    paths = config.paths
    result = ResetPlan(secrets=paths.keys)
    for directory in (paths.keys, paths.state, paths.cache, log_dir):
        if directory.exists():
            result.directories.append(directory)
    if paths.outbox.exists() and not _inside(paths.outbox, result.directories):
        result.files.append(paths.outbox)
    result.files.append(config_path)
    return result


def _inside(path: Path, directories: list[Path]) -> bool:
    return any(path.resolve().is_relative_to(d.resolve()) for d in directories)


def erase(reset: ResetPlan) -> list[str]:
    """Remove what ``reset`` lists; return what could not be removed (with why)."""
    problems: list[str] = []
    if reset.secrets is not None and reset.secrets.is_dir():
        for secret in reset.secrets.rglob("*"):
            if secret.is_file() and not secret.is_symlink():
                _overwrite(secret, problems)
    for directory in reset.directories:
        try:
            shutil.rmtree(directory)
        except OSError as exc:
            problems.append(f"{directory}: {exc.strerror}")
    for path in reset.files:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror}")
    return problems


def _overwrite(path: Path, problems: list[str]) -> None:
    try:
        size = path.stat().st_size
        with path.open("r+b") as handle:
            handle.write(b"\0" * size)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        problems.append(f"{path}: {exc.strerror}")


def vacuum_journal() -> str | None:
    """Rotate and empty the systemd journal; the error text when that fails."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return "journalctl not found"
    for argv in ([journalctl, "--rotate"], [journalctl, "--vacuum-time=1s"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            return done.stderr.strip() or f"{argv[1]} failed"
    return None
