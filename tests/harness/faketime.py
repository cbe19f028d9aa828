"""A real ``loa-agent run`` whose wall clock the test moves: libfaketime (issue 13, clock part).

Owns the libfaketime plumbing. The agent runs with ``LD_PRELOAD`` = libfaketime and
``FAKETIME_TIMESTAMP_FILE`` = a file the test rewrites; ``FAKETIME_NO_CACHE=1`` makes every time
call read the file again, so writing ``+3600`` jumps the process's wall clock by an hour at
once, and ``@1970-01-01 00:00:00`` puts it at 1970 (the clock of a Pi booted without network).
``FAKETIME_DONT_FAKE_MONOTONIC=1``: a real clock step moves CLOCK_REALTIME only, so the agent's
monotonic clock (its timers' waits, its jump detector) keeps running true, as on a real Pi.

``start_faked`` starts a ``tests.harness.crash.CrashStation`` (composed, not changed) the way
its own ``start`` does, plus the faked clock and a choice of clock trust: ``None`` leaves
``LOA_CLOCK_TRUST`` unset so the station judges its clock itself (the kernel's adjtimex word,
the persisted floor, the province's time beacon).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from agent import faults
from agent.link import SEED_ENV as LINK_SEED_ENV
from tests.harness.crash import BIN, CrashStation

# libfaketime 0.9.10 (Debian bookworm) rewrites clock_nanosleep's absolute deadlines as if they
# were on the faked wall clock, even with FAKETIME_DONT_FAKE_MONOTONIC: Python 3.11's
# time.sleep (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)) then fails with EINVAL under an
# offset and never returns under "@1970-...". A real clock step does not touch sleeps on the
# monotonic clock, so this shim, preloaded ahead of libfaketime, hands them to the kernel as is.
_SLEEP_SHIM = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int clock_nanosleep(clockid_t id, int flags, const struct timespec *req, struct timespec *rem) {
  return syscall(SYS_clock_nanosleep, id, flags, req, rem) == 0 ? 0 : errno;
}
int nanosleep(const struct timespec *req, struct timespec *rem) {
  return (int)syscall(SYS_clock_nanosleep, CLOCK_MONOTONIC, 0, req, rem);
}
"""


def find_libfaketime() -> str | None:
    """The preload library of the Debian ``faketime`` package, on any architecture."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    return found[0] if found else None


def preload(directory: Path) -> str | None:
    """The ``LD_PRELOAD`` value: the sleep shim (built here with the C compiler) ahead of
    libfaketime; None when either is missing."""
    library, compiler = find_libfaketime(), shutil.which("cc") or shutil.which("gcc")
    if library is None or compiler is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    source, shim = directory / "sleep_shim.c", directory / "sleep_shim.so"
    source.write_text(_SLEEP_SHIM)
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(shim), str(source)],
                   check=True, capture_output=True)  # fmt: skip
    return f"{shim}:{library}"


class FakeTime:
    """The timestamp file one agent reads its wall clock from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set("+0")

    def set(self, spec: str) -> None:
        """``+N`` / ``-N`` seconds from the real clock, or ``@YYYY-MM-DD hh:mm:ss`` (then ticking).

        Written whole and renamed: a reader never sees half a line (a half line is read as
        "no offset" and would be a jump of its own)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(spec + "\n")
        tmp.replace(self.path)

    def offset(self, seconds: float) -> None:
        self.set(f"{seconds:+.0f}")

    def env(self, preloaded: str) -> dict[str, str]:
        return {
            "LD_PRELOAD": preloaded,
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }


def start_faked(
    station: CrashStation,
    faketime: FakeTime,
    preloaded: str,
    *,
    clock_trust: str | None = "system",
    fault: str | None = None,
) -> None:
    """``CrashStation.start`` with the wall clock read from ``faketime``'s file."""
    env = dict(os.environ, HOME=str(station.directory / "home"), LOA_HAL="sim",
               PYTHONUNBUFFERED="1", **faketime.env(preloaded))  # fmt: skip
    env.pop(faults.ENV, None)
    env.pop("LOA_CLOCK_TRUST", None)
    if clock_trust is not None:
        env["LOA_CLOCK_TRUST"] = clock_trust
    if fault is not None:
        env[faults.ENV] = fault
    # A seeded reconnect jitter: a station that cannot reach the broker (at 1970 the broker's
    # certificate is not yet valid) backs off at random up to 2 minutes; this seed's first
    # waits stay under 11 s for 30 s, so when the clock comes right the link is back soon.
    env[LINK_SEED_ENV] = "13"
    if station.proc.process is not None:
        station.restarts += 1
    with station.proc.log.open("ab") as log:
        spec = faketime.path.read_text().strip()
        log.write(f"--- start {datetime.now(UTC).isoformat()} faketime={spec}\n".encode())
        log.flush()
        station.proc.process = subprocess.Popen(
            [str(BIN / "loa-agent"), "run", "--config", str(station.directory / "station.toml")],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def trust_kernel(station: CrashStation) -> None:
    """Make the station's config leave clock trust to the kernel (provisioning wrote
    ``clock = "system"`` for the tests' containers)."""
    config = station.directory / "station.toml"
    text = config.read_text()
    changed = text.replace('clock = "system"', 'clock = "kernel"')
    if changed == text:
        raise RuntimeError(f"no clock trust setting found in {config}")
    config.write_text(changed)


def ingest_faked(
    station: CrashStation, faketime: FakeTime, preloaded: str, data: bytes, name: str
) -> tuple[int, str]:
    """``loa-agent ingest`` of an envelope file on the faked clock, clock trust left to the
    station's config: (exit status, its stdout line)."""
    path = station.directory / name
    path.write_bytes(data)
    env = dict(os.environ, LOA_HAL="sim", **faketime.env(preloaded))
    env.pop(faults.ENV, None)
    env.pop("LOA_CLOCK_TRUST", None)
    done = subprocess.run(
        [str(BIN / "loa-agent"), "ingest", "--config", str(station.directory / "station.toml"),
         str(path)],
        env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout.decode().strip()
