"""``loa-province collect`` and ``loa-province coverage``: receive station reports, and prove
(or disprove) that every commune heard what was scheduled.

This module owns the two subcommands' arguments, the province home's file layout as they read
it, signal handling for the long-running collector, and what they print. The work is
``province.collector``'s and ``province.coverage``'s (drawn by ``province.coverage_render``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.core.timefmt import parse_rfc3339
from agent.link import LinkError, TlsFiles, parse_broker_url
from hal.files import atomic_write
from province.collector import Collector
from province.coverage import DEFAULT_TZ, build_report
from province.coverage_render import render_csv, render_html, render_text
from province.errors import ProvinceError
from province.home import open_home_registry, registry_province
from province.operators import ensure_identity, identity_cn, identity_files, share_group
from province.registry import Registry
from province.signer import open_signer

HOME_ENV = "LOA_PROVINCE_HOME"
STORE_ENV = "LOA_PROVINCE_STORE"  # a postgresql:// URL: the registry there, not HOME/registry.db
DEFAULT_WINDOW = timedelta(hours=24)
READY_TIMEOUT_S = 30.0
HOME_HELP = f"province home (default: ${HOME_ENV}, else ./province-home)"


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or "province-home")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    collect = sub.add_parser(
        "collect", help="receive station reports, store them, send receipts (until stopped)"
    )
    collect.add_argument("--home", type=Path, help=HOME_HELP)
    collect.add_argument("--broker", required=True, help="mqtts://host:port")
    collect.add_argument(
        "--duration", type=float, metavar="S", help="stop after S seconds (default: SIGINT/TERM)"
    )
    collect.add_argument(
        "--identity",
        metavar="NAME",
        help="connect as HOME/operator/NAME.crt (CN province-PP.NAME, issued on first use; "
        "regenerate the ACL after): each collector beside the first needs its own",
    )
    collect.add_argument(
        "--share-group",
        help="MQTT shared subscription group of the collectors (default: the province's secret "
        "name in HOME/operator/share-group, made on first use); '' for a plain subscription",
    )
    collect.add_argument(
        "--resync-key",
        metavar="KEY",
        help="maintenance key (file or signer spec): stations whose reports have a lasting "
        "hole are asked to resync",
    )
    collect.set_defaults(handler=cmd_collect)

    cover = sub.add_parser("coverage", help="expected occurrences against as-run reports")
    cover.add_argument("--home", type=Path, help=HOME_HELP)
    cover.add_argument(
        "--from", dest="start", metavar="TIME", help="RFC 3339 with offset (default: --to - 24 h)"
    )
    cover.add_argument(
        "--to", dest="end", metavar="TIME", help="RFC 3339 with offset (default: now)"
    )
    cover.add_argument("--csv", action="store_true", help="CSV rows instead of the tables")
    cover.add_argument(
        "--html", type=Path, metavar="FILE", help="also write a self-contained HTML report"
    )
    cover.add_argument(
        "--tz", default=DEFAULT_TZ, help=f"time zone of days and times (default {DEFAULT_TZ})"
    )
    cover.set_defaults(handler=cmd_coverage)


def _home(args: argparse.Namespace) -> Path:
    home: Path = args.home or default_home()
    return home


def _open_registry(home: Path) -> Registry:
    # Every province command opens the registry the same way (province.home): the collector
    # must read the store enrollment wrote.
    return open_home_registry(home)


def cmd_collect(args: argparse.Namespace) -> int:
    home = _home(args)
    try:
        host, port = parse_broker_url(args.broker)
    except LinkError as exc:
        raise ProvinceError(str(exc)) from exc
    if args.duration is not None and args.duration <= 0:
        raise ProvinceError(f"--duration must be positive, got {args.duration}")
    signer = open_signer(args.resync_key) if args.resync_key else None
    with _open_registry(home) as registry:
        province = registry_province(registry)
        if args.identity is not None and ensure_identity(home, province, args.identity):
            print(
                f"issued the identity {identity_cn(province, args.identity)}: run "
                "`loa-province acl` and reload the broker to let it in"
            )
        cert, key = identity_files(home, args.identity)
        tls = TlsFiles(ca=home / "ca" / "ca.crt", cert=cert, key=key)
        for path in (tls.ca, tls.cert, tls.key):
            if not path.is_file():
                raise ProvinceError(f"{path} is missing: the collector connects as the operator")
        collector = Collector(
            registry, host, port, tls, province,
            client_id=identity_cn(province, args.identity),
            share_group=share_group(home) if args.share_group is None else args.share_group or None,
            resync_signer=signer,
        )  # fmt: skip
        with _stop_on_signals() as stop:
            collector.start()
            try:
                if not collector.wait_ready(READY_TIMEOUT_S):
                    print(
                        f"loa-province: not subscribed to {args.broker} after "
                        f"{READY_TIMEOUT_S:.0f} s; still trying",
                        file=sys.stderr,
                    )
                else:
                    print(f"collecting province {province} reports from {args.broker}")
                stop.wait(args.duration)
            finally:
                collector.stop()
        stats = collector.stats()
    print(
        f"stopped: {stats.received} messages, {stats.stored} reports stored, "
        f"{stats.duplicates} duplicates, {stats.refused} refused, {stats.receipts} receipts sent, "
        f"{stats.errors} errors"
    )
    return 0


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs; the old handlers come back after."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _time(text: str, option: str) -> datetime:
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise ProvinceError(f"{option}: {exc} (e.g. 2026-11-23T00:00:00+07:00)") from exc


def cmd_coverage(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    end = _time(args.end, "--to") if args.end else now
    start = _time(args.start, "--from") if args.start else end - DEFAULT_WINDOW
    if start >= end:
        raise ProvinceError("--from must be before --to")
    try:
        ZoneInfo(args.tz)
    except (ValueError, ZoneInfoNotFoundError) as exc:
        raise ProvinceError(f"--tz: unknown time zone {args.tz!r}") from exc
    with _open_registry(_home(args)) as registry:
        report = build_report(registry, start, end, now, args.tz)
    if args.html is not None:
        atomic_write(args.html, render_html(report).encode("utf-8"))
        # stderr: stdout stays the table or the CSV, whole, for whoever pipes it.
        print(f"wrote the HTML report to {args.html}", file=sys.stderr)
    if args.csv:
        sys.stdout.write(render_csv(report.rows))
        return 0
    # Colour only for a person at a terminal (and not when NO_COLOR asks for none).
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    sys.stdout.write(render_text(report, color=color))
    return 0
