"""``loa-province demo``: the whole first path on this machine (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from province.demo import DemoError, run_demo


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="run broker, stations, playlists and coverage locally")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="emptied first")
    parser.set_defaults(handler=run)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    # Ctrl-C and a polite kill both unwind the demo, which stops everything it started. Set
    # explicitly: a shell's background job inherits SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_demo(args.out)
    except DemoError as exc:
        print(f"\nloa-province demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started has been stopped", file=sys.stderr)
        return 130
    return 0
