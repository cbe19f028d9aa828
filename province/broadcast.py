"""Emergency, cancel and live commands from the province desk (PROTOCOL.md section 6): their
bodies, their clip, their signature, and the connection that sends them.

This module owns what goes into a command the desk sends without a body file: a fresh id (its
kind readable in it: ``em-``, ``cancel-``, ``live-``, ``live-stop-``, ``test-``), ``issued_at``
now and ``expires`` now plus the validity asked for, the issuer (the province), the clip's
``media`` (hashed from the local file and, unless told not to, checked against what the URL
serves: a clip a thousand stations cannot verify must fail here, once), and the standard test
clip of ``loa-province test-broadcast``. Before an envelope is released it is checked the way
stations will check it: the body by ``province.signing``, the keys against the newest keyring
this home published (the station's own threshold and scope checks), and the signature is
chained into the signing log.

It also owns ``Link``, the desk's connection for broadcasts: one MQTT connection that subscribes
to the target's telemetry *before* the command is published and then publishes it, so no
answer can slip past. It connects as an identity of its own (``HOME/operator/broadcast.crt``,
CN ``province-PP.broadcast``): mosquitto takes the client id from the certificate, and the
collector's or ``loa-province publish``'s connection would be thrown off the broker by ours.
The broker admits it once the ACL is regenerated (``loa-province acl``) and reloaded.

Reading the answers is ``province.broadcast_watch``'s; the subcommands are
``province.cli_broadcast``'s.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, error_string
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.core import dsse
from agent.core.codes import Rejected
from agent.core.models import Keyring
from agent.core.targets import is_within
from agent.core.timefmt import format_rfc3339
from agent.core.verify import ACTION_ROLES, check_scope, check_threshold
from agent.link import LinkError, TlsFiles, parse_broker_url, tls_client
from hal.audio import CHANNELS, SAMPLE_RATE
from hal.chimes import chime_pcm
from province import signing_log
from province.errors import ProvinceError
from province.publish import Outgoing
from province.registry import Registry
from province.signer import Signer
from province.signing import canonical_json, sign_body, signed_record

ID_PREFIXES: Mapping[str, str] = {
    "emergency": "em",
    "cancel": "cancel",
    "live_start": "live",
    "live_stop": "live-stop",
    "test": "test",
}
# How long a command stays valid unless --valid says otherwise. An emergency stays two hours (a
# station that reconnects within them still sounds it; the MQTT Message Expiry drops it after);
# a cancel or a stop is only worth anything soon after it is sent.
DEFAULT_VALID: Mapping[str, timedelta] = {
    "emergency": timedelta(hours=2),
    "cancel": timedelta(minutes=10),
    "live_start": timedelta(hours=2),
    "live_stop": timedelta(minutes=10),
}
MAX_CLIP_BYTES = 256 * 1024 * 1024  # a download cap for hashing, far above any alert clip
FETCH_TIMEOUT_S = 30.0
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Clip:
    """A command's ``media``: where stations fetch it and what they must find there."""

    url: str
    sha256: str
    bytes: int
    duration_s: float

    def wire(self) -> dict[str, Any]:
        return {"url": self.url, "sha256": self.sha256, "bytes": self.bytes,
                "duration_s": round(self.duration_s, 3)}  # fmt: skip


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d``: a positive duration."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise ProvinceError(f"not a duration (e.g. 90s, 10m, 2h): {text!r}")
    return timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])


def new_id(kind: str, now: datetime) -> str:
    """A fresh command id: the kind and the UTC time readable in it, random enough that two
    desks sending in the same second never collide (stations refuse a replayed id)."""
    return f"{ID_PREFIXES[kind]}-{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"


def check_target(target: str, province: str) -> None:
    parts = target.split("/")
    shapes_ok = (
        1 <= len(parts) <= 3
        and re.fullmatch(r"[0-9]{2}", parts[0]) is not None
        and (len(parts) < 2 or re.fullmatch(r"[0-9]{5}", parts[1]) is not None)
        and (len(parts) < 3 or re.fullmatch(r"[a-z0-9-]{1,32}", parts[2]) is not None)
    )
    if not shapes_ok:
        raise ProvinceError(
            f"--target wants a province, commune or station (25, 25/08230, 25/08230/08230-01), "
            f"got {target!r}"
        )
    if not is_within(target, province):
        raise ProvinceError(f"{target} is not in province {province}")


def command_body(
    action: str, command_id: str, province: str, target: str, now: datetime, valid: timedelta,
    fields: Mapping[str, Any],
) -> bytes:  # fmt: skip
    """The command body, as canonical JSON; ``fields`` are the action's own (media, priority,
    references, stream ...), left out when None so stations apply their own defaults."""
    doc: dict[str, Any] = {
        "kind": "command", "schema": 1, "id": command_id, "issuer": province, "target": target,
        "issued_at": format_rfc3339(now), "expires": format_rfc3339(now + valid),
        "action": action,
    }  # fmt: skip
    doc.update({k: v for k, v in fields.items() if v is not None})
    return canonical_json(doc)


def sign_command(
    body: bytes, signers: Sequence[Signer], home: Path, now: datetime, keyring: Keyring | None
) -> bytes:
    """The envelope, checked like ``loa-province sign`` checks it, checked against ``keyring``
    (when this home published one) and logged before it is released."""
    envelope = sign_body(body, signers)
    if keyring is not None:
        check_keys(keyring, envelope, signers)
    signing_log.append(signing_log.log_path(home), signed_record(body, envelope, signers), now)
    return envelope


def newest_keyring(registry: Registry) -> Keyring | None:
    """The newest keyring this province published (``loa-province publish`` records it)."""
    best: Keyring | None = None
    for published in registry.published("keyring"):
        keyring = Keyring.from_body(json.loads(published.body))
        if best is None or keyring.version > best.version:
            best = keyring
    return best


def check_keys(keyring: Keyring, envelope: bytes, signers: Sequence[Signer]) -> None:
    """Refuse at the desk what every station would refuse for its keys: the role's threshold
    (section 8 step 4) and the keys' scope (step 6), by the station's own checks."""
    parsed = dsse.parse_envelope(envelope, len(envelope))
    doc = json.loads(parsed.body)
    action, issuer, target = doc["action"], doc["issuer"], doc["target"]
    role = ACTION_ROLES[action]
    try:
        signed_by = check_threshold(parsed, keyring, role)
        check_scope(keyring, signed_by, role, issuer, target)
    except Rejected as exc:
        names = ", ".join(s.describe() for s in signers)
        need = keyring.roles[role].threshold if role in keyring.roles else 1
        raise ProvinceError(
            f"stations would refuse this {action}: {exc.code}: {exc.detail} (keyring "
            f"v{keyring.version} wants {need} '{role}' key(s) that may sign as {issuer} for "
            f"{target}; signed by {names})"
        ) from exc


# -- the desk's connection ---------------------------------------------------------------------


def telemetry_filters(target: str) -> list[str]:
    """What to subscribe to for every station of ``target``: reports and retained state."""
    below = {1: "+/+", 2: "+", 3: ""}[len(target.split("/"))]
    prefix = f"loa/v1/{target}/{below}".rstrip("/")
    return [f"{prefix}/telemetry/+", f"{prefix}/state"]


class Link:
    """One MQTT 5 connection as the broadcast identity: subscribe, publish (the PUBACK's reason
    code checked: mosquitto answers NOT_AUTHORIZED for a client its ACL does not name), and
    hand over what arrives."""

    def __init__(self, broker_url: str, tls: TlsFiles, client_id: str, timeout_s: float = 15.0):
        try:
            self._host, self._port = parse_broker_url(broker_url)
            client = tls_client(client_id, tls)
        except LinkError as exc:
            raise ProvinceError(f"{client_id}: {exc}") from exc
        self._client_id = client_id
        self._timeout = timeout_s
        self._cond = threading.Condition()
        self._connected: ReasonCode | str | None = None
        self._acks: dict[int, Any] = {}
        self._filters: list[str] = []
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client

    def __enter__(self) -> Link:
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except OSError as exc:  # refused, unreachable, or a TLS handshake the broker refused
            raise ProvinceError(
                f"cannot reach the broker {self._host}:{self._port}: {exc}"
            ) from exc
        self._client.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: self._connected is not None, self._timeout)
            answer = self._connected
        if not isinstance(answer, ReasonCode) or answer.is_failure:
            self.__exit__()
            raise ProvinceError(f"the broker refused {self._client_id}: {answer or 'timeout'}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def subscribe(self, filters: Sequence[str]) -> None:
        self._filters = list(filters)
        rc, mid = self._client.subscribe([(f, 1) for f in self._filters])
        if mid is None:
            raise ProvinceError(f"could not subscribe to {self._filters}: {error_string(rc)}")
        codes = self._await(mid, "SUBACK")
        if any(code.is_failure for code in codes):
            raise ProvinceError(f"the broker refused the subscriptions {self._filters}: {codes}")

    def send(self, outgoing: Outgoing) -> None:
        props = None
        if outgoing.expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = outgoing.expiry_s
        info = self._client.publish(
            outgoing.topic, outgoing.envelope, qos=1, retain=outgoing.retain, properties=props
        )
        reason: ReasonCode = self._await(info.mid, "PUBACK")
        if reason.is_failure:
            raise ProvinceError(
                f"the broker refused to take {outgoing.topic} from {self._client_id}: {reason}. "
                "Is the identity in the broker's ACL? Run `loa-province acl --out FILE` and "
                "reload the broker (SIGHUP)"
            )

    def next_message(self, timeout: float) -> tuple[str, bytes] | None:
        try:
            return self.inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def _await(self, mid: int, what: str) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._acks, self._timeout):
                raise ProvinceError(f"no {what} from the broker within {self._timeout:.0f} s")
            return self._acks.pop(mid)

    # paho's network thread: record and notify, nothing else.
    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:  # fmt: skip
        if not reason.is_failure and self._filters:
            client.subscribe([(f, 1) for f in self._filters])  # a reconnect starts clean
        with self._cond:
            self._connected = reason
            self._cond.notify_all()

    def _on_disconnect(
        self, client: Client, userdata: Any, flags: DisconnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:  # fmt: skip
        with self._cond:
            if self._connected is None:
                self._connected = f"disconnected: {reason}"
                self._cond.notify_all()

    def _on_subscribe(
        self, client: Client, userdata: Any, mid: int, codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:  # fmt: skip
        with self._cond:
            self._acks[mid] = codes
            self._cond.notify_all()

    def _on_publish(
        self, client: Client, userdata: Any, mid: int, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:  # fmt: skip
        with self._cond:
            self._acks[mid] = reason
            self._cond.notify_all()

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        self.inbox.put((message.topic, bytes(message.payload)))


# -- the clip ----------------------------------------------------------------------------------


def clip_from_file(path: Path, url: str, *, check_url: bool = True) -> Clip:
    """The clip at ``path``, announced at ``url``; with ``check_url``, the URL must serve
    exactly these bytes (downloaded once here rather than found wrong by every station)."""
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if check_url:
        try:
            served = hashlib.sha256(download(url, len(data))).hexdigest()
        except ProvinceError as exc:
            raise ProvinceError(
                f"{exc}: upload {path} there first (or give --no-url-check). Nothing was sent."
            ) from exc
        if served != sha:
            raise ProvinceError(
                f"{url} does not serve {path} (sha256 {served[:16]}... there, {sha[:16]}... "
                "here): upload the file there, or send with --media-url alone. Nothing was sent."
            )
    return Clip(url, sha, len(data), probe_duration(path))


def clip_from_url(url: str) -> Clip:
    """The clip as ``url`` serves it, downloaded once to hash it and read its length."""
    data = download(url, MAX_CLIP_BYTES)
    with tempfile.NamedTemporaryFile(prefix="loa-clip-") as tmp:
        tmp.write(data)
        tmp.flush()
        duration = probe_duration(Path(tmp.name))
    return Clip(url, hashlib.sha256(data).hexdigest(), len(data), duration)


def download(url: str, limit: int) -> bytes:
    if not url.startswith(("https://", "http://")):
        raise ProvinceError(f"a media URL is http(s)://, got {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as answer:
            data: bytes = answer.read(limit + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ProvinceError(f"cannot fetch {url}: {exc}") from exc
    if len(data) > limit:
        raise ProvinceError(f"{url} serves more than {limit} bytes")
    if not data:
        raise ProvinceError(f"{url} serves an empty file")
    return data


def probe_duration(path: Path) -> float:
    """The clip's length in seconds, as ffprobe reads it (stations decode with ffmpeg too)."""
    try:
        result = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format=duration",
             "-of", "default=noprint_wrappers=1:nokey=1", str(path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProvinceError(f"cannot run ffprobe to read the clip's length: {exc}") from exc
    try:
        duration = float(result.stdout.strip())
    except ValueError:
        duration = math.nan
    if result.returncode != 0 or not math.isfinite(duration) or duration <= 0:
        why = result.stderr.strip().splitlines()[-1:] or ["no duration"]
        raise ProvinceError(f"{path} is not an audio clip ffprobe can read: {why[0]}")
    return duration


# -- the standard test clip (J-Alert's quarterly test, without words) --------------------------

BEEP_HZ, LONG_HZ = 1000.0, 800.0
BEEP_S, BEEP_GAP_S, LONG_S, PAUSE_S = 0.4, 0.25, 1.2, 0.4
TEST_PEAK_DBFS = -12.0  # the chimes' level (hal.chimes), so the test is as loud as an alert


def test_clip_pcm() -> bytes:
    """Chime, three short beeps and a long tone (a test pattern nobody mistakes for an alarm
    siren, and no words to translate), chime: station PCM, about 5 s."""
    silence = _silence(PAUSE_S)
    pattern = b"".join(_tone(BEEP_HZ, BEEP_S) + _silence(BEEP_GAP_S) for _ in range(3))
    return (
        chime_pcm("before") + silence + pattern + _tone(LONG_HZ, LONG_S) + silence
        + chime_pcm("after")
    )  # fmt: skip


def write_test_clip(path: Path) -> None:
    """Encode the test clip with ffmpeg into ``path`` (the format from its suffix; MP3 at
    128 kb/s keeps it near 80 kB for stations on a mobile data plan)."""
    try:
        result = subprocess.run(
            ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
             "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", str(CHANNELS), "-i", "-",
             "-b:a", "128k", str(path)],
            input=test_clip_pcm(), capture_output=True, timeout=120, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProvinceError(f"cannot run ffmpeg to build the test clip: {exc}") from exc
    if result.returncode != 0:
        raise ProvinceError(f"ffmpeg could not write {path}: {result.stderr.decode()[-300:]}")


def _tone(freq: float, seconds: float) -> bytes:
    frames = int(seconds * SAMPLE_RATE)
    amplitude = 32767 * 10 ** (TEST_PEAK_DBFS / 20)
    fade = int(0.01 * SAMPLE_RATE)  # 10 ms in and out: no click
    samples = array("h")
    for n in range(frames):
        envelope = min(1.0, n / fade, (frames - 1 - n) / fade)
        value = int(amplitude * envelope * math.sin(2 * math.pi * freq * n / SAMPLE_RATE))
        samples.extend((value,) * CHANNELS)
    if sys.byteorder == "big":
        samples.byteswap()  # station PCM is little-endian
    return samples.tobytes()


def _silence(seconds: float) -> bytes:
    return bytes(int(seconds * SAMPLE_RATE) * CHANNELS * 2)
