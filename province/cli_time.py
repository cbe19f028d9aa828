"""``loa-province time-beacon``: the province's signed clock (PROTOCOL.md section 9).

A Pi has no battery clock; a station that booted without NTP uses the newest beacon as its time
floor, so a replayed old message can never pass for new. The beacon is signed with a
``maintenance`` key and published retained on ``loa/v1/{p}/time`` every minute over one
connection. Beacons carry no content a person decides, so they are not written to the signing
log one by one (1440 lines a day would bury what matters); the start of a beacon run is.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from agent.core.timefmt import format_rfc3339
from agent.link import TlsFiles
from province import signing_log
from province.errors import ProvinceError
from province.home import default_home, open_home_registry, registry_province
from province.operators import ensure_identity, identity_cn, identity_files
from province.publish import Publisher, operator_tls, route
from province.signer import open_signer
from province.signing import canonical_json, sign_body, signed_record


def beacon_body(province: str, now: datetime) -> bytes:
    return canonical_json({"kind": "time", "schema": 1, "province": province,
                           "ts": format_rfc3339(now)})  # fmt: skip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("time-beacon", help="publish the signed time beacon every minute")
    parser.add_argument("--home", type=Path, default=default_home())
    parser.add_argument("--broker", required=True, help="mqtts://host:port")
    parser.add_argument("--key", required=True, help="maintenance key (file or signer spec)")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between beacons")
    parser.add_argument("--once", action="store_true", help="publish one beacon and exit")
    parser.add_argument(
        "--identity",
        metavar="NAME",
        help="connect as HOME/operator/NAME.crt (issued on first use; regenerate the ACL after):"
        " beside a collector using the operator's certificate, the two would take each "
        "other's connection over",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.every < 1:
        raise ProvinceError("--every must be at least 1 second")
    with open_home_registry(args.home) as registry:
        province = registry_province(registry)
    signer = open_signer(args.key)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    first = beacon_body(province, datetime.now(UTC))
    envelope = sign_body(first, [signer])
    signing_log.append(
        signing_log.log_path(args.home), signed_record(first, envelope, [signer]),
        datetime.now(UTC),
    )  # fmt: skip
    sent = 0
    tls = operator_tls(args.home)
    if args.identity is not None:
        ensure_identity(args.home, province, args.identity)
        cert, key = identity_files(args.home, args.identity)
        tls = TlsFiles(tls.ca, cert, key)
    with Publisher(args.broker, tls, identity_cn(province, args.identity)) as out:
        while True:
            now = datetime.now(UTC)
            envelope = sign_body(beacon_body(province, now), [signer])
            out.send(route(envelope, now))
            sent += 1
            print(json.dumps({"published": "time", "ts": format_rfc3339(now)}), flush=True)
            if args.once or stop.wait(args.every):
                break
    print(f"time beacon stopped after {sent} beacon(s)")
    return 0
