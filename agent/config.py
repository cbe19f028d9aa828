"""The station's configuration: one TOML file, one typed loader, parsed once at the edge.

``load_config(text, env, base_dir)`` is pure (it reads no file): relative paths resolve against
the directory of the config file, so a station provisioned with ``--dir DIR`` keeps everything
(config, keys, state, cache, outbox) under DIR. Secrets never appear here, only their paths.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from agent.core.targets import StationId
from agent.core.verify import Limits

T = TypeVar("T")
log = logging.getLogger("loa.config")

DEFAULT_CONFIG_PATH = Path("/etc/loa/station.toml")
CLOCK_TRUST_MODES = ("kernel", "system")


class ConfigError(ValueError):
    """The configuration is wrong: the technician must fix the file."""


@dataclass(frozen=True, slots=True)
class Paths:
    state: Path
    cache: Path
    keys: Path
    outbox: Path

    @property
    def trust_db(self) -> Path:
        return self.state / "trust.db"

    @property
    def signing_key(self) -> Path:
        return self.keys / "station.key"

    @property
    def tls_key(self) -> Path:
        return self.keys / "tls.key"

    @property
    def csr(self) -> Path:
        return self.keys / "station.csr"

    @property
    def certificate(self) -> Path:
        return self.keys / "station.crt"

    @property
    def ca_certificate(self) -> Path:
        return self.keys / "ca.crt"


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    urls: tuple[str, ...] = ()
    keepalive_s: int = 120
    will_delay_s: int = 60  # a short drop raises no alarm
    session_expiry_s: int = 600
    # "when-untrusted": the time beacon is subscribed only while the clock is untrusted (it
    # costs about 1.4 MB a day); "always": every beacon (a test of every topic, for one).
    time_beacons: str = "when-untrusted"


@dataclass(frozen=True, slots=True)
class AudioConfig:
    output: str = "device"  # "device": PyAudio; "wav": a file per station (simulation)
    device: str = "default"
    wav: Path | None = None
    warmup_s: float = 2.0  # amplifier power-on to zone relays and sound
    hold_s: float = 3.0  # after the last sample, before the relays drop
    default_volume: int = 80
    decoder_lead_s: float = 0.5  # pre-roll beyond the warm-up: ffmpeg start-up and first read
    amp_linger_s: float = 10.0  # the amplifier stays on this long for an item that follows
    # EBU R128: each file measured once when it enters the cache, played at this loudness.
    # -16 LUFS suits speech on horn loudspeakers (louder than broadcast's -23).
    loudness_target_lufs: float | None = -16.0  # None: play files as they are
    loudness_max_gain_db: float = 12.0
    chime_categories: tuple[str, ...] = ("announcement",)
    fallback: Path | None = None  # local programme played when a slot's media is missing
    # The station's own volume (percent) until a `set_volume` command sets another; slot and
    # live volumes are percentages of it (emergencies are not: agent.station says why).
    station_volume: int = 100


@dataclass(frozen=True, slots=True)
class MediaConfig:
    allow_http: bool = False
    timeout_s: float = 30.0
    lookahead_days: float = 3.0  # media for this far ahead is fetched, nearest start first
    parallel: int = 2  # downloads at once: enough to hide latency, few enough for a 4G link
    quota_mb: float = 0.0  # cache quota; 0: none (the disk is the limit)


@dataclass(frozen=True, slots=True)
class ReportsConfig:
    heartbeat_s: float = 300.0
    # Unacknowledged reports kept at most (agent/outbox.py's policy drops heartbeats first).
    # A day offline costs about 0.5 MB, so 32 MB rides out weeks without a link.
    outbox_max_mb: float = 32.0
    # Section 7: the first few rejections per code and minute are events, the rest counts.
    rejection_events_per_minute: int = 5
    rejection_window_s: float = 60.0  # "per minute": a test may make the minute shorter


@dataclass(frozen=True, slots=True)
class InputsConfig:
    """Health inputs on GPIO (BCM pins): mains present, amplifier power good, speaker line."""

    pins: Mapping[str, int] = field(default_factory=dict)
    active_high: bool = True
    bounce_s: float = 0.05


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """An input channel that hears the amplifier output (line-in tap or microphone)."""

    device: str | None = None  # None: no input channel, the level reported is the digital one
    silence_threshold_dbfs: float = -50.0
    silence_after_s: float = 3.0


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    resume_window_s: float = 900.0  # an interrupted slot without `end` may finish this late
    lookback_days: float = 7.0  # after a restart, missed occurrences are reported this far back


@dataclass(frozen=True, slots=True)
class EmergencyConfig:
    """PROTOCOL.md section 6: what a command leaves unsaid about an emergency."""

    volume: int = 100  # when the command gives none
    repeat: int = 3  # as J-Alert stations do
    gap_s: float = 5.0  # between repetitions
    chime: bool = True  # the attention chime around each repetition
    sound_tests: bool = False  # CAP status Test/Exercise sounds only when set


DEFAULT_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's, Raspberry Pi OS's


@dataclass(frozen=True, slots=True)
class LiveConfig:
    """PROTOCOL.md section 6, `live_start`: which streams a station relays, and how it rides
    out their trouble (agent/core/live.py)."""

    allowed_hosts: tuple[str, ...] = ()  # `host` or `host:port`, besides the keyring's live_hosts
    allow_http: bool = False  # plain http lets anyone on the path speak on the loudspeakers
    hold_s: float = 10.0  # a stalled or silent stream stays on air this long, then the schedule
    retry_s: float = 5.0  # first wait before connecting again; doubles per failed attempt...
    retry_max_s: float = 300.0  # ...up to this
    stable_s: float = 15.0  # the stream must flow this long before it goes back on air
    silence_db: float = -50.0  # dBFS of the stream below which it counts as silent
    ca_file: str | None = DEFAULT_CA_FILE  # certificates checked for https streams


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    """Signed releases (docs/releases.md): when the agent may stop for an update, and how long a
    new version has to prove itself before the boot guard switches back."""

    enabled: bool = True  # false: releases are verified and reported, never fetched or staged
    margin_s: float = 600.0  # no slot may start within this long of stopping for an update
    confirm_s: float = 600.0  # release-install's deadline for the new version to confirm


_LIVE_HOST = re.compile(r"\A[a-z0-9.-]{1,253}(:[0-9]{1,5})?\Z")  # as the keyring's live_hosts


@dataclass(frozen=True, slots=True)
class Config:
    station: StationId
    paths: Paths
    clock_trust: str = "kernel"
    limits: Limits = field(default_factory=Limits)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    zones: Mapping[str, int] = field(default_factory=dict)  # zone name -> relay GPIO pin
    amp_pin: int | None = None
    active_high: bool = True
    audio: AudioConfig = field(default_factory=AudioConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    emergency: EmergencyConfig = field(default_factory=EmergencyConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    sim: bool = False  # LOA_HAL=sim: gpiozero MockFactory, audio to a WAV file by default


def _table(doc: Mapping[str, Any], name: str, where: str = "") -> Mapping[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{where}{name}] must be a table")
    return value


def _is_pin(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 53


def _typed(table: Mapping[str, Any], key: str, kind: type[T], default: T, where: str) -> T:
    value = table.get(key, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}.{key} must be {kind.__name__}, got {value!r}")
    return value


class _Seen(dict[str, Any]):
    """A TOML table that remembers which keys the loader looked at, so the keys it never asked
    for (a misspelt ``warmup`` for ``warmup_s``, a section of a newer version) can be named."""

    def __init__(self, items: Mapping[str, Any]) -> None:
        super().__init__({k: _seen(v) for k, v in items.items()})
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return super().__contains__(key)

    def items(self) -> Any:
        self.asked.update(self.keys())
        return super().items()

    def unasked(self, prefix: str = "") -> list[str]:
        found = []
        for key, value in dict.items(self):
            if key not in self.asked:
                found.append(prefix + key)
            elif isinstance(value, _Seen):
                found.extend(value.unasked(f"{prefix}{key}."))
        return found


def _seen(value: Any) -> Any:
    return _Seen(value) if isinstance(value, dict) else value


def unknown_keys(text: str) -> list[str]:
    """The settings of ``text`` that the loader never reads (misspelt or from another version):
    the agent ignores them, ``loa-provision check`` names them. Empty when ``text`` does not
    load (the error says why)."""
    try:
        doc = _Seen(tomllib.loads(text))
        _load(doc, {}, Path("/"))
    except (tomllib.TOMLDecodeError, ConfigError, RecursionError):
        return []
    return doc.unasked()


def load_config(text: str, env: Mapping[str, str], base_dir: Path) -> Config:
    """Parse station.toml; ``env`` may override the clock trust (``LOA_CLOCK_TRUST``)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from exc
    except RecursionError as exc:  # tomllib recurses per nested array or inline table
        raise ConfigError("not valid TOML: arrays or tables nested too deeply") from exc
    return _load(doc, env, base_dir)


def _load(doc: Mapping[str, Any], env: Mapping[str, str], base_dir: Path) -> Config:
    station_t = _table(doc, "station")
    try:
        station = StationId(
            _typed(station_t, "province", str, "", "station"),
            _typed(station_t, "commune", str, "", "station"),
            _typed(station_t, "name", str, "", "station"),
        )
    except ValueError as exc:
        raise ConfigError(f"[station]: {exc}") from exc

    paths_t = _table(doc, "paths")

    def path(key: str, default: str) -> Path:
        return base_dir / Path(_typed(paths_t, key, str, default, "paths"))

    paths = Paths(
        state=path("state", "state"),
        cache=path("cache", "cache"),
        keys=path("keys", "keys"),
        outbox=path("outbox", "state/outbox.db"),
    )

    trust_t = _table(doc, "trust")
    file_clock = _typed(trust_t, "clock", str, "kernel", "trust")
    # The file is checked even when the environment overrides it: a broken file must not hide
    # until the day the override is removed. A variable set but empty counts as unset.
    env_clock = env.get("LOA_CLOCK_TRUST") or None
    for source, value in (("trust.clock", file_clock), ("LOA_CLOCK_TRUST", env_clock)):
        if value is not None and value not in CLOCK_TRUST_MODES:
            raise ConfigError(
                f"{source} (clock trust) must be one of {CLOCK_TRUST_MODES}, got {value!r}"
            )
    clock_trust = env_clock or file_clock
    grace_days = _typed(trust_t, "keyring_grace_days", int, 30, "trust")
    skew_s = _typed(trust_t, "clock_skew_s", int, 300, "trust")
    if grace_days < 0 or not 0 <= skew_s <= 3600:
        raise ConfigError("trust.keyring_grace_days must be >= 0 and clock_skew_s 0..3600")
    limits = Limits(clock_skew=timedelta(seconds=skew_s), keyring_grace=timedelta(days=grace_days))

    broker_t = _table(doc, "broker")
    urls = broker_t.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ConfigError("broker.urls must be a list of strings")

    gpio_t = _table(doc, "gpio")
    zones_t = _table(gpio_t, "zones", "gpio.")
    zones: dict[str, int] = {}
    for zone, pin in zones_t.items():
        if zone in ("all", "amp"):
            raise ConfigError(f"gpio.zones.{zone}: 'all' and 'amp' are reserved names")
        if not _is_pin(pin):
            raise ConfigError(f"gpio.zones.{zone} must be a BCM pin number 0..53, got {pin!r}")
        zones[zone] = pin
    amp_pin = gpio_t.get("amp_pin")
    if amp_pin is not None and not _is_pin(amp_pin):
        raise ConfigError(f"gpio.amp_pin must be a BCM pin number 0..53, got {amp_pin!r}")

    sim = env.get("LOA_HAL") == "sim"
    audio_t = _table(doc, "audio")
    output = _typed(audio_t, "output", str, "wav" if sim else "device", "audio")
    if output not in ("device", "wav"):
        raise ConfigError(f"audio.output must be 'device' or 'wav', got {output!r}")
    audio = AudioConfig(
        output=output,
        device=_typed(audio_t, "device", str, "default", "audio"),
        wav=base_dir / _typed(audio_t, "wav", str, "state/speaker.wav", "audio"),
        warmup_s=_number(audio_t, "warmup_s", 2.0, "audio", 0, 60),
        hold_s=_number(audio_t, "hold_s", 3.0, "audio", 0, 600),
        default_volume=int(_number(audio_t, "default_volume", 80, "audio", 0, 100)),
        decoder_lead_s=_number(audio_t, "decoder_lead_s", 0.5, "audio", 0, 10),
        amp_linger_s=_number(audio_t, "amp_linger_s", 10.0, "audio", 0, 3600),
        loudness_target_lufs=(
            None
            if audio_t.get("normalise", True) is False
            else _number(audio_t, "loudness_target_lufs", -16.0, "audio", -40, -5)
        ),
        loudness_max_gain_db=_number(audio_t, "loudness_max_gain_db", 12.0, "audio", 0, 30),
        chime_categories=tuple(_string_list(audio_t, "chime_categories", ["announcement"])),
        fallback=(
            base_dir / _typed(audio_t, "fallback", str, "", "audio")
            if audio_t.get("fallback")
            else None
        ),
        station_volume=int(_number(audio_t, "station_volume", 100, "audio", 0, 100)),
    )
    inputs_t = _table(doc, "inputs")
    input_pins: dict[str, int] = {}
    for name in ("mains", "amp_power", "speaker_line"):
        if name in inputs_t:
            pin = inputs_t[name]
            if not _is_pin(pin):
                raise ConfigError(f"inputs.{name} must be a BCM pin number 0..53, got {pin!r}")
            if pin in zones.values() or pin == amp_pin:
                raise ConfigError(f"inputs.{name}: pin {pin} already drives a relay")
            input_pins[name] = pin
    inputs = InputsConfig(
        pins=input_pins,
        active_high=_typed(inputs_t, "active_high", bool, True, "inputs"),
        bounce_s=_number(inputs_t, "bounce_s", 0.05, "inputs", 0, 1),
    )
    capture_t = _table(doc, "capture")
    device = capture_t.get("device")
    if device is not None and not isinstance(device, str):
        raise ConfigError("capture.device must be the name of an input device")
    capture = CaptureConfig(
        device=device,
        silence_threshold_dbfs=_number(
            capture_t, "silence_threshold_dbfs", -50.0, "capture", -120, 0
        ),
        silence_after_s=_number(capture_t, "silence_after_s", 3.0, "capture", 2, 60),
    )
    schedule_t = _table(doc, "schedule")
    schedule = ScheduleConfig(
        resume_window_s=_number(schedule_t, "resume_window_s", 900.0, "schedule", 0, 86400),
        lookback_days=_number(schedule_t, "lookback_days", 7.0, "schedule", 0, 60),
    )
    media_t = _table(doc, "media")
    media = MediaConfig(
        allow_http=_typed(media_t, "allow_http", bool, False, "media"),
        timeout_s=_number(media_t, "timeout_s", 30.0, "media", 1, 600),
        lookahead_days=_number(media_t, "lookahead_days", 3.0, "media", 0.1, 30),
        parallel=int(_number(media_t, "parallel", 2, "media", 1, 8)),
        quota_mb=_number(media_t, "quota_mb", 0.0, "media", 0, 1_000_000),
    )
    reports_t = _table(doc, "reports")
    reports = ReportsConfig(
        heartbeat_s=_number(reports_t, "heartbeat_s", 300.0, "reports", 1, 86400),
        outbox_max_mb=_number(reports_t, "outbox_max_mb", 32.0, "reports", 0.001, 1024 * 1024),
        rejection_events_per_minute=int(
            _number(reports_t, "rejection_events_per_minute", 5, "reports", 1, 1_000_000)
        ),
        rejection_window_s=_number(reports_t, "rejection_window_s", 60.0, "reports", 1, 3600),
    )
    broker = BrokerConfig(
        urls=tuple(urls),
        keepalive_s=int(_number(broker_t, "keepalive_s", 120, "broker", 5, 3600)),
        will_delay_s=int(_number(broker_t, "will_delay_s", 60, "broker", 0, 3600)),
        session_expiry_s=int(_number(broker_t, "session_expiry_s", 600, "broker", 0, 86400 * 7)),
        time_beacons=_choice(broker_t, "time_beacons", ("when-untrusted", "always"), "broker"),
    )
    return Config(
        station=station,
        paths=paths,
        clock_trust=clock_trust,
        limits=limits,
        broker=broker,
        zones=zones,
        amp_pin=amp_pin,
        active_high=_typed(gpio_t, "active_high", bool, True, "gpio"),
        audio=audio,
        media=media,
        reports=reports,
        schedule=schedule,
        inputs=inputs,
        capture=capture,
        emergency=_emergency(_table(doc, "emergency")),
        live=_live(_table(doc, "live")),
        update=_update(_table(doc, "update")),
        sim=sim,
    )


def _emergency(table: Mapping[str, Any]) -> EmergencyConfig:
    return EmergencyConfig(
        volume=int(_number(table, "volume", 100, "emergency", 0, 100)),
        repeat=int(_number(table, "repeat", 3, "emergency", 1, 10)),
        gap_s=_number(table, "gap_s", 5.0, "emergency", 0, 600),
        chime=_typed(table, "chime", bool, True, "emergency"),
        sound_tests=_typed(table, "sound_tests", bool, False, "emergency"),
    )


def _update(table: Mapping[str, Any]) -> UpdateConfig:
    return UpdateConfig(
        enabled=_typed(table, "enabled", bool, True, "update"),
        margin_s=_number(table, "margin_s", 600.0, "update", 0, 86400),
        confirm_s=_number(table, "confirm_s", 600.0, "update", 60, 86400),
    )


def _choice(table: Mapping[str, Any], key: str, choices: tuple[str, ...], where: str) -> str:
    value = table.get(key, choices[0])
    if value not in choices:
        raise ConfigError(f"{where}.{key} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _live(table: Mapping[str, Any]) -> LiveConfig:
    hosts = [h.strip().lower() for h in _string_list(table, "allowed_hosts", [], "live")]
    for host in hosts:
        if not _LIVE_HOST.match(host):
            raise ConfigError(f"live.allowed_hosts: {host!r} is not a host name or host:port")
    ca_file = table.get("ca_file", DEFAULT_CA_FILE)
    if not isinstance(ca_file, str):
        raise ConfigError("live.ca_file must be the path of a CA bundle")
    retry_s = _number(table, "retry_s", 5.0, "live", 0.1, 3600)
    return LiveConfig(
        allowed_hosts=tuple(hosts),
        allow_http=_typed(table, "allow_http", bool, False, "live"),
        hold_s=_number(table, "hold_s", 10.0, "live", 1, 600),
        retry_s=retry_s,
        retry_max_s=max(retry_s, _number(table, "retry_max_s", 300.0, "live", 0.1, 86400)),
        stable_s=_number(table, "stable_s", 15.0, "live", 0, 3600),
        silence_db=_number(table, "silence_db", -50.0, "live", -120, 0),
        ca_file=ca_file or None,
    )


def _string_list(
    table: Mapping[str, Any], key: str, default: list[str], where: str = "audio"
) -> list[str]:
    value = table.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.{key} must be a list of strings")
    return value


def _number(
    table: Mapping[str, Any], key: str, default: float, where: str, low: float, high: float
) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"{where}.{key} must be a number {low}..{high}, got {value!r}")
    return float(value)


def read_config(path: Path, env: Mapping[str, str]) -> Config:
    """Read and parse the config file; a missing or unreadable file is a ConfigError."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:  # TOML is UTF-8; a corrupt file must say so, not crash
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start})") from exc
    config = load_config(text, env, path.resolve().parent)
    unknown = unknown_keys(text)
    if unknown:
        log.warning("%s: unknown settings ignored: %s", path, ", ".join(unknown))
    return config
