"""``loa-province release build``, ``release sign``, ``release publish`` and ``updates`` as an
operator runs them: a real wheelhouse built by pip from this checkout (once per session), signed
with release keys against the keyring the home published, sent to the test mosquitto and
received, retained, by a station with its own certificate."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.core import dsse
from agent.core.targets import StationId
from province.cli import main
from province.registry import Registry
from tests.harness.broker import DEFAULT_STATIONS, MosquittoBroker, Recorder

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ROLES = ("root", "playlist", "command", "emergency", "maintenance")


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "loa-province"), *(str(a) for a in args)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """This checkout built as release 0.2.0 (no dependencies: they are the running ones)."""
    out = tmp_path_factory.mktemp("release") / "loa-0.2.0.tar.gz"
    done = cli("release", "build", "--src", ROOT, "--version", "0.2.0", "--out", out)
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def test_build_makes_a_wheelhouse_of_the_checkout_as_the_version_asked(
    wheelhouse: tuple[Path, str],
) -> None:
    path, printed = wheelhouse
    data = path.read_bytes()
    assert f"sha256 {hashlib.sha256(data).hexdigest()}" in printed.splitlines()
    assert f"bytes {len(data)}" in printed.splitlines()
    with tarfile.open(path, "r:gz") as tar:
        assert tar.getnames() == ["loa-0.2.0-py3-none-any.whl"]
        wheel = tar.extractfile("loa-0.2.0-py3-none-any.whl")
        assert wheel is not None
        with zipfile.ZipFile(wheel) as archive:
            metadata = archive.read("loa-0.2.0.dist-info/METADATA").decode()
            names = archive.namelist()
    assert "\nVersion: 0.2.0\n" in metadata
    assert "agent/core/release.py" in names and "agent/schemas/release.schema.json" in names
    # The version went into a copy: the checkout is as it was.
    assert 'version = "0.1.0"' in (ROOT / "pyproject.toml").read_text()


def test_build_refuses_a_version_stations_cannot_compare(tmp_path: Path) -> None:
    done = cli("release", "build", "--version", "0.2.0rc1", "--out", tmp_path / "x.tar.gz")
    assert done.returncode == 1
    assert "MAJOR.MINOR.PATCH" in done.stderr
    assert not (tmp_path / "x.tar.gz").exists()


def province_home(tmp_path: Path, broker: MosquittoBroker) -> tuple[Path, Path]:
    """A province home with the broker's CA and operator identity, the default stations
    enrolled, and keyring v1 (with two release keys, threshold 2) published from it."""
    home, keys = tmp_path / "province", tmp_path / "keys"
    for name in (*ROLES, "rel1", "rel2"):
        assert main(["keygen", name, "--dir", str(keys)]) == 0
    (home / "ca").mkdir(parents=True)
    shutil.copy(broker.ca_path, home / "ca" / "ca.crt")
    cert, key = broker.client_credentials("province-25")
    (home / "operator").mkdir()
    shutil.copy(cert, home / "operator" / "operator.crt")
    shutil.copy(key, home / "operator" / "operator.key")
    keyring = home / "keyring-1.json"
    args = ["keyring", "--province", "25", "--version", "1", "--threshold", "release=2"]
    for role in ROLES:
        args += ["--key", f"{role}={keys / role}.pub"]
    args += ["--key", f"release={keys / 'rel1.pub'}", "--key", f"release={keys / 'rel2.pub'}"]
    assert main([*args, "--sign", str(keys / "root.key"), "--out", str(keyring)]) == 0
    data = keyring.read_bytes()
    with Registry(home / "registry.db") as registry:
        registry.set_meta("province", "25")
        for station in DEFAULT_STATIONS:
            registry.add_station(StationId.parse(station), b"cert", "00" * 32)
        body = dsse.parse_envelope(data, len(data)).body
        registry.record_published("loa/v1/25/keyring/1", "keyring", "25", "25", "v1", body, data)
    return home, keys


def test_a_signed_release_reaches_a_station_retained_and_shows_as_pending(
    tmp_path: Path,
    wheelhouse: tuple[Path, str],
    mqtt_broker: MosquittoBroker,
    mqtt_connect: Callable[[str], Recorder],
) -> None:
    home, keys = province_home(tmp_path, mqtt_broker)
    artifact, _ = wheelhouse
    envelope = tmp_path / "release-0.2.0.json"
    signed = cli(
        "release", "sign", "--version", "0.2.0", "--min-version", "0.1.0",
        "--target", "25/08230", "--url", "https://media.example.vn/25/loa-0.2.0.tar.gz",
        "--artifact", artifact, "--key", keys / "rel1.key", "--key", keys / "rel2.key",
        "--out", envelope, "--home", home,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    assert "checked against keyring v1" in signed.stdout
    doc = json.loads(dsse.parse_envelope(envelope.read_bytes(), 1 << 20).body)
    assert doc["artifact"]["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()

    topic = "loa/v1/25/08230/release/25"
    broker_url = f"mqtts://{mqtt_broker.host}:{mqtt_broker.port}"
    sent = cli("release", "publish", envelope, "--home", home, "--broker", broker_url)
    assert sent.returncode == 0, sent.stderr
    assert f"-> {topic} (retained)" in sent.stdout
    try:
        # A station subscribing afterwards (a reconnect) gets it, as a retained message.
        station = mqtt_connect("25/08230/08230-01")
        station.subscribe("loa/v1/25/08230/release/+")
        message = station.wait_for_message(topic)
        assert message.retain and bytes(message.payload) == envelope.read_bytes()
        with Registry(home / "registry.db") as registry:
            assert [(p.topic, p.label) for p in registry.published("release")] == [
                (topic, "v0.2.0")
            ]

        shown = cli("updates", "--home", home, "--json")
        assert shown.returncode == 0, shown.stderr
        rows = {r["station"]: (r["release"], r["state"]) for r in json.loads(shown.stdout)}
        assert rows == {
            "25/08230/08230-01": ("0.2.0", "pending"),
            "25/08230/08230-02": ("0.2.0", "pending"),
            "25/08231/08231-01": (None, "unknown"),
        }
    finally:
        operator = mqtt_connect("province-25")
        operator.publish(topic, b"", retain=True)
