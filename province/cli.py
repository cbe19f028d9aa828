"""``loa-province``: the province's desk tools — keys, keyrings, signing, the signing log.

Each subcommand checks what it produces the way stations will, and says in one line what it did.
Exit 0 on success, 1 when the input is refused (with the reason), 2 on a usage error. Keys are
named by key specs (``province.signer``); every signature made is chained into the province
home's signing log (``province.signing_log``) before the envelope is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent import keyfiles
from agent.core.models import Keyring
from agent.core.timefmt import parse_rfc3339
from hal.files import atomic_write
from province import (
    cli_broadcast,
    cli_collect,
    cli_demo,
    cli_enroll,
    cli_publish,
    cli_stations,
    cli_time,
    httt_export,
    release,
    revoke,
    signing_log,
)
from province.errors import ProvinceError
from province.keyring_builder import KeySpec, build_body, sign_keyring
from province.signer import Signer, open_signer
from province.signing import BodyError, canonical_json, sign_body, signed_record

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2

# Subcommand groups living in their own modules: each adds its parsers with
# ``set_defaults(handler=...)``; a handler returns the exit code or raises ProvinceError.
EXTENSIONS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    cli_publish.register,
    cli_collect.register,
    cli_demo.register,
    cli_enroll.register,
    cli_time.register,
    cli_stations.register,
    httt_export.register,
    cli_broadcast.register,
    revoke.register,
    release.register,
]


HOME_HELP = (
    "province home, where the signing log is kept (default: $LOA_PROVINCE_HOME or ./province-home)"
)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"wants a whole number from 1, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loa-province", description="Loa province tools")
    home = cli_publish.default_home()
    sub = parser.add_subparsers(dest="command", required=True)

    keygen = sub.add_parser("keygen", help="make an Ed25519 signing key (NAME.key 0600, NAME.pub)")
    keygen.add_argument("name", help="file name stem, e.g. root1, playlist-2026 or release-1")
    keygen.add_argument("--dir", type=Path, default=Path("."), help="where to write the files")

    keyring = sub.add_parser("keyring", help="build and sign a keyring (the province's trust)")
    keyring.add_argument("--province", required=True, help="2-digit province code")
    keyring.add_argument("--version", type=int, required=True)
    keyring.add_argument("--expires", help="RFC 3339 time with offset (default: one year from now)")
    keyring.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="ROLE=FILE[@SCOPE,...]",
        help="a key for a role (repeat): root, playlist, command, emergency, maintenance, and "
        "optionally release; FILE is .pub or .key; scope defaults to the province",
    )
    keyring.add_argument(
        "--threshold", action="append", default=[], metavar="ROLE=N", help="default 1"
    )
    keyring.add_argument("--live-host", action="append", default=[], metavar="HOST[:PORT]")
    keyring.add_argument(
        "--sign", action="append", default=[], metavar="KEY", help="root key spec (repeat)"
    )
    keyring.add_argument(
        "--previous", type=Path, help="keyring N, to check this one as its rotation N+1"
    )
    keyring.add_argument("--out", type=Path, required=True)
    keyring.add_argument("--home", type=Path, default=home, help=HOME_HELP)

    sign = sub.add_parser("sign", help="wrap a playlist, command or beacon body in DSSE")
    sign.add_argument("body", type=Path)
    sign.add_argument(
        "--key", action="append", required=True, metavar="KEY", help="key spec (repeat)"
    )
    sign.add_argument("--out", type=Path, help="default: stdout")
    sign.add_argument("--home", type=Path, default=home, help=HOME_HELP)

    log = sub.add_parser("log", help="show or verify the signing log")
    log.add_argument("--home", type=Path, default=home, help=HOME_HELP)
    log.add_argument("--verify", action="store_true", help="check the hash chain; print its head")
    log.add_argument("--tail", type=_positive, metavar="N", help="only the last N entries")
    keygen.set_defaults(handler=lambda a: cmd_keygen(a.name, a.dir))
    keyring.set_defaults(handler=cmd_keyring)
    sign.set_defaults(handler=lambda a: cmd_sign(a.body, a.key, a.out, a.home))
    log.set_defaults(handler=lambda a: cmd_log(a.home, a.verify, a.tail))
    for register in EXTENSIONS:
        register(sub)
    return parser


def cmd_keygen(name: str, directory: Path) -> int:
    key = keyfiles.generate()
    private_path = directory / f"{name}.key"
    keyfiles.save_private(private_path, key)
    atomic_write(directory / f"{name}.pub", (keyfiles.public_hex(key) + "\n").encode())
    kid = keyfiles.keyid(key)
    print(f"wrote {private_path} (0600) and {directory / (name + '.pub')}")
    print(f"keyid {kid}  fingerprint {keyfiles.fingerprint(kid)}")
    return EXIT_OK


def _key_spec(text: str) -> KeySpec:
    role, sep, rest = text.partition("=")
    if not sep or not rest:
        raise BodyError(f"--key wants ROLE=FILE[@SCOPE,...], got {text!r}")
    file_part, _, scope_part = rest.partition("@")
    scope = tuple(s for s in scope_part.split(",") if s)
    return KeySpec(role, keyfiles.load_public_hex(Path(file_part)), scope)


def _thresholds(items: Sequence[str]) -> dict[str, int]:
    result: dict[str, int] = {}
    for item in items:
        role, sep, number = item.partition("=")
        if not sep or not number.isdigit():
            raise BodyError(f"--threshold wants ROLE=N, got {item!r}")
        result[role] = int(number)
    return result


def cmd_keyring(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    expires = parse_rfc3339(args.expires) if args.expires else now + timedelta(days=365)
    specs = [_key_spec(k) for k in args.key]
    body = build_body(
        args.province, args.version, expires, specs, _thresholds(args.threshold), args.live_host
    )
    signers = [open_signer(spec) for spec in args.sign]
    if not signers:
        raise BodyError("a keyring must be signed by root keys (--sign KEY, repeat)")
    previous = args.previous.read_bytes() if args.previous else None
    envelope = sign_keyring(body, signers, previous, now)
    _log(args.home, canonical_json(body), envelope, signers, now)
    atomic_write(args.out, envelope)
    print(f"wrote keyring v{args.version} for province {args.province} to {args.out}")
    keyring = Keyring.from_body(body)
    for kid, entry in sorted(keyring.keys.items()):
        roles = ",".join(name for name, role in keyring.roles.items() if kid in role.keyids)
        print(f"  {keyfiles.fingerprint(kid)}  {roles:<24} scope {','.join(entry.scope)}")
    return EXIT_OK


def cmd_sign(body_path: Path, key_specs: Sequence[str], out: Path | None, home: Path) -> int:
    body = body_path.read_bytes()
    signers = [open_signer(spec) for spec in key_specs]
    envelope = sign_body(body, signers)
    _log(home, body, envelope, signers, datetime.now(UTC))
    if out is None:
        sys.stdout.buffer.write(envelope)
    else:
        atomic_write(out, envelope)
        print(f"wrote {out}", file=sys.stderr)
    return EXIT_OK


def _log(
    home: Path, body: bytes, envelope: bytes, signers: Sequence[Signer], now: datetime
) -> None:
    # Logged before the envelope is written: an envelope may be logged and never used, but
    # none leaves the desk unlogged.
    signing_log.append(signing_log.log_path(home), signed_record(body, envelope, signers), now)


def cmd_log(home: Path, verify: bool, tail: int | None) -> int:
    report = signing_log.verify_log(signing_log.log_path(home))
    if not verify or tail is not None:
        entries = report.entries[-tail:] if tail is not None else report.entries
        print(_log_table(entries))
    if not report.ok:
        print(f"BROKEN {report.path}: {report.problem}")
        return EXIT_REFUSED
    if verify:
        count = len(report.entries)
        print(f"signing log {report.path}: {count} entries, hash chain intact")
        print(f"head {report.head}")
    return EXIT_OK


def _log_table(entries: Sequence[signing_log.Entry]) -> str:
    header = ("seq", "time (UTC)", "kind", "issuer", "target", "label", "keys", "by")
    rows = [header] + [
        (
            str(e.seq), e.ts, e.kind, e.issuer, e.target, e.label,
            ",".join(keyfiles.fingerprint(k)[:9] for k in e.keyids), f"{e.user}@{e.host}",
        )
        for e in entries
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (BodyError, keyfiles.KeyFileError, ValueError, ProvinceError) as exc:
        print(f"loa-province: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(f"loa-province: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
