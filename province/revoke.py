"""Revocation: taking a lost or stolen station out of service for good, and the CA's CRL.

This module owns ``loa-province revoke`` and ``loa-province crl``: it records the revocation in
the registry (the station row stays, with revoked_at and the reason; its certificate goes on
the revocation list), signs the certificate revocation list of every certificate ever revoked
(``HOME/ca/crl.pem``, copied to wherever the broker's ``crlfile`` points), renders the broker
ACL without the station, and has the broker re-read both (SIGHUP, or the command to run).

Why both the CRL and the ACL: the ACL takes away what an identity may read and write, also on a
connection already open; the CRL refuses the certificate at the TLS handshake, so the stolen
device cannot connect at all, not even to be refused topic by topic. mosquitto 2.0 re-reads
both on SIGHUP (``province.mosquitto``). When the station's word stops counting is coverage's
(``province.coverage``), from the registry's revocation record.

The CRL's next update is the CA's own end: mosquitto (OpenSSL) refuses every client once the
CRL it holds has expired, and this CRL is pushed to the broker on every change rather than
fetched by anyone, so a short lifetime would only add a way to lock every station out.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.core.timefmt import format_rfc3339, parse_rfc3339
from hal.files import atomic_write
from province import acl, enrollment, pki
from province.enrollment import ProvinceHome
from province.errors import ProvinceError
from province.home import open_home_registry, registry_province
from province.registry import Registry, RegistryError, Revocation

# What the operator's one command is when the CLI cannot signal the broker itself: Debian's
# mosquitto.service reloads with `kill -HUP $MAINPID`.
RELOAD_COMMAND = "sudo systemctl reload mosquitto"
DEFAULT_CRL_REASON = "key-compromise"  # a lost or stolen station: its keys are out of our hands


def crl_path(home: ProvinceHome) -> Path:
    return home.root / "ca" / "crl.pem"


@dataclass(frozen=True, slots=True)
class CrlResult:
    paths: tuple[Path, ...]  # HOME/ca/crl.pem first, then the copies
    number: int
    serials: tuple[int, ...]
    next_update: datetime


@dataclass(frozen=True, slots=True)
class RevokeResult:
    revocation: Revocation
    already: bool  # the station was revoked before: only the CRL and the ACL were rewritten
    crl: CrlResult
    acl: Path | None
    reloaded_pid: int | None


def write_crl(
    home: ProvinceHome,
    registry: Registry,
    copies: Sequence[Path] = (),
    now: datetime | None = None,
) -> CrlResult:
    """Sign the CRL of every certificate the registry has revoked (none: the empty CRL a broker
    needs from the start) with the next CRL number, and write it to ``HOME/ca/crl.pem`` and each
    of ``copies``."""
    ca_cert, ca_key = _load_ca(home)
    issued = now if now is not None else datetime.now(UTC)
    next_update = enrollment.not_after(ca_cert)
    entries = [
        pki.RevokedCert(
            r.serial,
            parse_rfc3339(r.recorded_at),
            r.crl_reason,
            # Only when the station was lost before it was revoked: the CRL's invalidityDate.
            invalid_since=(parse_rfc3339(r.revoked_at) if r.revoked_at < r.recorded_at else None),
        )
        for r in registry.revocations()
    ]
    number = registry.next_crl_number()
    try:
        pem = pki.make_crl(ca_cert, ca_key, entries, number, next_update=next_update, now=issued)
    except pki.PkiError as exc:
        raise ProvinceError(f"cannot sign the CRL: {exc}") from exc
    paths = (crl_path(home), *copies)
    for path in paths:
        # Atomic: mosquitto re-reads the file on SIGHUP and must never see half of it.
        atomic_write(path, pem)
    return CrlResult(paths, number, tuple(sorted(e.serial for e in entries)), next_update)


def revoke(
    home: ProvinceHome,
    station_id: str,
    reason: str,
    *,
    crl_reason: str = DEFAULT_CRL_REASON,
    since: datetime | None = None,
    crl_copies: Sequence[Path] = (),
    acl_out: Path | None = None,
    broker_pid: int | None = None,
    now: datetime | None = None,
) -> RevokeResult:
    """Revoke ``station_id``: registry, CRL, ACL, and the broker's reload when ``broker_pid``
    is given. ``since`` (default: now) is when its word stops counting, earlier when the station
    went missing before anyone revoked it. Revoking a revoked station again rewrites the CRL and
    the ACL only (a retry after a failed write or reload)."""
    moment = now if now is not None else datetime.now(UTC)
    try:
        acl.parse_station_id(station_id)
    except ValueError as exc:
        raise ProvinceError(str(exc)) from exc
    if crl_reason not in pki.CRL_REASONS:
        raise ProvinceError(
            f"--crl-reason must be one of {', '.join(pki.CRL_REASONS)}, got {crl_reason!r}"
        )
    if since is not None and since > moment:
        raise ProvinceError(f"--since {format_rfc3339(since)} is in the future")
    if not reason.strip():
        raise ProvinceError("--reason must say something (it is kept with the revocation)")
    _load_ca(home)  # refuse before anything is written when there is no CA to sign the CRL
    with open_home_registry(home.root) as registry:
        province = registry_province(registry)
        if not station_id.startswith(f"{province}/"):
            raise ProvinceError(f"{station_id} is not in province {province}")
        record = registry.lookup_station(station_id)
        if record is None:
            raise ProvinceError(f"{station_id} is not enrolled")
        serial = pki.serial_number(record.cert_pem)
        done = [r for r in registry.revocations(station_id) if r.serial == serial]
        already = bool(done)
        if done:
            revocation = done[-1]
        else:
            revoked_at = format_rfc3339((since or moment).astimezone(UTC))
            try:
                revocation = registry.revoke_station(
                    station_id, serial, revoked_at, reason.strip(), crl_reason
                )
            except RegistryError as exc:  # revoked by someone else since the lookup
                raise ProvinceError(str(exc)) from exc
        crl = write_crl(home, registry, crl_copies, moment)
    acl_text = enrollment.registry_acl(home)
    if acl_out is not None:
        atomic_write(acl_out, acl_text.encode("utf-8"))
    if broker_pid is not None:
        try:
            os.kill(broker_pid, signal.SIGHUP)
        except OSError as exc:
            raise ProvinceError(
                f"revoked, but the broker (pid {broker_pid}) could not be told to reload: "
                f"{exc.strerror}; run `{RELOAD_COMMAND}`"
            ) from exc
    return RevokeResult(revocation, already, crl, acl_out, broker_pid)


def _load_ca(home: ProvinceHome) -> tuple[bytes, bytes]:
    try:
        return home.ca_cert.read_bytes(), home.ca_key.read_bytes()
    except FileNotFoundError as exc:
        raise ProvinceError(
            f"no province CA at {exc.filename}: run `loa-province ca init` first"
        ) from exc


# -- the command line ----------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``revoke`` and ``crl`` under ``loa-province``."""
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument(
        "--home",
        type=Path,
        help=f"the province home (default: ${enrollment.HOME_ENV} or ./province-home)",
    )
    broker = argparse.ArgumentParser(add_help=False)
    broker.add_argument(
        "--crl-out",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="also write the CRL here: the broker's crlfile (repeat); HOME/ca/crl.pem always",
    )

    revoke_parser = sub.add_parser(
        "revoke",
        parents=[home, broker],
        help="revoke a lost or stolen station: registry, CRL and ACL, then the broker reloads",
    )
    revoke_parser.add_argument("station", help="station id, e.g. 25/08230/08230-01")
    revoke_parser.add_argument(
        "--reason", default="lost or stolen", help="why, in words kept with the revocation"
    )
    revoke_parser.add_argument(
        "--crl-reason",
        choices=sorted(pki.CRL_REASONS),
        default=DEFAULT_CRL_REASON,
        help=f"the CRL's reason code (default {DEFAULT_CRL_REASON}; "
        "cessation-of-operation for a station taken down for good)",
    )
    revoke_parser.add_argument(
        "--since",
        metavar="TIME",
        help="RFC 3339 time the station went missing; its reports from then on do not count "
        "(default: now)",
    )
    revoke_parser.add_argument(
        "--acl-out", type=Path, metavar="PATH", help="write the broker ACL here (its acl_file)"
    )
    revoke_parser.add_argument(
        "--broker-pid",
        type=int,
        metavar="PID",
        help=f"send the broker SIGHUP to re-read CRL and ACL (else run `{RELOAD_COMMAND}`)",
    )
    revoke_parser.set_defaults(handler=cmd_revoke)

    crl_parser = sub.add_parser(
        "crl",
        parents=[home, broker],
        help="(re)write the CA's CRL (the empty one before anything is revoked)",
    )
    crl_parser.set_defaults(handler=cmd_crl)


def _home(path: Path | None) -> ProvinceHome:
    return ProvinceHome(path if path is not None else enrollment.default_home())


def cmd_revoke(args: argparse.Namespace) -> int:
    result = revoke(
        _home(args.home),
        args.station,
        args.reason,
        crl_reason=args.crl_reason,
        since=None if args.since is None else parse_rfc3339(args.since),
        crl_copies=args.crl_out,
        acl_out=args.acl_out,
        broker_pid=args.broker_pid,
    )
    r = result.revocation
    if result.already:
        print(f"{r.station} was already revoked (from {r.revoked_at}): CRL and ACL rewritten")
    else:
        print(f"revoked {r.station} from {r.revoked_at}: {r.reason} ({r.crl_reason})")
    print(f"  certificate serial {r.serial:x} is on CRL #{result.crl.number}")
    print(f"  CRL {', '.join(str(p) for p in result.crl.paths)}")
    if result.acl is not None:
        print(f"  ACL without it: {result.acl}")
    else:
        print("  write the broker ACL without it: loa-province acl --out <the broker's acl_file>")
    if result.reloaded_pid is not None:
        print(f"  broker (pid {result.reloaded_pid}) told to re-read CRL and ACL (SIGHUP)")
    else:
        print(f"  now make the broker re-read CRL and ACL: {RELOAD_COMMAND}")
    return 0


def cmd_crl(args: argparse.Namespace) -> int:
    home = _home(args.home)
    with open_home_registry(home.root) as registry:
        result = write_crl(home, registry, args.crl_out)
    count = len(result.serials)
    print(
        f"CRL #{result.number} with {count} revoked certificate{'' if count == 1 else 's'}, "
        f"valid until {result.next_update:%Y-%m-%d}: {', '.join(str(p) for p in result.paths)}"
    )
    return 0
