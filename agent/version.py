"""The version of the agent that is running: what heartbeats report as ``agent_version``, what
releases are compared with (docs/releases.md) and what ``loa-agent --version`` prints.

The installed package's metadata is the truth (each release is its own venv under
``/opt/loa/releases/<version>``, so the metadata is that release's); a source tree run without
installing falls back to the constant, kept equal to ``pyproject.toml``'s version.
"""

from __future__ import annotations

import importlib.metadata
from functools import cache

FALLBACK_VERSION = "0.1.0"
PACKAGE = "loa"


@cache
def running_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return FALLBACK_VERSION
