"""Unit security: the exposure ``systemd-analyze security --offline=true`` gives the station's
unit (``systemd/loa-agent.service``; 0 is locked down, 10 is wide open), against the unit as it
was before issue 10's hardening (``BASELINE_COMMIT``), both rated in the same run by the same
systemd-analyze. Target: 2.5 or lower ("OK"). The settings still counted against the unit, and
how much each costs, are kept in the detail; the unit's comments say why each one is left off.

The rating reads only the file (offline): it needs neither the binary in ExecStart nor the loa
user, and says nothing about whether the agent runs under it; the integration tests
(tests/integration/test_systemd_agent.py) and the unit's comments cover that.

    .venv/bin/python -m bench.unit_security
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, machine_info, write_result

COMMAND = ".venv/bin/python -m bench.unit_security"
UNIT = ROOT / "systemd" / "loa-agent.service"
# The last commit with the unit as it was before the hardening (Type=simple, a few Protect*).
BASELINE_COMMIT = "f8ced5220447248b6c8f059770459f1045ac7e0f"
TARGET = 2.5
_OVERALL = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")
_COUNTED = re.compile(r"^✗\s+(\S+)\s+(.*?)\s+(\d+(?:\.\d+)?)\s*$")


class AnalyzeError(RuntimeError):
    """systemd-analyze is missing or could not rate the unit."""


def analyze(unit: Path) -> tuple[float, list[dict[str, Any]]]:
    """The overall exposure and every setting counted against the unit (name, why, cost)."""
    analyzer = shutil.which("systemd-analyze")
    if analyzer is None:
        raise AnalyzeError("systemd-analyze is not installed (Debian package: systemd)")
    done = subprocess.run(
        [analyzer, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    found = _OVERALL.search(done.stdout)
    if found is None:
        raise AnalyzeError(f"no exposure in systemd-analyze's answer: {done.stderr.strip()}")
    counted = [
        {"setting": m.group(1), "why": m.group(2), "exposure": float(m.group(3))}
        for line in done.stdout.splitlines()
        if (m := _COUNTED.match(line.strip()))
    ]
    return float(found.group(1)), counted


def baseline_unit(directory: Path, commit: str = BASELINE_COMMIT) -> Path:
    """The unit file at ``commit``, under its own name (the rating names the unit by it)."""
    done = subprocess.run(
        ["git", "show", f"{commit}:systemd/loa-agent.service"],
        cwd=ROOT, capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    path = directory / "loa-agent.service"
    path.write_bytes(done.stdout)
    return path


def systemd_version() -> str:
    analyzer = shutil.which("systemd-analyze")
    if analyzer is None:
        return ""
    done = subprocess.run([analyzer, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.splitlines()[0] if done.stdout else ""


def run() -> dict[str, Any]:
    exposure, counted = analyze(UNIT)
    with tempfile.TemporaryDirectory(prefix="loa-bench-unit-") as tmp:
        baseline, baseline_counted = analyze(baseline_unit(Path(tmp)))
    return {
        "benchmark": "unit_security",
        "title": "systemd-analyze security --offline=true on systemd/loa-agent.service",
        "command": COMMAND,
        "exposure": exposure,
        "baseline_exposure": baseline,
        "target": {"exposure_at_most": TARGET, "met": exposure <= TARGET},
        "figures": ["exposure"],
        "baselines": {"exposure": "baseline_exposure"},
        "labels": {
            "exposure": "unit exposure, 0 (locked down) to 10 (exposed); target at most 2.5",
            "baseline_exposure": f"the unit before issue 10, commit {BASELINE_COMMIT[:7]}",
        },
        "detail": {
            "unit": "systemd/loa-agent.service",
            "counted_against": counted,
            "baseline_counted_against_n": len(baseline_counted),
            "systemd": systemd_version(),
        },
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        result = run()
    except (AnalyzeError, subprocess.CalledProcessError) as exc:
        print(f"bench.unit_security: {exc}", file=sys.stderr)
        return 1
    write_result("unit_security", result, args.results)
    met = "met" if result["target"]["met"] else "NOT met"
    print(
        f"unit_security: exposure {result['exposure']:g} (before: "
        f"{result['baseline_exposure']:g}); target <= {TARGET:g} {met}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
