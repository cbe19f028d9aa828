"""Signed releases (issue 11) end to end, every part real: the province desk builds, signs and
publishes, the station's own agent takes the release over MQTT, fetches and stages it, stops with
75; the boot guard installs it through the running release's ``release-install``; the new agent
starts, is acknowledged by the collector and confirms; the province reads the outcome.

The station is a temporary install PREFIX (``releases/<version>`` venvs made as
``release-install`` makes them, ``current`` a relative link, ``bin/loa-boot-guard`` copied from
install/) and a station directory provisioned against a private mosquitto with the ACL
``province.acl`` renders. There is no systemd here: `Systemd` runs the unit's start sequence
(``ExecStartPre=`` the guard, ``ExecStart=`` ``PREFIX/current/bin/loa-agent run``) and restarts
it on a non-zero exit (``Restart=on-failure``, ``RestartForceExitStatus=75``) a bounded number
of times, with a notification socket standing in for ``NOTIFY_SOCKET``. The province is a home
with a registry, ``loa-province collect`` running as its own process (receipts go back to the
station), and ``loa-province release build|sign|publish`` and ``updates`` run as an operator
runs them; the artifact is served by a media server on loopback.

The scenarios run in order on one station (module-scoped): 0.1.0 -> 0.1.1 applied; 0.1.2 (its
``loa-agent run`` raises at start) rolled back to 0.1.1 after four failed starts, and not tried
again; releases the station must refuse, published straight to its release topic by an
operator's client (the desk would refuse to sign them), each refusal read from the registry;
then 0.1.4 with the collector down, so that nothing acknowledges its first heartbeat: it stops
at its ``confirm_s`` deadline and the guard rolls back (the module's one long wait, 60 s, the
shortest deadline agent/config.py allows). Last, without the station, the guard and the agent
agreeing on when a whole-second deadline has passed.
What is asserted comes from the registry, the PREFIX and the state directory, never from the
agent's word about itself alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.core.targets import StationId
from agent.keyfiles import save_private
from province.mosquitto import find_mosquitto
from province.registry import Registry
from tests.harness.broker import MosquittoBroker, Recorder, close_client, connect_client
from tests.harness.media_server import MediaServer
from tests.harness.notify import NotifyListener
from tests.harness.release_build import CHECKOUT, GUARD, build_wheel, clean_env, make_release
from tests.harness.release_build import source_copy as release_source
from tests.harness.releases import keyring_with_release, release_envelope, release_key
from tests.harness.station_proc import StationProcess, provision_station
from tests.harness.trust import body_bytes, envelope

pytestmark = pytest.mark.integration

STATION = "25/08230/08230-01"
TOPIC = "loa/v1/25/08230/release/25"  # the station's commune's release topic, issuer 25
COLLECTOR, DESK = "province-25", "province-25.desk"
OPERATORS = ((COLLECTOR, "25"), (DESK, "25"))
BIN = Path(sys.executable).parent
HEARTBEAT_S = 2
CONFIRM_S = 60  # agent/config.py's minimum
RESTART_S = 0.2  # the unit's RestartSec
MAX_STARTS = 16  # systemd's StartLimitBurst, as far as this test goes
WAIT_S = 90.0


def wait(condition: Callable[[], bool], what: str, timeout: float, diag: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout:.0f} s\n{diag()}")
        time.sleep(0.1)


# -- systemd, as far as the unit goes --------------------------------------------------------


def ready_between(notify: NotifyListener, start: float, end: float | None) -> bool:
    """READY=1 arrived within [start, end] (monotonic; end None: up to now)."""
    return any(start <= stamp <= (end or float("inf")) for stamp, _ in notify.lines("READY"))


@dataclass
class Start:
    """One start of the unit: what the guard said, the release ``current`` named, the exit."""

    guard_status: int
    guard_said: str
    release: str
    began: float
    pid: int | None = None
    status: int | None = None  # None while it runs
    ended: float | None = None


@dataclass
class Systemd:
    """``loa-agent.service``: ExecStartPre=+PREFIX/bin/loa-boot-guard CONFIG, ExecStart=
    PREFIX/current/bin/loa-agent run --config CONFIG, Restart=on-failure with
    RestartForceExitStatus=75, until told to stop or MAX_STARTS."""

    prefix: Path
    config: Path
    home: Path
    log: Path
    notify: NotifyListener
    starts: list[Start] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="systemd", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set() and len(self.starts) < MAX_STARTS:
            guard = subprocess.run(
                [str(self.prefix / "bin" / "loa-boot-guard"), str(self.config),
                 "--prefix", str(self.prefix)],
                capture_output=True, text=True, timeout=300, env=clean_env(),
            )  # fmt: skip
            with self.log.open("a") as log:
                log.write(f"--- guard exit {guard.returncode}\n{guard.stderr}")
            release = os.readlink(self.prefix / "current")
            start = Start(guard.returncode, guard.stderr, release, time.monotonic())
            self.starts.append(start)
            if guard.returncode != 0:
                return  # the unit fails: the agent is not started
            env = clean_env() | {
                "HOME": str(self.home), "LOA_HAL": "sim", "LOA_CLOCK_TRUST": "system",
                "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": self.notify.address,
            }  # fmt: skip
            command = [str(self.prefix / "current" / "bin" / "loa-agent"), "run", "--config"]
            with self._lock:
                if self._stopping.is_set():
                    start.status = 0
                    return
                with self.log.open("ab") as log:
                    log.write(f"--- start {len(self.starts)}: {release}\n".encode())
                    self.process = subprocess.Popen(
                        [*command, str(self.config)], env=env, stdout=log,
                        stderr=subprocess.STDOUT,
                    )  # fmt: skip
                start.pid = self.process.pid
            start.status = self.process.wait()
            start.ended = time.monotonic()
            with self.log.open("a") as log:
                log.write(f"--- exit {start.status}\n")
            if start.status == 0:
                return  # Restart=on-failure: a clean stop stays stopped
            self._stopping.wait(RESTART_S)

    def running(self) -> Start | None:
        """The start whose agent runs now."""
        last = self.starts[-1] if self.starts else None
        return last if last is not None and last.pid is not None and last.status is None else None

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if self._thread is not None:
            self._thread.join(60)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# -- the rig -----------------------------------------------------------------------------------


@dataclass
class Rig:
    tmp: Path
    broker: MosquittoBroker
    media: MediaServer
    home: Path
    keys: Path
    station: StationProcess
    prefix: Path
    reader: Registry
    systemd: Systemd
    collector_log: Path
    wheels: dict[str, Path] = field(default_factory=dict)
    collector: subprocess.Popen[bytes] | None = None

    def start_collector(self) -> None:
        """``loa-province collect`` on the home, as its own process, until it subscribed."""
        said = self.collector_log.read_text().count("collecting province") if (
            self.collector_log.exists()
        ) else 0  # fmt: skip
        with self.collector_log.open("ab") as log:
            self.collector = subprocess.Popen(
                [str(BIN / "loa-province"), "collect", "--home", str(self.home),
                 "--broker", self.broker_url],
                env=clean_env() | {"PYTHONUNBUFFERED": "1"}, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait(
            lambda: self.collector_log.read_text().count("collecting province") > said,
            "the collector's subscription", 30, self.collector_log.read_text,
        )  # fmt: skip

    def stop_collector(self) -> None:
        collector, self.collector = self.collector, None
        if collector is None:
            return
        collector.send_signal(signal.SIGTERM)
        try:
            collector.wait(20)
        except subprocess.TimeoutExpired:
            collector.kill()
            collector.wait(10)

    @property
    def config(self) -> Path:
        return self.station.directory / "station.toml"

    @property
    def updates(self) -> Path:
        return self.station.directory / "state" / "updates"

    @property
    def broker_url(self) -> str:
        return f"mqtts://{self.broker.host}:{self.broker.port}"

    def current(self) -> str:
        return os.readlink(self.prefix / "current")

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(BIN / "loa-province"), *(str(a) for a in args)],
            capture_output=True, text=True, timeout=300, env=clean_env(),
        )  # fmt: skip
        assert done.returncode == 0, f"loa-province {args[:2]}: {done.stdout}{done.stderr}"
        return done

    def events(self, **match: Any) -> list[dict[str, Any]]:
        """The station's events in the registry (seq order) whose fields equal ``match``."""
        docs = [json.loads(r.body) for r in self.reader.reports("event", [STATION])]
        return [d for d in docs if all(d.get(k) == v for k, v in match.items())]

    def heartbeats(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.reader.reports("heartbeat", [STATION])]

    def updates_row(self) -> dict[str, Any]:
        rows = json.loads(self.cli("updates", "--home", self.home, "--json").stdout)
        (row,) = [r for r in rows if r["station"] == STATION]
        return dict(row)

    def diag(self) -> str:
        starts = "\n".join(
            f"  {s.release} guard={s.guard_status} status={s.status}" for s in self.systemd.starts
        )
        files = sorted(str(p.relative_to(self.updates)) for p in self.updates.rglob("*"))
        events = [(e.get("event"), e.get("code"), e.get("version"), e.get("reason"))
                  for e in self.events()]  # fmt: skip
        return (
            f"starts:\n{starts}\ncurrent: {self.current()}\nstate/updates: {files}\n"
            f"events: {events}\n--- agent and guard log (tail)\n{self.systemd.log_text()[-6000:]}"
            f"\n--- collector log (tail)\n{self.collector_log.read_text()[-2000:]}"
        )

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        wait(condition, what, timeout, self.diag)

    def release_wheelhouse(self, version: str, src: Path) -> Path:
        """``loa-province release build`` of ``src`` as ``version``."""
        out = self.tmp / "desk" / f"loa-{version}.tar.gz"
        self.cli("release", "build", "--src", src, "--version", version, "--out", out)
        return out

    def sign_and_publish(self, version: str, artifact: Path) -> bytes:
        """``release sign`` (checked against keyring v2 in the registry) and ``release
        publish``, the artifact served at the URL the release names."""
        path = f"/25/loa-{version}.tar.gz"
        url = self.media.add(path, artifact.read_bytes())
        signed = self.tmp / "desk" / f"release-{version}.json"
        self.cli(
            "release", "sign", "--version", version, "--min-version", "0.1.0",
            "--target", "25/08230", "--url", url, "--artifact", artifact,
            "--key", self.keys / "release.key", "--out", signed, "--home", self.home,
        )  # fmt: skip
        sent = self.cli(
            "release", "publish", signed, "--home", self.home, "--broker", self.broker_url
        )
        assert f"-> {TOPIC} (retained)" in sent.stdout
        return signed.read_bytes()


def publish_as_desk(broker: MosquittoBroker, topic: str, data: bytes, retain: bool) -> None:
    desk = Recorder(connect_client(broker, DESK))
    try:
        assert not desk.publish(topic, data, retain=retain).is_failure
    finally:
        close_client(desk.client)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("mosquitto binary not found (install the Debian package: make sysdeps)")
    tmp = tmp_path_factory.mktemp("release-e2e")
    with ExitStack() as stack:
        broker = MosquittoBroker(
            tmp / "broker", stations=(STATION,), operators=OPERATORS, executable=executable
        )
        broker.start()
        stack.callback(broker.stop)
        media = stack.enter_context(MediaServer())

        # The station: provisioned, then given heartbeats every 2 s and short update margins.
        station = provision_station(
            tmp / "station", broker, STATION, reports=f"heartbeat_s = {HEARTBEAT_S}\n"
        )
        toml = station.directory / "station.toml"
        toml.write_text(toml.read_text() + f"\n[update]\nmargin_s = 0\nconfirm_s = {CONFIRM_S}\n")

        # Its install PREFIX: releases/0.1.0, current, the guard in bin/ (as install.sh does).
        wheels = tmp / "wheels"
        work = tmp / "wheel-src"
        work.mkdir()
        prefix = tmp / "opt-loa"
        make_release(prefix, build_wheel(wheels, work, "0.1.0"), "0.1.0")
        os.symlink("releases/0.1.0", prefix / "current")
        (prefix / "bin").mkdir()
        shutil.copy(GUARD, prefix / "bin" / "loa-boot-guard")
        (prefix / "bin" / "loa-boot-guard").chmod(0o755)

        # The province: home (CA, operator identity), registry with the station enrolled and
        # keyring v2 (v1 plus the release role) published; the collector as its own process.
        home, keys = tmp / "province", tmp / "keys"
        (home / "ca").mkdir(parents=True)
        (home / "operator").mkdir()
        shutil.copy(broker.ca_path, home / "ca" / "ca.crt")
        cert, key = broker.client_credentials(COLLECTOR)
        shutil.copy(cert, home / "operator" / "operator.crt")
        shutil.copy(key, home / "operator" / "operator.key")
        keys.mkdir()
        save_private(keys / "release.key", release_key("release"))
        keyring = envelope("keyring", keyring_with_release(version=2), "root1", "root2")
        reader = Registry(home / "registry.db")
        stack.callback(reader.close)
        reader.set_meta("province", "25")
        station_keys = station.directory / "keys"
        reader.add_station(
            StationId.parse(STATION), (station_keys / "station.crt").read_bytes(),
            (station_keys / "station.pub").read_text().strip(),
        )  # fmt: skip
        body = body_bytes(keyring_with_release(version=2))
        reader.record_published("loa/v1/25/keyring/2", "keyring", "25", "25", "v2", body, keyring)
        publish_as_desk(broker, "loa/v1/25/keyring/2", keyring, retain=True)

        notify = NotifyListener()
        stack.callback(notify.close)
        systemd = Systemd(prefix, toml, station.directory / "home", tmp / "unit.log", notify)
        stack.callback(systemd.stop)
        made = Rig(tmp, broker, media, home, keys, station, prefix, reader, systemd,
                   tmp / "collector.log", {"work": work})  # fmt: skip
        stack.callback(made.stop_collector)
        made.start_collector()
        yield made


def test_a_signed_release_is_fetched_staged_installed_and_confirmed(rig: Rig) -> None:
    rig.systemd.start()
    # The 0.1.0 agent is up, heard from, and holds keyring v2 (the release role) before any
    # release is published.
    rig.wait(
        lambda: any(h.get("keyring") == 2 and h.get("agent_version") == "0.1.0"
                    for h in rig.heartbeats()),
        "a heartbeat of agent 0.1.0 on keyring v2",
    )  # fmt: skip
    first = rig.systemd.running()
    assert first is not None and first.release == "releases/0.1.0"
    assert ready_between(rig.systemd.notify, first.began, None)

    artifact = rig.release_wheelhouse("0.1.1", CHECKOUT)
    published_at = datetime.now(UTC)
    rig.sign_and_publish("0.1.1", artifact)
    rig.wait(lambda: bool(rig.events(code="update-applied")), "update-applied in the registry")

    # The unit: 0.1.0 stopped with 75 once staged, the guard installed 0.1.1 before the next
    # start, and that start is the one running now.
    starts = rig.systemd.starts
    assert [(s.release, s.status) for s in starts[:1]] == [("releases/0.1.0", 75)], rig.diag()
    assert len(starts) == 2 and starts[1].release == "releases/0.1.1", rig.diag()
    assert "release-install" in starts[1].guard_said, starts[1].guard_said
    assert rig.systemd.running() is starts[1]
    assert ready_between(rig.systemd.notify, starts[1].began, None)  # READY=1 from 0.1.1
    assert rig.current() == "releases/0.1.1"
    said = subprocess.run(
        [str(rig.prefix / "current" / "bin" / "loa-agent"), "--version"],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )  # fmt: skip
    assert said.stdout.strip() == "0.1.1"

    # The station's word, as the registry holds it, in order.
    codes = [(e["code"], e.get("version")) for e in rig.events(event="update")]
    assert codes == [
        ("update-available", "0.1.1"), ("update-staged", "0.1.1"), ("update-applied", "0.1.1"),
    ], rig.diag()  # fmt: skip
    applied = rig.events(code="update-applied")[0]
    assert applied["previous"] == "0.1.0"
    # applied.json: written by the new agent once its first heartbeat after READY was
    # acknowledged; the trial is over; the staged artifact was fetched once.
    doc = json.loads((rig.updates / "applied.json").read_text())
    assert (doc["version"], doc["previous"]) == ("0.1.1", "0.1.0")
    confirmed = datetime.fromisoformat(doc["confirmed_at"])
    assert (
        published_at - timedelta(seconds=2) < confirmed < published_at + timedelta(seconds=WAIT_S)
    )
    assert not (rig.updates / "trying.json").exists()
    assert not (rig.updates / "request.json").exists()
    assert rig.media.hits("/25/loa-0.1.1.tar.gz") == 1
    assert sorted(p.name for p in (rig.prefix / "releases").iterdir()) == ["0.1.0", "0.1.1"]
    rig.wait(lambda: rig.heartbeats()[-1].get("agent_version") == "0.1.1", "a heartbeat of 0.1.1")
    row = rig.updates_row()
    assert (row["running"], row["release"], row["state"]) == ("0.1.1", "0.1.1", "applied"), row
    assert row["since"] is not None


def test_a_release_that_cannot_start_is_rolled_back_and_not_tried_again(rig: Rig) -> None:
    if rig.current() != "releases/0.1.1" or rig.systemd.running() is None:
        pytest.fail(f"the station is not running 0.1.1 (the update before failed)\n{rig.diag()}")
    before = len(rig.systemd.starts)
    broken = release_source(rig.wheels["work"], "0.1.2", broken=True)
    artifact = rig.release_wheelhouse("0.1.2", broken)
    rig.sign_and_publish("0.1.2", artifact)
    rig.wait(
        lambda: bool(rig.events(code="update-rolled-back")), "update-rolled-back in the registry"
    )

    # 0.1.1 staged and stopped (75); the guard installed 0.1.2; it failed at every start; the
    # guard counted three attempts after the first start, then switched back to 0.1.1.
    starts = rig.systemd.starts[before - 1 :]
    assert [(s.release, s.status) for s in starts] == [
        ("releases/0.1.1", 75), *[("releases/0.1.2", 1)] * 4, ("releases/0.1.1", None),
    ], rig.diag()  # fmt: skip
    assert "rolled back from 0.1.2 to 0.1.1: failed to start 4 times" in starts[-1].guard_said
    assert rig.current() == "releases/0.1.1"
    assert "release 0.1.2 is broken" in rig.systemd.log_text()
    rolled = rig.events(code="update-rolled-back")[-1]
    assert (rolled["version"], rolled["previous"]) == ("0.1.2", "0.1.1")
    assert rolled["reason"] == "failed to start 4 times"
    assert not (rig.updates / "rolled-back.json").exists()  # reported, then deleted

    # The restarted 0.1.1 got the retained 0.1.2 again at its connect, and left it alone:
    # no fetch, no stage, no restart, for several watch ticks.
    seq = rolled["seq"]
    rig.wait(
        lambda: any(e["seq"] > seq and e.get("payload_kind") == "release"
                    for e in rig.events(event="envelope")),
        "the retained 0.1.2 seen again by the restarted agent",
    )  # fmt: skip
    beats = len(rig.heartbeats())
    rig.wait(lambda: len(rig.heartbeats()) >= beats + 6, "six more heartbeats (>= 2 watch ticks)")
    after = [e for e in rig.events(event="update") if e["seq"] > seq]
    assert after == [], after
    assert rig.systemd.running() is rig.systemd.starts[-1]
    assert len(rig.systemd.starts) == before + 5
    assert not (rig.updates / "request.json").exists()
    assert not (rig.updates / "0.1.2").exists()
    assert rig.media.hits("/25/loa-0.1.2.tar.gz") == 1

    row = rig.updates_row()
    assert (row["running"], row["release"], row["state"]) == ("0.1.1", "0.1.2", "rolled back")
    assert row["reason"] == "failed to start 4 times", row


def test_releases_the_station_must_refuse_are_refused_and_reported(rig: Rig) -> None:
    running = rig.systemd.running()
    if rig.current() != "releases/0.1.1" or running is None:
        pytest.fail(f"the station is not running 0.1.1\n{rig.diag()}")
    artifact = (rig.tmp / "desk" / "loa-0.1.1.tar.gz").read_bytes()
    now = datetime.now(UTC)

    def body(version: str, data: bytes, **changes: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "kind": "release", "schema": 1, "issuer": "25", "target": "25/08230",
            "version": version, "min_version": "0.1.0",
            "issued_at": (now - timedelta(minutes=5)).isoformat(timespec="seconds"),
            "expires": (now + timedelta(days=1)).isoformat(timespec="seconds"),
            "artifact": {"url": rig.media.url(f"/refused/{version}.tar.gz"),
                         "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
        }  # fmt: skip
        doc.update(changes)
        return doc

    # Published straight to the station's release topic (not retained: the province's retained
    # release stays 0.1.2), by an operator client: the desk itself refuses to sign these.
    cases = [
        ("a key outside the release role", release_envelope(body("0.1.3", artifact), "playlist"),
         "threshold-not-met"),
        ("a key the keyring does not hold", release_envelope(body("0.1.3", artifact), "stranger"),
         "unknown-key"),
        ("a downgrade below the running 0.1.1",
         release_envelope(body("0.1.0", artifact), "release"), "rollback"),
        # The ACL delivers no other commune's topic to this station: the body names commune
        # 08231 on this commune's own topic, which is what a mistaken (or hostile) desk can do.
        ("another commune's release", release_envelope(
            body("0.1.3", artifact, target="25/08231"), "release"), "wrong-audience"),
    ]  # fmt: skip
    for what, data, code in cases:
        marker = max(e["seq"] for e in rig.events())
        publish_as_desk(rig.broker, TOPIC, data, retain=False)

        def reported(code: str = code, marker: int = marker) -> bool:
            return any(e["seq"] > marker for e in rig.events(event="envelope", code=code))

        rig.wait(reported, f"{code} for {what}")
        refused = rig.events(event="envelope", code=code)[-1]
        assert refused["payload_kind"] == "release" and refused["topic"] == TOPIC, refused

    # A good signature over an artifact the server serves altered: refused by its hash, and
    # nothing staged.
    tampered = bytearray(artifact)
    tampered[len(tampered) // 2] ^= 0x01
    good = body("0.1.3", artifact)
    rig.media.add("/refused/0.1.3.tar.gz", bytes(tampered))
    publish_as_desk(rig.broker, TOPIC, release_envelope(good, "release"), retain=False)
    rig.wait(
        lambda: bool(rig.events(code="update-refused", version="0.1.3")),
        "update-refused for the tampered artifact",
    )
    refused = rig.events(code="update-refused", version="0.1.3")[-1]
    assert refused["reason"] == "media-hash-mismatch", refused
    assert [e["code"] for e in rig.events(event="update", version="0.1.3")] == [
        "update-available", "update-refused",
    ]  # fmt: skip
    assert not (rig.updates / "request.json").exists()
    # Nothing of 0.1.3 but its envelope (kept to resume after a restart) and an empty download
    # directory; the only artifact is the running release's own.
    files = sorted(str(p.relative_to(rig.updates)) for p in rig.updates.rglob("*") if p.is_file())
    assert files == ["0.1.1/artifact.tar.gz", "0.1.1/release.json", "0.1.3/release.json",
                     "applied.json"], files  # fmt: skip
    # None of it stopped the agent, nor moved `current`.
    assert rig.systemd.running() is running and rig.current() == "releases/0.1.1"
    assert not [e for e in rig.events(event="update") if e.get("code") == "update-staged"
                and e.get("version") not in ("0.1.1", "0.1.2")]  # fmt: skip


def test_a_release_that_never_confirms_is_rolled_back_at_its_deadline(rig: Rig) -> None:
    """The collector is down: 0.1.4 starts, reaches READY, but no receipt ever covers its
    first heartbeat; at ``confirm_s`` it stops with 75 and the guard switches back. The reports
    of both versions wait in the outbox and reach the registry once the collector is back."""
    first = rig.systemd.running()
    if rig.current() != "releases/0.1.1" or first is None:
        pytest.fail(f"the station is not running 0.1.1\n{rig.diag()}")
    before = len(rig.systemd.starts)
    artifact = rig.release_wheelhouse("0.1.4", CHECKOUT)
    rig.stop_collector()
    rig.sign_and_publish("0.1.4", artifact)

    def trial() -> Start | None:
        return next((s for s in rig.systemd.starts[before:] if s.release == "releases/0.1.4"),
                    None)  # fmt: skip

    rig.wait(lambda: trial() is not None, "the start of 0.1.4", 60)
    rig.wait(
        lambda: len(rig.systemd.starts) > before + 1 and rig.systemd.running() is not None,
        "the rollback and the start after it", CONFIRM_S + 45,
    )  # fmt: skip
    starts = rig.systemd.starts[before - 1 :]
    assert [(s.release, s.status) for s in starts] == [
        ("releases/0.1.1", 75), ("releases/0.1.4", 75), ("releases/0.1.1", None),
    ], rig.diag()  # fmt: skip
    tried = starts[1]
    assert ready_between(rig.systemd.notify, tried.began, tried.ended)  # it did reach READY
    assert tried.ended is not None and tried.ended - tried.began > CONFIRM_S - 5
    reason = f"did not confirm within {CONFIRM_S} s"
    assert f"rolled back from 0.1.4 to 0.1.1: {reason}" in starts[-1].guard_said, rig.diag()
    assert rig.current() == "releases/0.1.1"
    applied = json.loads((rig.updates / "applied.json").read_text())
    assert applied["version"] == "0.1.1"  # 0.1.4 never confirmed
    # Installing 0.1.4 pruned 0.1.2; 0.1.0 stays, the previous of the last confirmed update.
    assert sorted(p.name for p in (rig.prefix / "releases").iterdir()) == [
        "0.1.0", "0.1.1", "0.1.4",
    ]  # fmt: skip
    assert not (rig.updates / "trying.json").exists()

    rig.start_collector()
    rig.wait(
        lambda: bool(rig.events(code="update-rolled-back", version="0.1.4")),
        "update-rolled-back of 0.1.4 in the registry",
    )
    rolled = rig.events(code="update-rolled-back", version="0.1.4")[-1]
    assert (rolled["previous"], rolled["reason"]) == ("0.1.1", reason)
    assert not rig.events(code="update-applied", version="0.1.4")
    # What 0.1.4 said while nobody listened arrived too: its heartbeats, from the outbox.
    rig.wait(
        lambda: any(h.get("agent_version") == "0.1.4" for h in rig.heartbeats())
        and rig.heartbeats()[-1].get("agent_version") == "0.1.1",
        "0.1.4's heartbeats, then 0.1.1's",
    )  # fmt: skip
    row = rig.updates_row()
    assert (row["running"], row["release"], row["state"]) == ("0.1.1", "0.1.4", "rolled back")
    assert row["reason"] == reason, row


def test_the_guard_rolls_back_once_the_agent_says_the_deadline_passed(tmp_path: Path) -> None:
    """The agent stops for the rollback on the first watch tick at which ``now > deadline``,
    ``deadline`` in whole seconds (trying.json's ``deadline``, ``deadline_epoch``): the guard
    that runs within the same second must roll back too, or the unconfirmed release starts
    once more (and may go on air) until the agent's next tick stops it again."""
    prefix = tmp_path / "opt-loa"
    for version in ("0.1.0", "0.1.1"):
        agent = prefix / "releases" / version / "bin" / "loa-agent"
        agent.parent.mkdir(parents=True)
        agent.write_text("#!/bin/sh\nexit 0\n")
        agent.chmod(0o755)
    os.symlink("releases/0.1.1", prefix / "current")
    config = tmp_path / "station.toml"
    config.write_text('[paths]\nstate = "state"\n')
    updates = tmp_path / "state" / "updates"
    updates.mkdir(parents=True)
    deadline = int(time.time())  # this very second: for the agent, passed since it began
    stamp = datetime.fromtimestamp(deadline, UTC)
    trying = {
        "version": "0.1.1", "previous": "0.1.0",
        "switched_at": (stamp - timedelta(seconds=CONFIRM_S)).isoformat().replace("+00:00", "Z"),
        "deadline": stamp.isoformat().replace("+00:00", "Z"), "deadline_epoch": deadline,
        "attempts": 0,
    }  # fmt: skip
    (updates / "trying.json").write_text(json.dumps(trying, indent=1))
    done = subprocess.run(
        ["/bin/sh", str(GUARD), str(config), "--prefix", str(prefix)],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert os.readlink(prefix / "current") == "releases/0.1.0", done.stderr
    rolled = json.loads((updates / "rolled-back.json").read_text())
    assert rolled["reason"] == f"did not confirm within {CONFIRM_S} s"
