"""``loa-provision init``: give a station its identity, its keys and its first trust.

Order matters: the keyring is verified first (it must be signed by its own root threshold and
be meant for this province), so a wrong keyring file leaves the machine untouched. Only then
are the keys, the certificate request and the config written, and the keyring installed into
the same state database the agent reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from agent import keyfiles
from agent.config import DEFAULT_CONFIG_PATH, load_config, read_config
from agent.core.models import Keyring
from agent.core.targets import StationId
from agent.core.trust_state import RaiseTimeFloor, TrustState
from agent.core.verify import Accepted, ClockView, Context, verify
from agent.schemas import load_schema_set
from agent.trust_store import TrustStore
from hal.files import atomic_write
from province import pki

DEFAULT_STATE_DIR = Path("/var/lib/loa")
DEFAULT_KEYS_DIR = Path("/etc/loa/keys")


class ProvisionError(RuntimeError):
    """Provisioning cannot go on; the message says what to do."""


@dataclass(frozen=True)
class InitRequest:
    station: StationId
    keyring_envelope: bytes
    directory: Path | None  # everything under it when given
    brokers: tuple[str, ...] = ()
    clock_trust: str = "kernel"
    zones: Mapping[str, int] = field(default_factory=dict)  # zone name -> relay BCM pin
    amp_pin: int | None = None
    inputs: Mapping[str, int] = field(default_factory=dict)  # mains, amp_power, speaker_line
    audio_device: str = "default"
    # The service user (``loa``) that runs the agent: keys, state and cache become its own
    # and the config readable by its group. None: left to whoever runs init (tests, --dir).
    owner: str | None = None


@dataclass(frozen=True)
class InitResult:
    config_path: Path
    keyring: Keyring
    signing_keyid: str
    csr_path: Path


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _toml_key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else _toml_str(name)


def render_config(req: InitRequest) -> str:
    if req.directory is not None:
        state, cache, keys = "state", "cache", "keys"
    else:
        state = str(DEFAULT_STATE_DIR / "state")
        cache = str(DEFAULT_STATE_DIR / "cache")
        keys = str(DEFAULT_KEYS_DIR)
    brokers = ", ".join(_toml_str(b) for b in req.brokers)
    amp = f"amp_pin = {req.amp_pin}" if req.amp_pin is not None else "# amp_pin = 17"
    zones = "\n".join(f"{_toml_key(z)} = {p}" for z, p in req.zones.items()) or "# north = 27"
    # Health inputs (mains, amp_power, speaker_line): the table only when there are some, so a
    # technician (or a test) adding "[inputs]" later does not declare it twice.
    inputs = (
        "[inputs]\n" + "\n".join(f"{_toml_key(n)} = {p}" for n, p in req.inputs.items())
        if req.inputs
        else "# [inputs]\n# mains = 5\n# amp_power = 6\n# speaker_line = 13"
    )
    return f"""# Loa station configuration, written by `loa-provision init`.
# Relative paths are relative to this file's directory.

[station]
province = {_toml_str(req.station.province)}
commune = {_toml_str(req.station.commune)}
name = {_toml_str(req.station.name)}

[paths]
state = {_toml_str(state)}
cache = {_toml_str(cache)}
keys = {_toml_str(keys)}

[trust]
# "kernel": trust the clock when adjtimex says it is synchronised; "system": always (tests).
clock = {_toml_str(req.clock_trust)}
keyring_grace_days = 30
clock_skew_s = 300

[broker]
urls = [{brokers}]

[audio]
device = {_toml_str(req.audio_device)}

[gpio]
{amp}
[gpio.zones]
{zones}

{inputs}
"""


def service_user(name: str = "loa") -> str | None:
    """``name`` when init runs as root and that user exists (the install made it), else None."""
    import pwd

    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(name)
    except KeyError:
        return None
    return name


def hand_over(owner: str, config_path: Path, directories: tuple[Path, ...]) -> None:
    """The agent runs as ``owner`` in a sandbox without CAP_DAC_OVERRIDE: what it reads and
    writes must be its own. The config stays root's, readable by the owner's group."""
    import shutil

    for directory in directories:
        shutil.chown(directory, owner, owner)
        for path in directory.rglob("*"):
            shutil.chown(path, owner, owner)
    shutil.chown(config_path, "root", owner)


def provision(req: InitRequest, now: datetime) -> InitResult:
    config_path = (req.directory / "station.toml") if req.directory else DEFAULT_CONFIG_PATH
    if config_path.exists():
        raise ProvisionError(
            f"{config_path} exists: this station is already provisioned "
            "(remove it, or factory-reset, to start again)"
        )
    # The technician's clock is trusted here: a person is present and the floor starts from it.
    ctx = Context(req.station, ClockView(now, synchronised=True), load_schema_set())
    verdict = verify(TrustState(), req.keyring_envelope, ctx)
    if not isinstance(verdict, Accepted) or not isinstance(verdict.message, Keyring):
        why = (
            f"{verdict.code} ({verdict.detail})"
            if not isinstance(verdict, Accepted)
            else f"it holds a {verdict.kind}, not a keyring"
        )
        raise ProvisionError(f"the keyring file is refused: {why}")

    base = req.directory.resolve() if req.directory else config_path.parent
    text = render_config(req)
    # Parse what we are about to write with the agent's own loader: one source of truth.
    config = load_config(text, {}, base)
    paths = config.paths
    signing = keyfiles.generate()
    keyfiles.save_private(paths.signing_key, signing)
    tls_key = pki.make_key()
    if paths.tls_key.exists():
        raise ProvisionError(f"{paths.tls_key} exists: refusing to overwrite a private key")
    atomic_write(paths.tls_key, tls_key, mode=0o600)
    atomic_write(paths.csr, pki.make_csr(tls_key, req.station.path))
    atomic_write(paths.keys / "station.pub", (keyfiles.public_hex(signing) + "\n").encode())
    for directory in (paths.state, paths.cache):
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    with TrustStore(paths.trust_db) as store, store.transaction():
        store.persist((*verdict.effects, RaiseTimeFloor(now)), now)
    atomic_write(config_path, text.encode("utf-8"), mode=0o640 if req.owner else 0o644)
    if req.owner:
        hand_over(req.owner, config_path, (paths.keys, paths.state, paths.cache))
    # Written last: its presence means "provisioned"; re-reading proves it loads.
    read_config(config_path, {})
    return InitResult(config_path, verdict.message, keyfiles.keyid(signing), paths.csr)
