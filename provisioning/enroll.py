"""``loa-provision enroll``: install the certificate the province issued for this station.

This module owns the checks a technician cannot do by eye — the certificate names this station,
certifies this station's own TLS key, is signed by the given CA and is valid now — and the
installation of ``keys/station.crt`` and ``keys/ca.crt`` (and, when asked, the broker URLs in
the config). Everything is checked before anything is written: a wrong file installs nothing.
Certificate issuing is the province's (``province.enrollment``).
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.config import Config, ConfigError, load_config
from agent.link import LinkError, parse_broker_url
from hal.files import atomic_write


class EnrollError(RuntimeError):
    """The certificate cannot be installed; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Installed:
    station: str
    certificate: Path
    ca: Path
    not_after: datetime
    brokers: tuple[str, ...] | None  # the new broker URLs, when they were rewritten


def install(
    config_path: Path,
    cert_pem: bytes,
    ca_pem: bytes,
    now: datetime,
    brokers: Sequence[str] = (),
) -> Installed:
    """Check the station certificate against this station and the CA, then install both (and
    the broker URLs, if given). Raises EnrollError, having written nothing, on any mismatch."""
    try:
        text = config_path.read_text("utf-8")
    except OSError as exc:
        raise EnrollError(f"cannot read the station config {config_path}: {exc.strerror}") from exc
    try:
        config = load_config(text, {}, config_path.resolve().parent)
    except ConfigError as exc:
        raise EnrollError(f"{config_path}: {exc}") from exc
    cert = _load_cert(cert_pem, "the certificate")
    ca = _load_cert(ca_pem, "the CA certificate")
    _check(config, cert, ca, now)
    base_dir = config_path.resolve().parent
    new_text = rewrite_broker_urls(text, base_dir, config, brokers) if brokers else None

    paths = config.paths
    # Each file is replaced atomically, the pair cannot be: a crash in between leaves a pair the
    # broker's TLS refuses (the agent reports it), and running this command again repairs it.
    atomic_write(paths.ca_certificate, ca_pem)
    atomic_write(paths.certificate, cert_pem)
    keys = paths.keys.stat()
    if os.geteuid() == 0 and keys.st_uid != 0:  # the service user's keys (init's hand-over)
        for path in (paths.ca_certificate, paths.certificate):
            os.chown(path, keys.st_uid, keys.st_gid)
    if new_text is not None:
        before = config_path.stat()
        atomic_write(config_path, new_text.encode("utf-8"), mode=stat.S_IMODE(before.st_mode))
        if os.geteuid() == 0:
            os.chown(config_path, before.st_uid, before.st_gid)
    return Installed(
        config.station.path,
        paths.certificate,
        paths.ca_certificate,
        cert.not_valid_after_utc,
        tuple(brokers) if brokers else None,
    )


def _check(config: Config, cert: x509.Certificate, ca: x509.Certificate, now: datetime) -> None:
    station = config.station.path
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = names[0].value if len(names) == 1 else None
    if cn != station:
        raise EnrollError(
            f"the certificate is for {cn!r}, but this station is {station}: "
            "it was issued for another station"
        )
    try:
        tls_key = serialization.load_pem_private_key(
            config.paths.tls_key.read_bytes(), password=None
        )
    except OSError as exc:
        raise EnrollError(
            f"cannot read this station's TLS key {config.paths.tls_key}: {exc.strerror} "
            "(run `loa-provision init` first)"
        ) from exc
    except (ValueError, TypeError) as exc:
        raise EnrollError(f"{config.paths.tls_key} is not a PEM private key") from exc
    if cert.public_key() != tls_key.public_key():
        raise EnrollError(
            f"the certificate does not match this station's TLS key {config.paths.tls_key}: "
            "it was issued for an older certificate request (re-send keys/station.csr)"
        )
    _check_issued_by(cert, ca)
    for what, c in (("the certificate", cert), ("the CA certificate", ca)):
        if now < c.not_valid_before_utc:
            raise EnrollError(
                f"{what} is not valid before {c.not_valid_before_utc.isoformat()} "
                f"(now {now.isoformat()}): check this machine's clock"
            )
        if now >= c.not_valid_after_utc:
            raise EnrollError(f"{what} expired on {c.not_valid_after_utc.isoformat()}")
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise EnrollError("the certificate is not a TLS client certificate (no clientAuth)")


def _check_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise EnrollError("the CA file is not a CA certificate (no CA basic constraint)")
    try:
        cert.verify_directly_issued_by(ca)
    except ValueError as exc:  # issuer name differs, or the signature algorithm is unusable
        raise EnrollError(
            f"the certificate was not issued by this CA ({cert.issuer.rfc4514_string()} "
            f"issued it, the CA file is {ca.subject.rfc4514_string()})"
        ) from exc
    except (InvalidSignature, TypeError) as exc:
        raise EnrollError(
            "the certificate's signature does not verify with this CA: "
            "another CA of the same name issued it, or it was altered"
        ) from exc


def _load_cert(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise EnrollError(f"{what} is not a PEM certificate") from exc


_URLS_KEY = re.compile(r"(\s*urls\s*=\s*)(.*)")
_TRAILER = re.compile(r"\s*(?:#.*)?")
_TABLE_HEADER = re.compile(r"\s*\[")


def _split_array(rest: str) -> tuple[str, str] | None:
    """``rest`` as (a one-line TOML array, the whitespace or comment after it), or None.

    Each `]` is tried as the array's end, because a URL may hold brackets (`[::1]`)."""
    for end in (i + 1 for i, ch in enumerate(rest) if ch == "]"):
        value, trailer = rest[:end], rest[end:]
        if _TRAILER.fullmatch(trailer) is None:
            continue
        try:
            if isinstance(tomllib.loads(f"v = {value}")["v"], list):
                return value, trailer
        except tomllib.TOMLDecodeError:
            continue
    return None


def rewrite_broker_urls(text: str, base_dir: Path, config: Config, brokers: Sequence[str]) -> str:
    """The config text with the `[broker]` table's `urls` line replaced and every other byte
    kept; the result is re-parsed and must differ from ``config`` in the URLs alone."""
    for url in brokers:
        try:
            parse_broker_url(url)
        except LinkError as exc:
            raise EnrollError(str(exc)) from exc
    # A JSON string is a valid TOML basic string (as `loa-provision init` writes them).
    value = "[" + ", ".join(json.dumps(u, ensure_ascii=False) for u in brokers) + "]"
    lines = text.splitlines(keepends=True)
    in_broker = False
    for index, line in enumerate(lines):
        if _TABLE_HEADER.match(line):
            in_broker = line.split("#", 1)[0].strip() == "[broker]"
            continue
        if not in_broker:
            continue
        body = line.rstrip("\r\n")
        key = _URLS_KEY.fullmatch(body)
        if key is None:
            continue
        split = _split_array(key.group(2))
        if split is not None:
            lines[index] = key.group(1) + value + split[1] + line[len(body) :]
            break
        raise EnrollError(
            "the [broker] urls setting spans several lines: put it on one line or edit it by hand"
        )
    else:
        raise EnrollError("the config has no `urls = [...]` line in its [broker] table")
    new_text = "".join(lines)
    try:
        new_config = load_config(new_text, {}, base_dir)
    except ConfigError as exc:
        raise EnrollError(f"the new broker URLs do not fit the config: {exc}") from exc
    # The agent's own loader decides: the rewrite must have changed the URLs and nothing else.
    if new_config != replace(config, broker=replace(config.broker, urls=tuple(brokers))):
        raise EnrollError("rewriting the broker URLs would change other settings; edit by hand")
    return new_text
