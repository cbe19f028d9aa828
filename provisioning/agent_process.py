"""Whether ``loa-agent run`` is running for a given config, found the way ``pgrep`` would: the
command lines under ``/proc``. A technician's command must know, because the agent holds the
relays, the sound card and (to the broker) the station's own connection.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH


def running_agent(config_path: Path, proc: Path = Path("/proc")) -> int | None:
    """The pid of a ``loa-agent run`` whose ``--config`` (or the default) is ``config_path``."""
    wanted = _resolved(config_path)
    me = os.getpid()
    try:
        entries = list(proc.iterdir())
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        args = [a.decode("utf-8", "replace") for a in argv if a]
        if not _is_agent_run(args):
            continue
        config = DEFAULT_CONFIG_PATH
        for i, arg in enumerate(args):
            if arg == "--config" and i + 1 < len(args):
                config = Path(args[i + 1])
            elif arg.startswith("--config="):
                config = Path(arg.split("=", 1)[1])
        if not config.is_absolute():
            try:
                config = Path(os.readlink(entry / "cwd")) / config
            except OSError:
                continue
        if _resolved(config) == wanted:
            return int(entry.name)
    return None


def _is_agent_run(args: list[str]) -> bool:
    if "run" not in args:
        return False
    head = " ".join(args[: args.index("run")])
    return "loa-agent" in head or "agent.cli" in head


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()
