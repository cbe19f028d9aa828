"""Unit tests of agent.config.load_config: the station's TOML, parsed once and typed."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from agent.config import Config, ConfigError, load_config, read_config
from agent.core.targets import StationId
from agent.core.verify import Limits

BASE = Path("/srv/loa/station")

STATION = """
[station]
province = "25"
commune = "08230"
name = "08230-01"
"""


def load(extra: str = "", env: dict[str, str] | None = None, station: str = STATION) -> Config:
    return load_config(station + extra, env or {}, BASE)


def refused(extra: str = "", env: dict[str, str] | None = None, station: str = STATION) -> str:
    with pytest.raises(ConfigError) as info:
        load(extra, env, station)
    return str(info.value)


# -- accepted --------------------------------------------------------------------------------------
def test_minimal_config_takes_the_defaults() -> None:
    config = load()
    assert config.station == StationId("25", "08230", "08230-01")
    assert config.paths.state == BASE / "state"
    assert config.paths.cache == BASE / "cache"
    assert config.paths.keys == BASE / "keys"
    assert config.paths.outbox == BASE / "state" / "outbox.db"
    assert config.clock_trust == "kernel"
    assert config.limits == Limits()
    assert config.limits.clock_skew == timedelta(seconds=300)
    assert config.limits.keyring_grace == timedelta(days=30)
    assert config.broker.urls == ()
    assert dict(config.zones) == {}
    assert config.amp_pin is None
    assert config.audio.device == "default"


def test_derived_paths_live_under_state_and_keys() -> None:
    paths = load().paths
    assert paths.trust_db == BASE / "state" / "trust.db"
    assert paths.signing_key == BASE / "keys" / "station.key"
    assert paths.tls_key == BASE / "keys" / "tls.key"
    assert paths.csr == BASE / "keys" / "station.csr"
    assert paths.certificate == BASE / "keys" / "station.crt"
    assert paths.ca_certificate == BASE / "keys" / "ca.crt"


def test_full_config() -> None:
    config = load(
        """
[paths]
state = "var/state"
cache = "../cache"
keys = "/etc/loa/keys"
outbox = "out.db"

[trust]
clock = "system"
keyring_grace_days = 0
clock_skew_s = 3600

[broker]
urls = ["mqtts://broker-a.example:8883", "mqtts://broker-b.example:8883"]

[gpio]
amp_pin = 17
[gpio.zones]
market = 0
school = 53

[audio]
device = "hw:1,0"
"""
    )
    assert config.paths.state == BASE / "var" / "state"
    assert config.paths.cache == BASE / ".." / "cache"
    assert config.paths.keys == Path("/etc/loa/keys")  # absolute paths stay absolute
    assert config.paths.outbox == BASE / "out.db"
    assert config.clock_trust == "system"
    assert config.limits.keyring_grace == timedelta(0)
    assert config.limits.clock_skew == timedelta(hours=1)
    assert config.broker.urls == (
        "mqtts://broker-a.example:8883",
        "mqtts://broker-b.example:8883",
    )
    assert dict(config.zones) == {"market": 0, "school": 53}
    assert config.amp_pin == 17
    assert config.audio.device == "hw:1,0"


@pytest.mark.parametrize("base_dir", [Path("/srv/a"), Path("relative/dir"), Path("/")])
def test_relative_paths_resolve_against_base_dir(base_dir: Path) -> None:
    config = load_config(STATION + '[paths]\nstate = "s"\n', {}, base_dir)
    assert config.paths.state == base_dir / "s"
    assert config.paths.keys == base_dir / "keys"


def test_read_config_resolves_against_the_files_directory(tmp_path: Path) -> None:
    path = tmp_path / "station.toml"
    path.write_text(STATION, "utf-8")
    config = read_config(path, {})
    assert config.paths.state == tmp_path.resolve() / "state"


def test_read_config_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_config(tmp_path / "absent.toml", {})


# -- LOA_CLOCK_TRUST -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("file_value", "env", "expected"),
    [
        (None, {}, "kernel"),
        (None, {"LOA_CLOCK_TRUST": "system"}, "system"),
        (None, {"LOA_CLOCK_TRUST": "kernel"}, "kernel"),
        ("system", {}, "system"),
        ("system", {"LOA_CLOCK_TRUST": "kernel"}, "kernel"),
        ("kernel", {"LOA_CLOCK_TRUST": "system"}, "system"),
        ("system", {"LOA_CLOCK_TRUST": ""}, "system"),  # empty means unset
        ("kernel", {"OTHER": "system"}, "kernel"),
    ],
)
def test_clock_trust_env_overrides_file(
    file_value: str | None, env: dict[str, str], expected: str
) -> None:
    extra = f'[trust]\nclock = "{file_value}"\n' if file_value else ""
    assert load(extra, env).clock_trust == expected


@pytest.mark.parametrize("value", ["ntp", "System", "kernel "])
def test_unknown_clock_trust_in_env_is_refused(value: str) -> None:
    message = refused(env={"LOA_CLOCK_TRUST": value})
    assert "clock trust" in message
    assert repr(value) in message


@pytest.mark.parametrize("value", ["ntp", "System", "", "chrony"])
def test_unknown_clock_trust_in_file_is_refused(value: str) -> None:
    message = refused(f'[trust]\nclock = "{value}"\n')
    assert "clock trust" in message
    assert repr(value) in message


def test_wrong_typed_clock_trust_in_file_is_refused_even_when_env_overrides() -> None:
    # The file is wrong whatever the environment says; it must not pass only while the variable
    # happens to be set.
    message = refused("[trust]\nclock = 5\n", env={"LOA_CLOCK_TRUST": "system"})
    assert "trust.clock" in message


# -- refused ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "[station",
        'province = "25"\nprovince = "26"',
        "[station]\nprovince = 25 25\n",
        "key = \n",
        "[a]\n[a]\n",
    ],
)
def test_bad_toml_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^not valid TOML"):
        load_config(text, {}, BASE)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        # wrong types
        ("[paths]\nstate = 1\n", "paths.state must be str"),
        ("[paths]\ncache = true\n", "paths.cache must be str"),
        ('[paths]\nkeys = ["k"]\n', "paths.keys must be str"),
        ("[paths]\noutbox = {}\n", "paths.outbox must be str"),
        ("[trust]\nclock = 1\n", "trust.clock must be str"),
        ('[trust]\nkeyring_grace_days = "30"\n', "trust.keyring_grace_days must be int"),
        ("[trust]\nkeyring_grace_days = 1.5\n", "trust.keyring_grace_days must be int"),
        ('[trust]\nclock_skew_s = "300"\n', "trust.clock_skew_s must be int"),
        ("[trust]\nclock_skew_s = 300.0\n", "trust.clock_skew_s must be int"),
        ("[audio]\ndevice = 1\n", "audio.device must be str"),
        ('[broker]\nurls = "mqtts://a"\n', "broker.urls must be a list of strings"),
        ("[broker]\nurls = [1]\n", "broker.urls must be a list of strings"),
        ('[broker]\nurls = ["mqtts://a", 2]\n', "broker.urls must be a list of strings"),
        ('[gpio]\namp_pin = "17"\n', "gpio.amp_pin"),
        ("[gpio]\namp_pin = 17.0\n", "gpio.amp_pin"),
        ('[gpio.zones]\nmarket = "5"\n', "gpio.zones.market"),
        ("[gpio.zones]\nmarket = 5.0\n", "gpio.zones.market"),
        # bools are not ints
        ("[trust]\nkeyring_grace_days = true\n", "trust.keyring_grace_days must be int"),
        ("[trust]\nclock_skew_s = false\n", "trust.clock_skew_s must be int"),
        ("[gpio]\namp_pin = true\n", "gpio.amp_pin"),
        ("[gpio.zones]\nmarket = true\n", "gpio.zones.market"),
        ("[gpio.zones]\nschool = false\n", "gpio.zones.school"),
        # out of range
        ("[trust]\nkeyring_grace_days = -1\n", "trust.keyring_grace_days"),
        ("[trust]\nclock_skew_s = -1\n", "clock_skew_s"),
        ("[trust]\nclock_skew_s = 3601\n", "clock_skew_s"),
        ("[gpio.zones]\nmarket = -1\n", "gpio.zones.market"),
        ("[gpio.zones]\nmarket = 54\n", "gpio.zones.market"),
        ("[gpio.zones]\nmarket = 1000\n", "gpio.zones.market"),
        ("[gpio]\nzones = 3\n", "zones"),
    ],
)
def test_bad_values_are_refused_naming_the_field(extra: str, field: str) -> None:
    assert field in refused(extra)


@pytest.mark.parametrize(
    ("top_level", "field"),
    [
        ('paths = "x"\n', "[paths] must be a table"),
        ("trust = 1\n", "[trust] must be a table"),
        ("broker = []\n", "[broker] must be a table"),
        ('gpio = "17"\n', "[gpio] must be a table"),
        ("audio = true\n", "[audio] must be a table"),
    ],
)
def test_sections_that_are_not_tables_are_refused(top_level: str, field: str) -> None:
    # Top-level keys must come before the first table header.
    assert field in refused(station=top_level + STATION)


@pytest.mark.parametrize("pin", [-1, 54, 99])
def test_amp_pin_out_of_range_is_refused(pin: int) -> None:
    # A BCM pin number is 0..53, as for the zone relays.
    assert "gpio.amp_pin" in refused(f"[gpio]\namp_pin = {pin}\n")


@pytest.mark.parametrize(
    ("station", "field"),
    [
        ('[station]\nprovince = "25"\ncommune = "08230"\n', "station must match"),
        ('[station]\nprovince = "25"\nname = "08230-01"\n', "commune must be 5 digits"),
        ('[station]\ncommune = "08230"\nname = "08230-01"\n', "province must be 2 digits"),
        ('[station]\nprovince = "2"\ncommune = "08230"\nname = "a"\n', "province must be 2"),
        ('[station]\nprovince = "25"\ncommune = "8230"\nname = "a"\n', "commune must be 5"),
        ('[station]\nprovince = "25"\ncommune = "08230"\nname = "Trạm"\n', "station must match"),
        ('[station]\nprovince = "25"\ncommune = "08230"\nname = "state"\n', "topic word"),
        ('[station]\nprovince = "25"\ncommune = "08230"\nname = "ack"\n', "topic word"),
        (
            '[station]\nprovince = 25\ncommune = "08230"\nname = "a"\n',
            "station.province must be str",
        ),
        ('[station]\nprovince = "25"\ncommune = 8230\nname = "a"\n', "station.commune must be str"),
        ('[station]\nprovince = "25"\ncommune = "08230"\nname = 1\n', "station.name must be str"),
        ("", "province must be 2 digits"),
        ('station = "25/08230/08230-01"\n', "[station] must be a table"),
    ],
)
def test_bad_station_is_refused_naming_the_field(station: str, field: str) -> None:
    message = refused(station=station)
    assert field in message


def test_station_errors_are_prefixed_with_the_section() -> None:
    message = refused(station='[station]\nprovince = "25"\ncommune = "08230"\nname = "cmd"\n')
    assert message.startswith("[station]: ")
    assert "'cmd'" in message


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
