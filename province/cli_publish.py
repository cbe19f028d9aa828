"""``loa-province publish``: send signed envelopes to their topics over mutual TLS."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from province.home import default_home as default_home  # re-exported: cli reads it here
from province.home import open_home_registry, registry_province
from province.publish import publish


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("publish", help="send signed envelopes to their topics")
    parser.add_argument("envelopes", nargs="+", type=Path, metavar="ENVELOPE")
    parser.add_argument("--home", type=Path, default=default_home())
    parser.add_argument("--broker", required=True, help="mqtts://host:port")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    envelopes = [path.read_bytes() for path in args.envelopes]
    with open_home_registry(args.home) as registry:
        registry_province(registry)  # refused in words before anything is sent
        sent = publish(registry, args.home, args.broker, envelopes, datetime.now(UTC))
    for outgoing in sent:
        how = "retained" if outgoing.retain else f"expires in {outgoing.expiry_s} s"
        what = f"{outgoing.kind} {outgoing.issuer} {outgoing.label}"
        print(f"published {what} -> {outgoing.topic} ({how})")
    return 0
