"""``loa-provision``: what a technician runs on the station.

``init`` gives the station its identity, keys, certificate request and first keyring;
``enroll`` installs the certificate the province issued for that request. Later issues add
trust, check, audio-test, relay-test, status and factory-reset, in Vietnamese and English.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from agent import keyfiles
from agent.config import DEFAULT_CONFIG_PATH
from agent.core.targets import StationId
from provisioning.enroll import EnrollError, install
from provisioning.init import InitRequest, ProvisionError, provision

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loa-provision", description="Loa station set-up")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="identity, keys, certificate request and first keyring")
    init.add_argument("--province", required=True, help="2-digit province code, e.g. 25")
    init.add_argument("--commune", required=True, help="5-digit commune code, e.g. 08230")
    init.add_argument("--station", required=True, help="station name, e.g. 08230-01")
    init.add_argument("--keyring", required=True, type=Path, help="signed keyring file")
    init.add_argument(
        "--dir",
        type=Path,
        help="keep everything (config, keys, state, cache, outbox) under DIR "
        "(default: /etc/loa and /var/lib/loa)",
    )
    init.add_argument("--broker", action="append", default=[], help="mqtts://host:port (repeat)")
    init.add_argument("--clock", choices=("kernel", "system"), default="kernel")

    enroll = sub.add_parser("enroll", help="install the certificate the province issued")
    enroll.add_argument("certificate", type=Path, help="the station certificate from the province")
    enroll.add_argument("--ca", required=True, type=Path, help="the province CA certificate")
    enroll.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("LOA_CONFIG") or DEFAULT_CONFIG_PATH),
        help="station config (default: $LOA_CONFIG or /etc/loa/station.toml)",
    )
    enroll.add_argument(
        "--broker",
        action="append",
        default=[],
        help="mqtts://host:port (repeat): also set the config's broker URLs",
    )
    return parser


def cmd_init(args: argparse.Namespace) -> int:
    try:
        station = StationId(args.province, args.commune, args.station)
    except ValueError as exc:
        print(f"loa-provision: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        envelope = args.keyring.read_bytes()
    except OSError as exc:
        print(f"loa-provision: cannot read {args.keyring}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    request = InitRequest(station, envelope, args.dir, tuple(args.broker), args.clock)
    try:
        result = provision(request, datetime.now(UTC))
    except (ProvisionError, keyfiles.KeyFileError) as exc:
        print(f"loa-provision: {exc}", file=sys.stderr)
        return EXIT_FAILED
    keyring = result.keyring
    print(f"station {station.path} provisioned: {result.config_path}")
    print(f"  signing key {keyfiles.fingerprint(result.signing_keyid)}")
    print(f"  certificate request {result.csr_path} (send it to the province to enroll)")
    print(
        f"  keyring v{keyring.version} of province {keyring.province}, "
        f"expires {keyring.expires.isoformat()}"
    )
    for name, role in sorted(keyring.roles.items()):
        prints = ", ".join(keyfiles.fingerprint(k) for k in sorted(role.keyids))
        print(f"    {name:<12} {role.threshold}/{len(role.keyids)}  {prints}")
    return EXIT_OK


def cmd_enroll(args: argparse.Namespace) -> int:
    try:
        cert_pem = args.certificate.read_bytes()
        ca_pem = args.ca.read_bytes()
    except OSError as exc:
        print(f"loa-provision: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = install(args.config, cert_pem, ca_pem, datetime.now(UTC), args.broker)
    except EnrollError as exc:
        print(f"loa-provision: nothing installed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"station {result.station} enrolled: certificate installed")
    print(f"  {result.certificate} (valid until {result.not_after:%Y-%m-%d})")
    print(f"  CA {result.ca}")
    if result.brokers is not None:
        print(f"  broker {', '.join(result.brokers)} (in {args.config})")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "init":
        return cmd_init(args)
    if args.command == "enroll":
        return cmd_enroll(args)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
