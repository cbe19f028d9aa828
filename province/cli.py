"""``loa-province``: the province's desk tools — keys, keyrings, signing.

Each subcommand checks what it produces the way stations will, and says in one line what it did.
Exit 0 on success, 1 when the input is refused (with the reason), 2 on a usage error.
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
from province import cli_collect, cli_demo, cli_enroll, cli_publish
from province.errors import ProvinceError
from province.keyring_builder import KeySpec, build_body, sign_keyring
from province.signing import BodyError, sign_body

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2

# Subcommand groups living in their own modules: each adds its parsers with
# ``set_defaults(handler=...)``; a handler returns the exit code or raises ProvinceError.
EXTENSIONS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    cli_publish.register,
    cli_collect.register,
    cli_demo.register,
    cli_enroll.register,
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loa-province", description="Loa province tools")
    sub = parser.add_subparsers(dest="command", required=True)

    keygen = sub.add_parser("keygen", help="make an Ed25519 signing key (NAME.key 0600, NAME.pub)")
    keygen.add_argument("name", help="file name stem, e.g. root1 or playlist-2026")
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
        help="a key for a role (repeat); FILE is .pub or .key; scope defaults to the province",
    )
    keyring.add_argument(
        "--threshold", action="append", default=[], metavar="ROLE=N", help="default 1"
    )
    keyring.add_argument("--live-host", action="append", default=[], metavar="HOST[:PORT]")
    keyring.add_argument(
        "--sign", action="append", default=[], type=Path, metavar="KEY", help="root key (repeat)"
    )
    keyring.add_argument(
        "--previous", type=Path, help="keyring N, to check this one as its rotation N+1"
    )
    keyring.add_argument("--out", type=Path, required=True)

    sign = sub.add_parser("sign", help="wrap a playlist, command or beacon body in DSSE")
    sign.add_argument("body", type=Path)
    sign.add_argument("--key", action="append", required=True, type=Path, help="repeat")
    sign.add_argument("--out", type=Path, help="default: stdout")
    keygen.set_defaults(handler=lambda a: cmd_keygen(a.name, a.dir))
    keyring.set_defaults(handler=cmd_keyring)
    sign.set_defaults(handler=lambda a: cmd_sign(a.body, a.key, a.out))
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
    signers = [keyfiles.load_private(p) for p in args.sign]
    if not signers:
        raise BodyError("a keyring must be signed by root keys (--sign KEY, repeat)")
    previous = args.previous.read_bytes() if args.previous else None
    envelope = sign_keyring(body, signers, previous, now)
    atomic_write(args.out, envelope)
    print(f"wrote keyring v{args.version} for province {args.province} to {args.out}")
    keyring = Keyring.from_body(body)
    for kid, entry in sorted(keyring.keys.items()):
        roles = ",".join(name for name, role in keyring.roles.items() if kid in role.keyids)
        print(f"  {keyfiles.fingerprint(kid)}  {roles:<24} scope {','.join(entry.scope)}")
    return EXIT_OK


def cmd_sign(body_path: Path, key_paths: Sequence[Path], out: Path | None) -> int:
    body = body_path.read_bytes()
    envelope = sign_body(body, [keyfiles.load_private(p) for p in key_paths])
    if out is None:
        sys.stdout.buffer.write(envelope)
    else:
        atomic_write(out, envelope)
        print(f"wrote {out}", file=sys.stderr)
    return EXIT_OK


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
