"""House rules that keep the design honest: a pure core, and schemas in step with the protocol."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from tests.harness.trust import SHARED

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "agent" / "core"
IO_MODULES = {
    "paho", "gpiozero", "pyaudio", "pydub", "sqlite3", "socket", "subprocess", "threading",
    "apscheduler", "urllib", "http", "asyncio", "os", "shutil", "pathlib", "io", "select",
    "requests", "httpx", "multiprocessing", "signal", "time", "hal",
}  # fmt: skip
REAL_CLOCK_CALLS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("time", "time"),
    ("date", "today"),
}


def core_modules() -> list[Path]:
    found = sorted(CORE.rglob("*.py"))
    assert len(found) >= 8  # the rule must be checking something
    return found


def test_core_imports_no_io_library() -> None:
    offenders = []
    for path in core_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in IO_MODULES]
    assert offenders == []


def test_core_never_reads_the_real_clock() -> None:
    offenders = []
    for path in core_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and (node.func.value.id, node.func.attr) in REAL_CLOCK_CALLS
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


# What docs/releases.md adds to the shared schemas: files the shared set does not have yet, and
# keyring roles the agent knows beyond the shared keyring schema's. Nothing else may differ.
AGENT_ONLY_SCHEMAS = {"release.schema.json"}
AGENT_ONLY_ROLES = {"release"}


def _without_agent_roles(text: bytes) -> object:
    doc = json.loads(text)
    roles = doc["properties"]["roles"]
    for role in AGENT_ONLY_ROLES:
        roles["properties"].pop(role, None)
        assert role not in roles.get("required", []), f"the {role} role must stay optional"
    return doc


def test_shipped_schemas_are_the_protocols() -> None:
    shared = sorted((SHARED / "schemas").glob("*.schema.json"))
    assert shared, f"no schemas under {SHARED}"
    for path in shared:
        shipped = ROOT / "agent" / "schemas" / path.name
        if path.name == "keyring.schema.json" and shipped.read_bytes() != path.read_bytes():
            # The agent's keyring may add the optional release role; the rest is shared's.
            assert _without_agent_roles(shipped.read_bytes()) == _without_agent_roles(
                path.read_bytes()
            ), f"{path.name} drifted from shared/ beyond docs/releases.md's additions"
            continue
        assert shipped.read_bytes() == path.read_bytes(), f"{path.name} drifted from shared/"
    names = {p.name for p in shared}
    extra = {p.name for p in (ROOT / "agent" / "schemas").glob("*.schema.json")} - names
    assert extra <= AGENT_ONLY_SCHEMAS, f"schemas not in shared/ nor docs/releases.md: {extra}"
