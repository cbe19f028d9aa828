"""``loa-province`` subcommands for the province CA and station enrollment: ``ca init``,
``ca server-cert``, ``enroll`` and ``acl`` (``stations``, with live state, is
``province.cli_stations``').

This module owns their arguments and what they print; the work is ``province.enrollment``'s.
Every one takes ``--home DIR`` (default ``$LOA_PROVINCE_HOME`` or ``./province-home``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent import keyfiles
from hal.files import atomic_write
from province import enrollment
from province.enrollment import ProvinceHome


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument(
        "--home",
        type=Path,
        help=f"the province home (default: ${enrollment.HOME_ENV} or ./province-home)",
    )

    ca = sub.add_parser("ca", help="the province's device CA (stations and broker)")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    init = ca_sub.add_parser(
        "init", parents=[home], help="create the CA and the operator's broker identity (once)"
    )
    init.add_argument("--province", required=True, help="2-digit province code, e.g. 25")
    init.add_argument("--days", type=int, default=enrollment.DEFAULT_CA_DAYS, help="CA validity")
    init.set_defaults(handler=cmd_ca_init)

    server = ca_sub.add_parser(
        "server-cert", parents=[home], help="issue the broker's server certificate"
    )
    server.add_argument("--host", action="append", default=[], help="DNS name (repeat)")
    server.add_argument("--ip", action="append", default=[], help="IP address (repeat)")
    server.add_argument(
        "--out-dir", type=Path, required=True, help="writes server.crt, server.key, ca.crt"
    )
    server.add_argument("--days", type=int, default=enrollment.DEFAULT_STATION_DAYS)
    server.set_defaults(handler=cmd_server_cert)

    enroll = sub.add_parser(
        "enroll", parents=[home], help="sign a station's certificate request and register it"
    )
    enroll.add_argument("csr", type=Path, help="the station's keys/station.csr")
    enroll.add_argument(
        "--signing-key",
        type=Path,
        required=True,
        metavar="PUB",
        help="the station's keys/station.pub (its report-signing key)",
    )
    enroll.add_argument("--out", type=Path, help="default: HOME/stations/<station id>.crt")
    enroll.add_argument("--days", type=int, default=enrollment.DEFAULT_STATION_DAYS)
    enroll.add_argument(
        "--replace", action="store_true", help="re-enroll a station re-provisioned after repair"
    )
    enroll.set_defaults(handler=cmd_enroll)

    acl = sub.add_parser("acl", parents=[home], help="the broker ACL from the registry")
    acl.add_argument("--out", type=Path, help="default: stdout")
    acl.set_defaults(handler=cmd_acl)


def _home(args: argparse.Namespace) -> ProvinceHome:
    return ProvinceHome(args.home if args.home is not None else enrollment.default_home())


def cmd_ca_init(args: argparse.Namespace) -> int:
    result = enrollment.init_ca(_home(args), args.province, args.days)
    print(f"province {result.province} CA: {result.ca_cert} (key {result.ca_key}, 0600)")
    print(f"  fingerprint {result.fingerprint}")
    print(
        f"operator identity {result.operator_cn}: {result.operator_cert} "
        f"(key {result.operator_key}, 0600)"
    )
    return 0


def cmd_server_cert(args: argparse.Namespace) -> int:
    result = enrollment.issue_server_cert(_home(args), args.host, args.ip, args.out_dir, args.days)
    print(f"broker certificate for {', '.join(result.names)}: {result.cert}")
    print(f"  key {result.key} (0600), CA {result.ca}")
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    signing = keyfiles.load_public_hex(args.signing_key)
    result = enrollment.enroll(
        _home(args),
        args.csr.read_bytes(),
        signing,
        out=args.out,
        days=args.days,
        replace=args.replace,
    )
    verb = "re-enrolled" if result.replaced else "enrolled"
    print(f"{verb} {result.station.path}")
    print(f"  certificate {result.cert_path} (valid until {result.not_after:%Y-%m-%d})")
    print(f"  signing key {result.signing_fingerprint}")
    return 0


def cmd_acl(args: argparse.Namespace) -> int:
    text = enrollment.registry_acl(_home(args))
    if args.out is None:
        sys.stdout.write(text)
    else:
        # Atomic: mosquitto re-reads the file on SIGHUP and must never see half of it.
        atomic_write(args.out, text.encode("utf-8"))
        print(f"wrote {args.out}")
    return 0
