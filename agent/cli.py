"""``loa-agent``: the station daemon's command line.

``ingest`` processes envelope files exactly as if they had arrived on MQTT and prints one stable
line per file (outside checks parse it): ``accepted <kind> <issuer> v<version>`` (a command shows
its id) or ``rejected <code>``. Exit 0 when all were accepted, 1 when any was rejected, 2 on a
usage or configuration error. Details for people go to stderr.

``run`` is the daemon; under systemd it logs to journald as structured records when its stderr
is the journal (``$JOURNAL_STREAM``), to stderr otherwise. ``safe-off`` switches the amplifier
and every zone relay off and exits (the unit's ``ExecStopPost``): exit 0 when they are off,
1 when the GPIO could not be driven, 2 on a configuration error.

``release-install`` (run as root by ``loa-boot-guard``, outside the sandbox) installs the staged
release into ``PREFIX/releases/<version>`` and switches ``PREFIX/current`` to it
(agent/release_install.py): exit 0 when switched, 1 when refused or failed (``failed.json``
says why), 2 on a configuration error. ``--version`` prints the running version.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, ConfigError, read_config
from agent.core.verify import Rejection
from agent.ingest import Ingestor
from agent.trust_store import StoreError, TrustStore
from agent.version import running_version
from hal.clock import SystemClock
from hal.systemd import JournalHandler, journal_available, stderr_is_journal

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loa-agent", description="Loa station agent")
    # The installer's smoke test of a new release: it must print exactly the version.
    parser.add_argument("--version", action="version", version=running_version())
    sub = parser.add_subparsers(dest="command", required=True)
    default_config = Path(os.environ.get("LOA_CONFIG", DEFAULT_CONFIG_PATH))
    ingest = sub.add_parser(
        "ingest", help="verify and apply envelope files as if they had arrived on MQTT"
    )
    ingest.add_argument(
        "--config",
        type=Path,
        default=default_config,
        help="station config (default: $LOA_CONFIG or /etc/loa/station.toml)",
    )
    ingest.add_argument("files", nargs="+", type=Path, metavar="FILE")
    run = sub.add_parser("run", help="run the station: broker, schedule, relays, audio, reports")
    run.add_argument("--config", type=Path, default=default_config, help="station config")
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    safe_off = sub.add_parser(
        "safe-off", help="switch the amplifier and every zone relay off (for ExecStopPost)"
    )
    safe_off.add_argument("--config", type=Path, default=default_config, help="station config")
    release = sub.add_parser(
        "release-install",
        help="install the staged release and switch to it (root, from loa-boot-guard)",
    )
    release.add_argument("--config", type=Path, default=default_config, help="station config")
    release.add_argument(
        "--prefix", type=Path, default=Path("/opt/loa"), help="releases and current (/opt/loa)"
    )
    return parser


def _read_capped(path: Path, cap: int) -> bytes:
    """Read at most cap+1 bytes: enough to know a file is too large without loading it."""
    with path.open("rb") as handle:
        return handle.read(cap + 1)


def cmd_ingest(config_path: Path, files: Sequence[Path]) -> int:
    try:
        config = read_config(config_path, os.environ)
        store = TrustStore(config.paths.trust_db)
    except (ConfigError, StoreError) as exc:
        print(f"loa-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK
    with store:
        ingestor = Ingestor(config, store, SystemClock())
        for path in files:
            try:
                data = _read_capped(path, config.limits.envelope_bytes)
            except OSError as exc:
                print(f"loa-agent: cannot read {path}: {exc.strerror}", file=sys.stderr)
                return EXIT_USAGE
            try:
                verdict = ingestor.ingest(data)
            except StoreError as exc:
                print(f"loa-agent: {exc}", file=sys.stderr)
                return EXIT_USAGE
            print(verdict.line(), flush=True)
            if isinstance(verdict, Rejection):
                print(f"{path}: {verdict.detail}", file=sys.stderr)
                status = EXIT_REJECTED
    return status


def _configure_logging(log_level: str) -> None:
    if stderr_is_journal() and journal_available():
        # journald stamps the time and keeps level, logger and source line as fields.
        handler: logging.Handler = JournalHandler()
        logging.basicConfig(level=log_level, handlers=[handler])
    else:
        logging.basicConfig(
            level=log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )


def cmd_run(config_path: Path, log_level: str) -> int:
    _configure_logging(log_level)
    # APScheduler logs two INFO lines per job run: with the 5 s watch that is 35,000 lines a
    # day in the journal of an SD card, saying nothing.
    logging.getLogger("apscheduler").setLevel(
        max(logging.WARNING, logging.getLogger().getEffectiveLevel())
    )
    try:
        config = read_config(config_path, os.environ)
    except ConfigError as exc:
        print(f"loa-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from agent.app import run  # hardware libraries load only when the station really runs

    return run(config, SystemClock())  # 0, or 75 (EX_TEMPFAIL) when an update is staged


def cmd_safe_off(config_path: Path) -> int:
    try:
        config = read_config(config_path, os.environ)
    except ConfigError as exc:
        print(f"loa-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from agent.app import safe_off
    from hal.relays import RelayError

    try:
        states = safe_off(config)
    except RelayError as exc:
        print(f"loa-agent: safe-off failed: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    print("safe-off: " + " ".join(f"{n}={'on' if on else 'off'}" for n, on in states.items()))
    return EXIT_REJECTED if any(states.values()) else EXIT_OK


def cmd_release_install(config_path: Path, prefix: Path) -> int:
    from agent.release_install import InstallError, release_install

    try:
        config = read_config(config_path, os.environ)
    except ConfigError as exc:
        print(f"loa-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        installed = release_install(config, prefix.absolute())
    except InstallError as exc:
        print(f"loa-agent: release-install: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    print(
        f"release-install: {installed.previous} -> {installed.version}, confirm by "
        f"{installed.deadline.isoformat()}"
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "ingest":
        return cmd_ingest(args.config, args.files)
    if args.command == "run":
        return cmd_run(args.config, args.log_level)
    if args.command == "safe-off":
        return cmd_safe_off(args.config)
    if args.command == "release-install":
        return cmd_release_install(args.config, args.prefix)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
