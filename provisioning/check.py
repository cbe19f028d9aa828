"""``loa-provision check``: is this station ready to go on air? Each check says in plain words
what is right or wrong and, when wrong, what to do; the command exits 0 only when nothing
failed.

The checks run in the order a technician fixes things: the config, the keys and certificate,
the clock, the disk, the broker, the sound card, the relays, then what the agent holds (cache,
playlists, outbox) and the modem. A check that needs the agent stopped (the broker probe, the
sound card, the relays: the agent holds them) says so while the agent runs and reads what the
agent reports instead.

Findings carry English text through ``_()``; the CLI installs the technician's language first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent import keyfiles
from agent.cache import MediaCache
from agent.config import Config, ConfigError, read_config, unknown_keys
from agent.core import strict
from agent.core.models import Playlist
from agent.link import TlsFiles
from agent.outbox import Outbox
from agent.player import RelayTestResult
from agent.trust_store import StoreError, TrustStore
from hal.clock import kernel_clock_synchronised
from provisioning import broker_probe, hardware
from provisioning.agent_process import running_agent
from provisioning.i18n import _
from provisioning.ui import FAIL, INFO, OK, SKIP, WARN

CERT_WARN_DAYS = 30
DISK_FAIL_MB = 50
DISK_WARN_MB = 200
OUTBOX_WARN_S = 3600.0
MODEM_WARN_PCT = 20


@dataclass(frozen=True)
class Finding:
    area: str
    status: str
    message: str
    fix: str = ""


@dataclass
class Options:
    config_path: Path
    audio: bool = True
    relays: bool = True
    broker_timeout_s: float = 10.0
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    kernel_synchronised: Callable[[], bool] = kernel_clock_synchronised


def ready(findings: list[Finding]) -> bool:
    return not any(f.status == FAIL for f in findings)


def run_checks(options: Options) -> Iterator[Finding]:
    """Every finding, in order; stops after the config when there is no usable config."""
    config = yield from _config(options)
    if config is None:
        return
    agent_pid = running_agent(options.config_path)
    if agent_pid is not None:
        yield Finding("agent", INFO, _("The agent is running (pid {pid}).").format(pid=agent_pid))
    yield from _keys(config)
    yield from _certificate(config, options)
    yield from _clock(config, options)
    yield from _disk(config)
    yield from _broker(config, options, agent_pid)
    yield from _audio(config, options, agent_pid)
    yield from _relays(config, options, agent_pid)
    yield from _cache_and_playlists(config)
    yield from _outbox(config, options, agent_pid)
    yield from _modem()


# config ------------------------------------------------------------------------------------


def _config(options: Options) -> Generator[Finding, None, Config | None]:
    path = options.config_path
    fix_init = _("Set the station up: loa-provision init --province .. --commune .. --station ..")
    if not path.exists():
        yield Finding(
            "config",
            FAIL,
            _("No configuration: {path} does not exist.").format(path=path),
            fix_init,
        )
        return None
    try:
        config = read_config(path, dict(os.environ))
    except ConfigError as exc:
        yield Finding(
            "config",
            FAIL,
            _("The configuration is wrong: {error}").format(error=exc),
            _("Correct {path}.").format(path=path),
        )
        return None
    yield Finding(
        "config",
        OK,
        _("Configuration {path} is valid: station {station}.").format(
            path=path, station=config.station.path
        ),
    )
    unknown = unknown_keys(path.read_text("utf-8"))
    if unknown:
        yield Finding(
            "config",
            WARN,
            _("Unknown settings are ignored: {keys}.").format(keys=", ".join(unknown)),
            _("Check their spelling in {path}.").format(path=path),
        )
    return config


# keys and certificate ----------------------------------------------------------------------


def _keys(config: Config) -> Iterator[Finding]:
    paths = config.paths
    try:
        signing = keyfiles.load_private(paths.signing_key)
    except keyfiles.KeyFileError as exc:
        yield Finding(
            "keys",
            FAIL,
            _("The signing key cannot be used: {error}").format(error=exc),
            _("This station must be set up again (factory-reset, then init)."),
        )
    else:
        yield Finding(
            "keys",
            OK,
            _("Signing key {fingerprint}.").format(
                fingerprint=keyfiles.fingerprint(keyfiles.keyid(signing))
            ),
        )
    if not paths.tls_key.exists():
        yield Finding(
            "keys",
            FAIL,
            _("The TLS key {path} is missing.").format(path=paths.tls_key),
            _("This station must be set up again (factory-reset, then init)."),
        )


def _certificate(config: Config, options: Options) -> Iterator[Finding]:
    paths = config.paths
    if not paths.certificate.exists():
        yield Finding(
            "certificate",
            FAIL,
            _("There is no certificate yet."),
            _(
                "Send {csr} to the province; install what comes back with: "
                "loa-provision enroll STATION.crt --ca CA.crt"
            ).format(csr=paths.csr),
        )
        return
    try:
        cert = x509.load_pem_x509_certificate(paths.certificate.read_bytes())
        key = serialization.load_pem_private_key(paths.tls_key.read_bytes(), None)
    except (OSError, ValueError) as exc:
        yield Finding(
            "certificate",
            FAIL,
            _("The certificate cannot be read: {error}").format(error=exc),
            _("Enroll again: loa-provision enroll STATION.crt --ca CA.crt"),
        )
        return
    fix_enroll = _("Enroll again: loa-provision enroll STATION.crt --ca CA.crt")
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        yield Finding(
            "certificate",
            FAIL,
            _("The certificate does not belong to this station's TLS key."),
            fix_enroll,
        )
        return
    names = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if names != [config.station.path]:
        yield Finding(
            "certificate",
            FAIL,
            _("The certificate is for {name}, not for {station}.").format(
                name=", ".join(map(str, names)) or "?", station=config.station.path
            ),
            fix_enroll,
        )
        return
    try:
        ca = x509.load_pem_x509_certificate(paths.ca_certificate.read_bytes())
        cert.verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError) as exc:
        yield Finding(
            "certificate",
            FAIL,
            _("The certificate is not signed by the province CA {path}: {error}").format(
                path=paths.ca_certificate, error=exc
            ),
            fix_enroll,
        )
        return
    except Exception as exc:  # cryptography's InvalidSignature has no common base with the rest
        yield Finding(
            "certificate",
            FAIL,
            _("The certificate is not signed by the province CA {path}: {error}").format(
                path=paths.ca_certificate, error=type(exc).__name__
            ),
            fix_enroll,
        )
        return
    now = options.now()
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        yield Finding(
            "certificate",
            FAIL,
            _(
                "The certificate is valid only from {date}: this station's clock is probably wrong."
            ).format(date=_day(not_before)),
            _("Set the clock (see the clock line)."),
        )
    elif now >= not_after:
        yield Finding(
            "certificate",
            FAIL,
            _("The certificate expired on {date}.").format(date=_day(not_after)),
            _("Ask the province for a new certificate and enroll it."),
        )
    elif not_after - now < timedelta(days=CERT_WARN_DAYS):
        yield Finding(
            "certificate",
            WARN,
            _("The certificate expires in {days} days ({date}).").format(
                days=(not_after - now).days, date=_day(not_after)
            ),
            _("Ask the province for a new certificate soon."),
        )
    else:
        yield Finding(
            "certificate",
            OK,
            _("Certificate for {station}, valid until {date}.").format(
                station=config.station.path, date=_day(not_after)
            ),
        )


# clock and disk ----------------------------------------------------------------------------


def _clock(config: Config, options: Options) -> Iterator[Finding]:
    now = options.now()
    fix_clock = _(
        "Connect the station to the network and let it synchronise its clock "
        "(timedatectl status); if there is no network, set it: sudo date -s 'YYYY-MM-DD "
        "HH:MM'."
    )
    try:
        with TrustStore(config.paths.trust_db) as store:
            floor = store.snapshot().time_floor
    except StoreError as exc:
        yield Finding(
            "clock",
            FAIL,
            _("The state database cannot be read: {error}").format(error=exc),
            _("Check the disk; if it is damaged, set the station up again."),
        )
        return
    if floor is not None and now < floor - config.limits.clock_skew:
        yield Finding(
            "clock",
            FAIL,
            _(
                "The clock says {now}, earlier than a time this station "
                "already trusted ({floor}): the clock is wrong."
            ).format(now=_minute(now), floor=_minute(floor)),
            fix_clock,
        )
        return
    if config.clock_trust == "system":
        yield Finding(
            "clock", OK, _("The clock is trusted as set ({now} UTC).").format(now=_minute(now))
        )
    elif options.kernel_synchronised():
        yield Finding(
            "clock", OK, _("The clock is synchronised ({now} UTC).").format(now=_minute(now))
        )
    else:
        yield Finding(
            "clock",
            FAIL,
            _("The clock is not synchronised: schedules would play at the wrong time."),
            fix_clock,
        )


def _disk(config: Config) -> Iterator[Finding]:
    seen: set[int] = set()
    for path in (config.paths.state, config.paths.cache):
        try:
            device = path.stat().st_dev
            usage = shutil.disk_usage(path)
        except OSError as exc:
            yield Finding(
                "disk",
                FAIL,
                _("{path} cannot be read: {error}").format(path=path, error=exc.strerror),
                _("Set the station up again."),
            )
            continue
        if device in seen:
            continue
        seen.add(device)
        free_mb = usage.free / 1e6
        text = _("{free:.0f} MB free of {total:.0f} MB on the disk of {path}.").format(
            free=free_mb, total=usage.total / 1e6, path=path
        )
        fix = _(
            "Free some space: old logs (sudo journalctl --vacuum-size=50M), files that are "
            "not Loa's."
        )
        if free_mb < DISK_FAIL_MB:
            yield Finding("disk", FAIL, text, fix)
        elif free_mb < DISK_WARN_MB:
            yield Finding("disk", WARN, text, fix)
        else:
            yield Finding("disk", OK, text)


# broker ------------------------------------------------------------------------------------


def _broker(config: Config, options: Options, agent_pid: int | None) -> Iterator[Finding]:
    if not config.broker.urls:
        yield Finding(
            "broker",
            FAIL,
            _("No broker is configured."),
            _("Add the province's broker: loa-provision enroll ... --broker mqtts://HOST:8883"),
        )
        return
    if agent_pid is not None:
        yield Finding(
            "broker",
            SKIP,
            _(
                "The agent is running and holds the station's connection: "
                "the broker is judged by the outbox below (stop the agent to test it "
                "here)."
            ),
        )
        return
    if not config.paths.certificate.exists():
        yield Finding("broker", SKIP, _("No certificate yet: the broker cannot be tried."))
        return
    paths = config.paths
    tls = TlsFiles(paths.ca_certificate, paths.certificate, paths.tls_key)
    reached = False
    for url in config.broker.urls:
        result = broker_probe.probe(
            url, tls, config.station.path, config.broker.session_expiry_s, options.broker_timeout_s
        )
        if result.ok:
            reached = True
            yield Finding(
                "broker",
                OK,
                _("Broker {url} accepts this station ({seconds:.1f} s).").format(
                    url=url, seconds=result.seconds
                ),
            )
            continue
        message, fix = _broker_words(result)
        yield Finding("broker", WARN if reached else FAIL, message, fix)


def _broker_words(result: broker_probe.Probe) -> tuple[str, str]:
    url, detail = result.url, result.detail
    words = {
        broker_probe.DNS: (
            _("Broker {url}: its name cannot be found ({detail})."),
            _(
                "Check the network (SIM card, 4G signal, cable) and the broker's name in the "
                "config."
            ),
        ),
        broker_probe.REFUSED: (
            _("Broker {url}: nothing answers on that port ({detail})."),
            _("Check the port in the config; ask the province whether the broker is running."),
        ),
        broker_probe.TIMEOUT: (
            _("Broker {url}: no answer ({detail})."),
            _("Check the network: 4G signal, SIM data, firewall; then try again."),
        ),
        broker_probe.SERVER_UNTRUSTED: (
            _("Broker {url}: its certificate is not from the province CA ({detail})."),
            _(
                "The broker address may be wrong, or the CA file: enroll again with the province's "
                "CA."
            ),
        ),
        broker_probe.SERVER_TIME: (
            _("Broker {url}: its certificate is outside its dates ({detail})."),
            _("Check this station's clock first (see the clock line)."),
        ),
        broker_probe.REVOKED: (
            _("Broker {url}: the province has revoked this station's certificate."),
            _("Call the province: this station must be enrolled again before it can work."),
        ),
        broker_probe.CERT_EXPIRED: (
            _("Broker {url}: it says this station's certificate has expired."),
            _("Check the clock; then ask the province for a new certificate."),
        ),
        broker_probe.CERT_REJECTED: (
            _("Broker {url}: it does not accept this station's certificate ({detail})."),
            _("Call the province: the certificate may be from another CA, or revoked."),
        ),
        broker_probe.CLOSED: (
            _(
                "Broker {url}: it closed the connection without saying why: most likely it does "
                "not accept this station's certificate (revoked, or from another CA)."
            ),
            _("Call the province: the certificate may be from another CA, or revoked."),
        ),
        broker_probe.NOT_AUTHORIZED: (
            _("Broker {url}: this station is not in its access list ({detail})."),
            _("Call the province: the broker's ACL must be written again and reloaded."),
        ),
        broker_probe.REFUSED_CONNACK: (
            _("Broker {url}: the connection is refused ({detail})."),
            _("Call the province with this message."),
        ),
    }
    message, fix = words.get(
        result.outcome, (_("Broker {url}: {detail}"), _("Call the province with this message."))
    )
    return message.format(url=url, detail=detail), fix


# sound card and relays --------------------------------------------------------------------


def fix_sound_card() -> str:
    return _(
        "Check the sound card is connected, and that [audio] device is one of the outputs named "
        'above, or a part of its name (the card\'s name from aplay -l); "default" is the '
        "system's default."
    )


def _audio(config: Config, options: Options, agent_pid: int | None) -> Iterator[Finding]:
    if not options.audio:
        yield Finding("audio", SKIP, _("Sound card not tested (--no-audio)."))
        return
    if agent_pid is not None:
        yield Finding("audio", SKIP, _("The agent is using the sound card: stop it to test here."))
        return
    try:
        with hardware.open_hardware(config) as hw:
            result = hardware.play(hw, (), pcm=hardware.tone_pcm(0.5), volume=10, warmup=False)
    except Exception as exc:  # any failure to open the card is the finding
        yield Finding(
            "audio",
            FAIL,
            _("The sound card {device} cannot be used: {error}").format(
                device=config.audio.device, error=exc
            ),
            fix_sound_card(),
        )
        return
    if result.outcome != "complete":
        yield Finding(
            "audio",
            FAIL,
            _("The sound card {device} did not play: {reason}").format(
                device=config.audio.device, reason=result.reason or result.outcome
            ),
            fix_sound_card(),
        )
        return
    yield Finding(
        "audio",
        OK,
        _("The sound card {device} opens and plays (a quiet tone, zones off).").format(
            device=config.audio.device
        ),
    )


def _relays(config: Config, options: Options, agent_pid: int | None) -> Iterator[Finding]:
    if not options.relays:
        yield Finding("relays", SKIP, _("Relays not tested (--no-relays)."))
        return
    if not config.zones and config.amp_pin is None:
        yield Finding(
            "relays",
            WARN,
            _("No relays are configured ([gpio] amp_pin, [gpio.zones])."),
            _("Add the station's relay pins to the config."),
        )
        return
    if agent_pid is not None:
        yield Finding("relays", SKIP, _("The agent holds the relays: stop it to test them here."))
        return
    try:
        with hardware.open_hardware(config) as hw:
            result = hardware.relay_test(hw, tuple(config.zones))
    except Exception as exc:
        yield Finding(
            "relays",
            FAIL,
            _("The relays cannot be used: {error}").format(error=exc),
            _("Check the GPIO pins in the config, and that the service user is in the gpio group."),
        )
        return
    yield from judge_relays(config, result)


def judge_relays(config: Config, result: RelayTestResult) -> Iterator[Finding]:
    """What a relay test read back, line by line: each relay, and each sense input that should
    follow it (``amp_power`` with the amplifier on, ``speaker_line`` with a zone on)."""
    if result.error:
        yield Finding(
            "relays",
            FAIL,
            _("Relay failure: {error}").format(error=result.error),
            _("Check the relay board and its wiring."),
        )
        return
    if config.amp_pin is not None:
        if result.amp:
            yield Finding(
                "relays",
                OK,
                _("Amplifier relay (GPIO {pin}) switches on.").format(pin=config.amp_pin),
            )
        else:
            yield Finding(
                "relays",
                FAIL,
                _("Amplifier relay (GPIO {pin}) does not read back on.").format(pin=config.amp_pin),
                _("Check the relay board and its wiring."),
            )
        sense = config.inputs.pins.get("amp_power")
        if sense is not None and result.amp:
            if result.inputs_before.get("amp_power"):
                yield Finding(
                    "relays",
                    OK,
                    _("The amplifier's power sense (GPIO {pin}) follows.").format(pin=sense),
                )
            else:
                yield Finding(
                    "relays",
                    FAIL,
                    _(
                        "The amplifier was switched on but its power sense (GPIO {pin}) reads off."
                    ).format(pin=sense),
                    _(
                        "Check the amplifier's mains and fuse, and the sense wire to GPIO {pin}."
                    ).format(pin=sense),
                )
    line = config.inputs.pins.get("speaker_line")
    for check in result.zones:
        pin = config.zones.get(check.zone)
        if check.ok:
            yield Finding(
                "relays",
                OK,
                _("Zone {zone} (GPIO {pin}) switches on and off.").format(zone=check.zone, pin=pin),
            )
        else:
            yield Finding(
                "relays",
                FAIL,
                _(
                    "Zone {zone} (GPIO {pin}) relay does not switch "
                    "cleanly (on: {on}, off: {off}, others off: {others})."
                ).format(
                    zone=check.zone,
                    pin=pin,
                    on=_yes(check.on),
                    off=_yes(check.off),
                    others=_yes(check.others_off),
                ),
                _("Check the relay board and its wiring."),
            )
        if line is not None and check.on and not check.inputs.get("speaker_line", False):
            yield Finding(
                "relays",
                FAIL,
                _(
                    "Zone {zone} is on but the speaker line sense (GPIO {pin}) reads no line."
                ).format(zone=check.zone, pin=line),
                _("Check the speaker line of zone {zone}: cut cable, blown transformer.").format(
                    zone=check.zone
                ),
            )
    if result.interrupted:
        yield Finding(
            "relays",
            WARN,
            _("The relay test was interrupted: {why}").format(why=result.interrupted),
        )


# what the agent holds ----------------------------------------------------------------------


def _cache_and_playlists(config: Config) -> Iterator[Finding]:
    try:
        with TrustStore(config.paths.trust_db) as store:
            state = store.snapshot()
            bodies = store.playlist_bodies()
    except StoreError as exc:
        yield Finding("playlist", FAIL, str(exc))
        return
    if state.keyring is None:
        yield Finding(
            "playlist",
            FAIL,
            _("No keyring is installed."),
            _("Set the station up again with the province's keyring."),
        )
        return
    yield Finding(
        "playlist",
        INFO,
        _("Keyring version {version} of province {province}, valid until {date}.").format(
            version=state.keyring.version,
            province=state.keyring.province,
            date=_day(state.keyring.expires),
        ),
    )
    if not bodies:
        yield Finding(
            "playlist",
            WARN,
            _("No playlist yet."),
            _(
                "Once connected, the station receives the province's playlist; ask the "
                "province if it does not come."
            ),
        )
        return
    cache = MediaCache(config.paths.cache)
    wanted: dict[str, int] = {}
    for (issuer, target), body in sorted(bodies.items()):
        record = state.streams.get((issuer, target))
        version = record.version if record else "?"
        yield Finding(
            "playlist",
            OK,
            _("Playlist {issuer} -> {target}, version {version}.").format(
                issuer=issuer, target=target, version=version
            ),
        )
        try:
            playlist = Playlist.from_body(strict.loads(body))
        except (ValueError, KeyError, TypeError):
            continue
        for media in playlist.media.values():
            wanted[media.sha256] = media.bytes
    missing = [sha for sha, size in wanted.items() if not cache.has(sha, size)]
    text = _("{cached} of {total} media of the playlists are in the cache.").format(
        cached=len(wanted) - len(missing), total=len(wanted)
    )
    if missing:
        yield Finding(
            "cache",
            WARN,
            text,
            _("The agent downloads them when it is connected; leave it running on a good network."),
        )
    else:
        yield Finding("cache", OK, text)


def _outbox(config: Config, options: Options, agent_pid: int | None) -> Iterator[Finding]:
    try:
        outbox = Outbox(config.paths.outbox)
    except Exception as exc:
        yield Finding("outbox", FAIL, str(exc))
        return
    try:
        pending = outbox.pending(limit=1)
        backlog = outbox.backlog()
    finally:
        outbox.close()
    count = sum(backlog.values())
    if not pending:
        yield Finding("outbox", OK, _("No reports waiting to be sent."))
        return
    created = _created_at(config.paths.outbox, pending[0].id)
    age_s = (options.now() - created).total_seconds() if created else 0.0
    text = _("{count} reports wait to be sent; the oldest since {since}.").format(
        count=count, since=_minute(created) if created else "?"
    )
    if age_s > OUTBOX_WARN_S:
        status = WARN if agent_pid is None else FAIL
        yield Finding(
            "outbox",
            status,
            text,
            _("Reports do not reach the province: check the broker line and the network."),
        )
    else:
        yield Finding("outbox", OK, text)


def _created_at(path: Path, report_id: int) -> datetime | None:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            row = db.execute("SELECT created_at FROM report WHERE id = ?", (report_id,)).fetchone()
    except sqlite3.Error:
        return None
    return datetime.fromisoformat(row[0]) if row else None


def _modem() -> Iterator[Finding]:
    mmcli = shutil.which("mmcli")
    if mmcli is None:
        yield Finding("modem", SKIP, _("No ModemManager here: modem not checked."))
        return
    try:
        listed = json.loads(_run([mmcli, "-L", "-J"]))
        modems = listed.get("modem-list", [])
        if not modems:
            yield Finding(
                "modem",
                WARN,
                _("ModemManager sees no modem."),
                _("Check the 4G modem is plugged in and powered."),
            )
            return
        info = json.loads(_run([mmcli, "-m", str(modems[0]).rsplit("/", 1)[-1], "-J"]))
        generic = info["modem"]["generic"]
        quality = int(generic["signal-quality"]["value"])
        state = str(generic.get("state", "?"))
        tech = ", ".join(generic.get("access-technologies", [])) or "?"
    except (OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError) as exc:
        yield Finding("modem", WARN, _("The modem cannot be read: {error}").format(error=exc))
        return
    text = _("Modem {state}, {tech}, signal {quality} %.").format(
        state=state, tech=tech, quality=quality
    )
    if quality < MODEM_WARN_PCT:
        yield Finding("modem", WARN, text, _("Weak signal: move the antenna higher or outside."))
    else:
        yield Finding("modem", OK, text)


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def _minute(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _yes(value: bool | None) -> str:
    return "?" if value is None else (_("yes") if value else _("no"))
