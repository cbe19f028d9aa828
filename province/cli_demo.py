"""``loa-province demo``: the whole first path on this machine (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from province.demo import DemoError, run_demo


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="run broker, stations, playlists and coverage locally")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="emptied first")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        run_demo(args.out)
    except DemoError as exc:
        print(f"\nloa-province demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started has been stopped", file=sys.stderr)
        return 130
    return 0
