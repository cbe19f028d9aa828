"""``loa-province emergency``, ``cancel``, ``live``, ``live-stop`` and ``test-broadcast``: send a
command built at the desk, and with ``--wait S`` report station by station what became of it.

This module owns the subcommands' arguments, the order of the work (everything that can be
refused at the desk is refused before the broker hears anything) and what they print. The
bodies, the clip, the signature and the connection are ``province.broadcast``'s; the
station-by-station answers are ``province.broadcast_watch``'s.

Exit codes: 0 sent (and, when waiting, every expected station did what was asked: sounded,
cancelled or had nothing on, stopped, passed its test); 1 refused at the desk, nothing sent;
2 a usage error; 3 sent, but not every expected station did it within the wait.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.link import TlsFiles
from province import broadcast
from province.broadcast import Clip, Link, telemetry_filters
from province.broadcast_watch import Expect, Tracker, render, wait
from province.errors import ProvinceError
from province.home import default_home, open_home_registry, registry_province
from province.operators import ensure_identity, identity_cn, identity_files
from province.publish import route
from province.registry import Registry
from province.signer import open_signer

EXIT_INCOMPLETE = 3
IDENTITY = "broadcast"
TEST_VALID = timedelta(minutes=30)  # a test heard hours late would only confuse people
TEST_WAIT_S = 120.0
TEST_PRIORITY = 90  # the bottom of the emergency band: a real alert always outranks a test


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", type=Path, default=default_home(), help="province home")
    common.add_argument("--broker", required=True, help="mqtts://host:port")
    common.add_argument(
        "--key",
        action="append",
        required=True,
        metavar="KEY",
        help="signing key spec (file or signer spec; repeat for a threshold): an 'emergency' "
        "role key for emergency, cancel and test-broadcast, a 'command' key for live",
    )
    common.add_argument(
        "--identity",
        default=IDENTITY,
        metavar="NAME",
        help=f"broker identity HOME/operator/NAME.crt (default {IDENTITY}; issued on first use, "
        "then `loa-province acl` and a broker reload let it in)",
    )
    common.add_argument(
        "--valid",
        type=broadcast.parse_duration,
        metavar="DURATION",
        help="how long the command stays valid (e.g. 90s, 10m, 2h)",
    )
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument(
        "--wait", type=_seconds, metavar="S", help="report station by station for up to S seconds"
    )
    media = argparse.ArgumentParser(add_help=False)
    media.add_argument(
        "--media-url",
        required=True,
        metavar="URL",
        help="where stations fetch the clip (upload it there first)",
    )
    media.add_argument(
        "--media",
        type=Path,
        metavar="FILE",
        help="the clip as uploaded: hashed here (else URL is downloaded once)",
    )
    media.add_argument(
        "--no-url-check",
        action="store_true",
        help="with --media: do not check that URL serves the same bytes",
    )
    sound = argparse.ArgumentParser(add_help=False)
    sound.add_argument("--target", required=True, help="25, 25/08230 or 25/08230/08230-01")
    sound.add_argument("--zones", type=_zones, metavar="Z,...", help="default: every zone")
    sound.add_argument("--volume", type=_percent, help="0-100 (default: the station's)")

    em = sub.add_parser(
        "emergency",
        parents=[common, waiting, media, sound],
        help="send an emergency clip that cuts in everywhere in a target",
    )
    em.add_argument("--priority", type=int, default=100, choices=range(90, 101), metavar="90-100")
    em.add_argument(
        "--repeat", type=int, choices=range(1, 11), metavar="1-10", help="default: the station's"
    )
    em.add_argument("--gap", type=float, metavar="S", help="seconds between repetitions")
    em.add_argument("--cap-xml", type=Path, metavar="FILE", help="a CAP 1.2 alert to attach")
    em.set_defaults(handler=cmd_emergency)

    cancel = sub.add_parser(
        "cancel", parents=[common, waiting], help="stop an emergency (by its id) wherever it is on"
    )
    cancel.add_argument("id", help="the emergency's command id")
    cancel.add_argument("--target", help="default: the emergency's own target, from the registry")
    cancel.set_defaults(handler=cmd_cancel)

    live = sub.add_parser(
        "live",
        parents=[common, waiting, sound],
        help="relay a live stream (live_start) to a target",
    )
    live.add_argument("--url", required=True, help="the stream, https where possible")
    live.add_argument("--format", choices=("mp3", "aac", "ogg", "opus"))
    live.add_argument("--priority", type=int, default=80, choices=range(61, 90), metavar="61-89")
    live.set_defaults(handler=cmd_live)

    stop = sub.add_parser(
        "live-stop", parents=[common, waiting], help="end a live broadcast (live_stop)"
    )
    stop.add_argument("id", nargs="?", help="the live broadcast's command id")
    stop.add_argument("--target", help="default: the live broadcast's target, from the registry")
    stop.set_defaults(handler=cmd_live_stop)

    test = sub.add_parser(
        "test-broadcast",
        parents=[common, media],
        help="a short announced test (chime, tones, chime): PASS/FAIL each "
        "station from its signed as-run and its inputs",
    )
    test.add_argument("--target", required=True, help="a province, commune or station")
    test.add_argument(
        "--make-clip",
        type=Path,
        metavar="FILE",
        help="build the standard test clip into FILE (where URL serves it) and send it",
    )
    test.add_argument(
        "--wait",
        type=_seconds,
        default=TEST_WAIT_S,
        metavar="S",
        help=f"how long to wait for the as-runs (default {TEST_WAIT_S:.0f} s)",
    )
    test.add_argument(
        "--min-level",
        type=float,
        default=-45.0,
        metavar="DBFS",
        help="fail an output level below this (default -45 dBFS)",
    )
    test.set_defaults(handler=cmd_test_broadcast)


# -- handlers ----------------------------------------------------------------------------------


def cmd_emergency(args: argparse.Namespace) -> int:
    clip = _clip(args)
    cap_xml = args.cap_xml.read_text(encoding="utf-8") if args.cap_xml else None
    fields = {"priority": args.priority, "zones": args.zones, "volume": args.volume,
              "repeat": args.repeat, "gap_s": args.gap, "media": clip.wire(),
              "cap_xml": cap_xml}  # fmt: skip
    return _send(args, "emergency", "emergency", args.target, fields)


def cmd_cancel(args: argparse.Namespace) -> int:
    return _send(args, "cancel", "cancel", args.target, {"references": args.id}, refer=args.id)


def cmd_live(args: argparse.Namespace) -> int:
    stream = {"url": args.url, **({"format": args.format} if args.format else {})}
    fields = {"priority": args.priority, "zones": args.zones, "volume": args.volume,
              "stream": stream}  # fmt: skip
    return _send(args, "live_start", "live", args.target, fields)


def cmd_live_stop(args: argparse.Namespace) -> int:
    if args.id is None and args.target is None:
        raise ProvinceError("live-stop wants the live broadcast's id, or --target")
    return _send(args, "live_stop", "live-stop", args.target, {"references": args.id},
                 refer=args.id)  # fmt: skip


def cmd_test_broadcast(args: argparse.Namespace) -> int:
    if args.make_clip is not None:
        if args.media is not None:
            raise ProvinceError("--make-clip builds the clip; --media sends one: not both")
        broadcast.write_test_clip(args.make_clip)
        print(f"built the test clip {args.make_clip}")
        args.media = args.make_clip
    clip = _clip(args)
    # No CAP: a CAP Test stays silent on stations not configured to sound tests, and this test
    # is there to be heard. The station's own emergency volume, once.
    fields = {"priority": TEST_PRIORITY, "repeat": 1, "media": clip.wire()}
    args.valid = args.valid or TEST_VALID
    return _send(args, "emergency", "test", args.target, fields, sound_s=clip.duration_s,
                 id_kind="test")  # fmt: skip


# -- the common path ---------------------------------------------------------------------------


def _send(
    args: argparse.Namespace, action: str, mode: str, target: str | None,
    fields: Mapping[str, Any], *, refer: str | None = None, sound_s: float | None = None,
    id_kind: str | None = None,
) -> int:  # fmt: skip
    home: Path = args.home
    with open_home_registry(home) as registry:
        province = registry_province(registry)
        target = target or _target_of(registry, refer)
        broadcast.check_target(target, province)
        stations = registry.stations_in(target)
        if not stations:
            raise ProvinceError(f"no enrolled station in {target}: nothing would hear it")
        signers = [open_signer(spec) for spec in args.key]
        keyring = broadcast.newest_keyring(registry)
        if keyring is None:
            print("loa-province: no keyring was published from this home: the keys' role and "
                  "scope are checked by the stations only", file=sys.stderr)  # fmt: skip
        tls = _identity(home, province, args.identity)
        with Link(args.broker, tls, identity_cn(province, args.identity)) as link:
            if args.wait is not None:
                link.subscribe(telemetry_filters(target))  # before sending: no answer missed
            now = datetime.now(UTC)
            command_id = broadcast.new_id(id_kind or action, now)
            valid = args.valid or broadcast.DEFAULT_VALID[action]
            body = broadcast.command_body(action, command_id, province, target, now, valid, fields)
            envelope = broadcast.sign_command(body, signers, home, now, keyring)
            outgoing = route(envelope, now)
            link.send(outgoing)
            registry.record_published(outgoing.topic, outgoing.kind, outgoing.issuer,
                                      outgoing.target, outgoing.label, outgoing.body,
                                      outgoing.envelope)  # fmt: skip
            print(
                f"sent {action} {command_id} -> {outgoing.topic} (expires in "
                f"{outgoing.expiry_s} s), {len(stations)} station(s) in {target}",
                flush=True,
            )
            if args.wait is None:
                return 0
            expect = Expect(
                mode,
                command_id,
                outgoing.topic,
                now,
                references=refer,
                sound_s=sound_s,
                min_level_db=getattr(args, "min_level", -45.0),
            )
            tracker = Tracker(expect, stations)
            wait(link, tracker, args.wait, sys.stdout)
    print(render(tracker))
    return 0 if tracker.all_ok() else EXIT_INCOMPLETE


def _clip(args: argparse.Namespace) -> Clip:
    if args.media is None:
        return broadcast.clip_from_url(args.media_url)
    return broadcast.clip_from_file(args.media, args.media_url, check_url=not args.no_url_check)


def _target_of(registry: Registry, command_id: str | None) -> str:
    """The target of a command this home sent (a cancel goes where its emergency went)."""
    for published in registry.published("command"):
        if published.label == command_id:
            return published.target
    raise ProvinceError(f"no command {command_id} was sent from this home: give --target")


def _identity(home: Path, province: str, name: str) -> TlsFiles:
    if ensure_identity(home, province, name):
        raise ProvinceError(
            f"issued the broker identity {identity_cn(province, name)} "
            f"({identity_files(home, name)[0]}); the broker admits it once its ACL is "
            "regenerated: run `loa-province acl --out <the broker's ACL file>`, reload the "
            "broker (SIGHUP), then send again. Nothing was sent."
        )
    cert, key = identity_files(home, name)
    return TlsFiles(home / "ca" / "ca.crt", cert, key)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 24 * 3600:
        raise argparse.ArgumentTypeError(f"wants seconds (0 < S <= 86400), got {text!r}")
    return value


def _percent(text: str) -> int:
    if not text.isdigit() or int(text) > 100:
        raise argparse.ArgumentTypeError(f"wants 0-100, got {text!r}")
    return int(text)


def _zones(text: str) -> list[str]:
    zones = [z.strip() for z in text.split(",") if z.strip()]
    if not zones:
        raise argparse.ArgumentTypeError("wants zone names separated by commas")
    return zones
