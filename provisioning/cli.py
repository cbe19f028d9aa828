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
from agent.config import DEFAULT_CONFIG_PATH, Config, ConfigError, read_config
from agent.core.targets import StationId
from provisioning import check, hardware, i18n, reset, station_view
from provisioning.agent_process import running_agent
from provisioning.enroll import EnrollError, install
from provisioning.i18n import _
from provisioning.init import InitRequest, ProvisionError, provision, service_user
from provisioning.ui import FAIL, OK, Terminal

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loa-provision", description="Loa station set-up")
    parser.add_argument(
        "--lang", choices=i18n.LANGUAGES, help="vi or en (default: from the locale, LANG)"
    )
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
    init.add_argument(
        "--zone",
        action="append",
        default=[],
        metavar="NAME=PIN",
        help="a zone relay and its BCM GPIO pin, e.g. north=27 (repeat)",
    )
    init.add_argument("--amp-pin", type=int, help="BCM GPIO pin of the amplifier relay")
    init.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=PIN",
        help="a health input (mains, amp_power, speaker_line) and its BCM GPIO pin (repeat)",
    )
    init.add_argument(
        "--audio-device",
        default="default",
        help="sound card: an output name as PortAudio lists it, or part of it "
        "(e.g. the card name from aplay -l); default: the system default",
    )

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
    for name, text in (
        ("trust", "the keyring, with fingerprints to read out over the phone"),
        ("check", "is the station ready to go on air? (exit 0 only then)"),
        ("status", "what the agent is doing now"),
        ("relay-test", "switch each zone relay on and off and read the sense inputs"),
    ):
        command = sub.add_parser(name, help=text)
        _config_arg(command)
        if name == "check":
            command.add_argument("--no-audio", action="store_true", help="skip the sound card")
            command.add_argument("--no-relays", action="store_true", help="skip the relays")
            command.add_argument(
                "--timeout", type=float, default=10.0, help="seconds per broker (default 10)"
            )
    audio = sub.add_parser("audio-test", help="a tone (or a file, or spoken words) on a zone")
    _config_arg(audio)
    audio.add_argument("--zone", action="append", default=[], help="zone (repeat; default all)")
    audio.add_argument("--seconds", type=float, default=5.0, help="tone length (default 5)")
    audio.add_argument("--volume", type=int, default=80, help="0..100 (default 80)")
    what = audio.add_mutually_exclusive_group()
    what.add_argument("--file", type=Path, help="play this audio file instead of a tone")
    what.add_argument(
        "--speech", action="store_true", help="a spoken test message (needs espeak-ng)"
    )
    factory = sub.add_parser("factory-reset", help="erase keys, certificate, state, cache, logs")
    _config_arg(factory)
    factory.add_argument("--yes", action="store_true", help="do not ask")
    factory.add_argument(
        "--journal", action="store_true", help="also empty the systemd journal (all of it)"
    )
    return parser


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("LOA_CONFIG") or DEFAULT_CONFIG_PATH),
        help="station config (default: $LOA_CONFIG or /etc/loa/station.toml)",
    )


def _pins(pairs: Sequence[str], what: str) -> dict[str, int]:
    pins: dict[str, int] = {}
    for pair in pairs:
        name, sep, pin = pair.partition("=")
        if not sep or not name or not pin.isdigit():
            raise ValueError(f"--{what} {pair!r}: expected NAME=PIN, e.g. north=27")
        pins[name] = int(pin)
    return pins


def cmd_init(args: argparse.Namespace) -> int:
    try:
        station = StationId(args.province, args.commune, args.station)
        zones, inputs = _pins(args.zone, "zone"), _pins(args.input, "input")
    except ValueError as exc:
        print(f"loa-provision: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        envelope = args.keyring.read_bytes()
    except OSError as exc:
        print(
            "loa-provision: "
            + _("cannot read {path}: {error}").format(path=args.keyring, error=exc.strerror),
            file=sys.stderr,
        )
        return EXIT_USAGE
    request = InitRequest(
        station,
        envelope,
        args.dir,
        tuple(args.broker),
        args.clock,
        zones=zones,
        amp_pin=args.amp_pin,
        inputs=inputs,
        audio_device=args.audio_device,
        owner=None if args.dir else service_user(),
    )
    try:
        result = provision(request, datetime.now(UTC))
    except (ProvisionError, keyfiles.KeyFileError) as exc:
        print(f"loa-provision: {exc}", file=sys.stderr)
        return EXIT_FAILED
    keyring = result.keyring
    print(
        _("Station {station} provisioned: {path}").format(
            station=station.path, path=result.config_path
        )
    )
    print(
        "  "
        + _("signing key {fingerprint}").format(
            fingerprint=keyfiles.fingerprint(result.signing_keyid)
        )
    )
    print(
        "  "
        + _("certificate request {path} (send it to the province to enroll)").format(
            path=result.csr_path
        )
    )
    print(
        "  "
        + _("Keyring version {version} of province {province}, valid until {date}.").format(
            version=keyring.version, province=keyring.province, date=f"{keyring.expires:%Y-%m-%d}"
        )
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
        print(
            "loa-provision: "
            + _("cannot read {path}: {error}").format(path=exc.filename, error=exc.strerror),
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        result = install(args.config, cert_pem, ca_pem, datetime.now(UTC), args.broker)
    except EnrollError as exc:
        print(
            "loa-provision: " + _("nothing installed: {error}").format(error=exc), file=sys.stderr
        )
        return EXIT_FAILED
    print(_("Station {station} enrolled: certificate installed").format(station=result.station))
    print(
        "  "
        + _("{path} (valid until {date})").format(
            path=result.certificate, date=f"{result.not_after:%Y-%m-%d}"
        )
    )
    print(f"  CA {result.ca}")
    if result.brokers is not None:
        print(f"  broker {', '.join(result.brokers)} (in {args.config})")
    return EXIT_OK


def _load(path: Path) -> Config | None:
    try:
        return read_config(path, dict(os.environ))
    except ConfigError as exc:
        print(f"loa-provision: {exc}", file=sys.stderr)
        print(_("Run loa-provision check for what to do."), file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace, term: Terminal) -> int:
    options = check.Options(
        args.config,
        audio=not args.no_audio,
        relays=not args.no_relays,
        broker_timeout_s=args.timeout,
    )
    findings: list[check.Finding] = []
    for finding in check.run_checks(options):
        findings.append(finding)
        term.say(finding.status, finding.message)
        if finding.fix:
            term.advise(_("What to do:"), finding.fix)
    term.line()
    failed = sum(1 for f in findings if f.status == FAIL)
    if check.ready(findings):
        term.line(term.paint(_("Ready to go on air."), OK))
        return EXIT_OK
    term.line(term.paint(_("Not ready: {count} problem(s) to fix.").format(count=failed), FAIL))
    return EXIT_FAILED


def _agent_in_the_way(config_path: Path, why: str) -> bool:
    """What touches the hardware or the state waits for the agent to be stopped."""
    if running_agent(config_path) is None:
        return False
    print(why + ": " + _("stop it first (sudo systemctl stop loa-agent)."), file=sys.stderr)
    return True


def cmd_relay_test(config: Config, args: argparse.Namespace, term: Terminal) -> int:
    if _agent_in_the_way(args.config, _("The agent holds the relays")):
        return EXIT_FAILED
    with hardware.open_hardware(config) as hw:
        result = hardware.relay_test(hw, tuple(config.zones))
    findings = list(check.judge_relays(config, result))
    for finding in findings:
        term.say(finding.status, finding.message)
        if finding.fix:
            term.advise(_("What to do:"), finding.fix)
    rows = [
        [
            c.zone,
            _yn(c.on),
            _yn(c.off),
            _yn(c.others_off),
            ", ".join(f"{k}={'1' if v else '0'}" for k, v in sorted(c.inputs.items())),
        ]
        for c in result.zones
    ]
    if rows:
        term.line()
        term.table([_("Zone"), _("On"), _("Off"), _("Others off"), _("Inputs")], rows)
    return EXIT_OK if check.ready(findings) and result.ok else EXIT_FAILED


def _yn(value: bool | None) -> str:
    return "?" if value is None else (_("yes") if value else _("no"))


def cmd_audio_test(config: Config, args: argparse.Namespace, term: Terminal) -> int:
    if _agent_in_the_way(args.config, _("The agent holds the sound card and relays")):
        return EXIT_FAILED
    zones = tuple(args.zone) or ("all",)
    unknown = [z for z in zones if z != "all" and z not in config.zones]
    if unknown:
        print(
            _("Unknown zone(s): {zones}; the config has: {known}.").format(
                zones=", ".join(unknown), known=", ".join(config.zones) or "-"
            ),
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not 0 <= args.volume <= 100:
        print(_("--volume must be 0..100"), file=sys.stderr)
        return EXIT_USAGE
    path = args.file
    if args.speech:
        path = _speech(config)
        if path is None:
            return EXIT_FAILED
    with hardware.open_hardware(config) as hw:
        if path is not None:
            result = hardware.play(hw, zones, path=path, volume=args.volume)
        else:
            pcm = hardware.tone_pcm(max(0.5, min(args.seconds, 60.0)))
            result = hardware.play(hw, zones, pcm=pcm, volume=args.volume)
    level = "-" if result.output_level_db is None else f"{result.output_level_db:.1f} dBFS"
    text = _(
        "Played {seconds:.1f} s on {zones}: {outcome}; level {level}; relays switched: {relays}."
    ).format(
        seconds=result.played_s,
        zones=", ".join(zones),
        outcome=station_view.outcome_name(result.outcome),
        level=level,
        relays=_yn(result.relay_ok),
    )
    ok = result.outcome == "complete" and result.relay_ok is not False
    term.say(OK if ok else FAIL, text)
    if result.reason:
        term.line(f"       {result.reason}")
    return EXIT_OK if ok else EXIT_FAILED


def _speech(config: Config) -> Path | None:
    """A spoken test message from espeak-ng, in the technician's language."""
    import shutil
    import subprocess

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        print(
            _("--speech needs espeak-ng (sudo apt install espeak-ng); or use --file."),
            file=sys.stderr,
        )
        return None
    words = _("This is a test of the loudspeaker station {station}. One, two, three.").format(
        station=config.station.path
    )
    voice = "vi" if i18n.current_language() == "vi" else "en"
    out = config.paths.state / "speech-test.wav"
    subprocess.run([espeak, "-v", voice, "-w", str(out), words], check=True, timeout=60)
    return out


def cmd_factory_reset(config: Config, args: argparse.Namespace, term: Terminal) -> int:
    if _agent_in_the_way(args.config, _("The agent is running")):
        return EXIT_FAILED
    planned = reset.plan(config, args.config)
    term.line(
        _("This erases station {station}: its keys, certificate, state, cache and logs:").format(
            station=config.station.path
        )
    )
    for item in planned.describe():
        term.line(f"  {item}")
    if not args.yes:
        answer = input(
            _("Type the station name ({name}) to go on: ").format(name=config.station.name)
        )
        if answer.strip() != config.station.name:
            term.line(_("Nothing erased."))
            return EXIT_FAILED
    problems = reset.erase(planned)
    if args.journal:
        error = reset.vacuum_journal()
        if error:
            problems.append(f"journal: {error}")
    for problem in problems:
        term.say(FAIL, problem)
    if problems:
        return EXIT_FAILED
    term.line(
        f"{term.mark(OK)} "
        + _(
            "Erased. Ask the province to revoke the old certificate "
            "(loa-province revoke {station})."
        ).format(station=config.station.path)
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    i18n.install(i18n.choose_language(args.lang))
    term = Terminal.for_stream()
    if args.command == "init":
        return cmd_init(args)
    if args.command == "enroll":
        return cmd_enroll(args)
    if args.command == "check":
        return cmd_check(args, term)
    config = _load(args.config)
    if config is None:
        return EXIT_FAILED
    if args.command == "trust":
        return station_view.show_trust(config, term)
    if args.command == "status":
        return station_view.show_status(config, args.config, term)
    if args.command == "relay-test":
        return cmd_relay_test(config, args, term)
    if args.command == "audio-test":
        return cmd_audio_test(config, args, term)
    if args.command == "factory-reset":
        return cmd_factory_reset(config, args, term)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
