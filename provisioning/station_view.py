"""What ``loa-provision status`` and ``trust`` show: read from the station's own state files
(the trust database, the outbox, ``volume.json``), read-only, so they work whether the agent
runs or not and never disturb it.

``status``: is the agent running, what is on air now, the last plays and how they ended, the
reports waiting, the playlists in force. ``trust``: the keyring with fingerprints short enough
to read out over the phone (``3475 0f98 bd59 fcfc``), the station's own signing key, its
certificate and the province CA.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent import keyfiles
from agent.config import Config
from agent.trust_store import TrustStore
from provisioning.agent_process import running_agent
from provisioning.i18n import _
from provisioning.ui import FAIL, INFO, OK, WARN, Terminal

LAST_PLAYS = 8


@dataclass(frozen=True)
class Play:
    key: str
    outcome: str
    at: str


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def on_air(config: Config) -> dict[str, str]:
    try:
        with _ro(config.paths.outbox) as db:
            return dict(db.execute("SELECT key, started_at FROM on_air ORDER BY started_at"))
    except sqlite3.Error:
        return {}


def last_plays(config: Config, count: int = LAST_PLAYS) -> list[Play]:
    try:
        with _ro(config.paths.outbox) as db:
            rows = db.execute(
                "SELECT key, outcome, reported_at FROM occurrence ORDER BY reported_at DESC "
                "LIMIT ?",
                (count,),
            ).fetchall()
    except sqlite3.Error:
        return []
    return [Play(k, o, a) for k, o, a in rows]


def waiting_reports(config: Config) -> tuple[int, str | None, str | None]:
    """(count, oldest created_at, when the agent last said it was alive)."""
    try:
        with _ro(config.paths.outbox) as db:
            count, oldest = db.execute("SELECT count(*), min(created_at) FROM report").fetchone()
            alive = db.execute("SELECT at FROM alive WHERE id = 1").fetchone()
    except sqlite3.Error:
        return 0, None, None
    return int(count), oldest, alive[0] if alive else None


def show_status(config: Config, config_path: Path, term: Terminal) -> int:
    pid = running_agent(config_path)
    term.heading(_("Station {station}").format(station=config.station.path))
    if pid is None:
        term.say(WARN, _("The agent is not running."))
    else:
        term.say(OK, _("The agent is running (pid {pid}).").format(pid=pid))
    count, oldest, alive = waiting_reports(config)
    if alive:
        term.say(INFO, _("Last heartbeat: {at}.").format(at=_short(alive)))
    playing = on_air(config)
    if playing:
        for key, started in playing.items():
            term.line(
                f"{term.mark(OK)} "
                + _("On air: {key} since {at}.").format(key=key, at=_short(started))
            )
    else:
        term.say(INFO, _("Nothing on air."))
    if count:
        mark = term.mark(WARN)
        text = _("{count} reports wait to be sent; the oldest since {at}.").format(
            count=count, at=_short(oldest or "?")
        )
        term.line(f"{mark} {text}")
    else:
        term.say(OK, _("No reports waiting to be sent."))
    volume = _volume(config)
    term.say(INFO, _("Volume: {volume} %.").format(volume=volume))
    with TrustStore(config.paths.trust_db) as store:
        state = store.snapshot()
    rows = [
        [f"{issuer} -> {target}", str(record.version)]
        for (issuer, target), record in sorted(state.streams.items())
    ]
    term.line()
    if rows:
        term.table([_("Playlist"), _("Version")], rows)
    else:
        term.line(_("No playlist yet."))
    plays = last_plays(config)
    if plays:
        term.line()
        term.table(
            [_("Last plays"), _("Outcome"), _("Reported")],
            [[p.key, outcome_name(p.outcome), _short(p.at)] for p in plays],
        )
    return 0


def _volume(config: Config) -> int:
    try:
        doc = json.loads((config.paths.state / "volume.json").read_bytes())
        volume = doc["volume"]
        if isinstance(volume, int) and 0 <= volume <= 100:
            return volume
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return config.audio.station_volume


def outcome_name(outcome: str) -> str:
    names = {
        "complete": _("complete"),
        "partial": _("partial"),
        "preempted": _("preempted"),
        "skipped": _("skipped"),
        "missed": _("missed"),
        "failed": _("failed"),
    }
    return names.get(outcome, outcome)


def _short(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso


# trust -------------------------------------------------------------------------------------


def grouped(hex_digest: str, groups: int = 4) -> str:
    """``34750f98bd59fcfc…`` -> ``3475 0f98 bd59 fcfc``: the first ``groups`` groups of four."""
    head = hex_digest[: 4 * groups]
    return " ".join(head[i : i + 4] for i in range(0, len(head), 4))


def certificate_fingerprint(path: Path) -> str | None:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    der = cert.public_bytes(serialization.Encoding.DER)
    return grouped(hashlib.sha256(der).hexdigest(), 8)


def show_trust(config: Config, term: Terminal) -> int:
    with TrustStore(config.paths.trust_db) as store:
        state = store.snapshot()
    keyring = state.keyring
    term.heading(_("Trust of station {station}").format(station=config.station.path))
    if keyring is None:
        term.say(FAIL, _("No keyring is installed."))
        return 1
    term.line(
        _("Keyring version {version} of province {province}, valid until {date}.").format(
            version=keyring.version,
            province=keyring.province,
            date=keyring.expires.astimezone(UTC).strftime("%Y-%m-%d"),
        )
    )
    rows = []
    for name, role in sorted(keyring.roles.items()):
        for n, keyid in enumerate(sorted(role.keyids)):
            need = f"{role.threshold}/{len(role.keyids)}" if n == 0 else ""
            rows.append([name if n == 0 else "", need, keyfiles.fingerprint(keyid)])
    term.line()
    term.table([_("Role"), _("Needs"), _("Key fingerprint")], rows)
    term.line()
    try:
        own = keyfiles.fingerprint(keyfiles.keyid(keyfiles.load_private(config.paths.signing_key)))
    except keyfiles.KeyFileError:
        own = "?"
    term.line(_("This station's signing key: {fingerprint}").format(fingerprint=own))
    cert = certificate_fingerprint(config.paths.certificate)
    ca = certificate_fingerprint(config.paths.ca_certificate)
    term.line(_("Certificate (SHA-256): {fingerprint}").format(fingerprint=cert or _("none yet")))
    term.line(_("Province CA (SHA-256): {fingerprint}").format(fingerprint=ca or _("none yet")))
    if state.time_floor is not None:
        floor = state.time_floor.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        term.line(_("Latest time trusted: {at}").format(at=floor))
    return 0
