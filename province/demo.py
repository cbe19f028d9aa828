"""``make demo``: the whole first path of Loa on one machine, in about a minute.

It does what a province and its technicians do, with the same commands they type (each is
printed before it runs): make signing keys and a keyring, make the device CA, provision and
enroll three simulated stations in two communes, generate the broker ACL from the registry,
start a private mosquitto (mutual TLS) and a media server on loopback, start the stations
(``LOA_HAL=sim``: MockFactory relays, a WAV file per loudspeaker) and the collector, publish a
province playlist and a commune playlist whose slots start within seconds, wait for the as-run
records, print the coverage table and write the HTML coverage report (``coverage.html`` in the
out directory, its path printed last). Everything it started is stopped at the end, also on
Ctrl-C. Nothing leaves the machine: every address is 127.0.0.1.
"""

from __future__ import annotations

import http.server
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

from province import pki
from province.home import REGISTRY_FILE, STORE_ENV
from province.mosquitto import BrokerFiles, Mosquitto, find_mosquitto
from province.registry import Registry

BIN = Path(sys.executable).parent
HANOI = ZoneInfo("Asia/Ho_Chi_Minh")
DEFAULT_STATIONS = ("25/08230/08230-01", "25/08230/08230-02", "25/08231/08231-01")
KEY_NAMES = ("root1", "root2", "root3", "playlist", "command", "emergency", "maintenance")


@dataclass
class DemoResult:
    coverage_table: str
    wavs: dict[str, Path]
    logs: Path
    asruns: list[dict[str, object]] = field(default_factory=list)
    report: Path | None = None  # the HTML coverage report


class DemoError(RuntimeError):
    """A step failed; the message says which, and where its log is."""


class Demo:
    def __init__(self, out: Path, stations: Sequence[str], say: Callable[[str], None]) -> None:
        self.out = out.resolve()
        self.stations = list(stations)
        self.say = say
        self.home = self.out / "province"
        self.keys = self.out / "province" / "keys"
        self.logs = self.out / "logs"
        self.started = time.monotonic()
        # The demo builds its own province, registry in SQLite in its home; a LOA_PROVINCE_STORE
        # left in the caller's shell would send its tools to a real PostgreSQL province.
        self.env = {k: v for k, v in os.environ.items() if k != STORE_ENV}

    # steps -------------------------------------------------------------------------------------

    def run(self, first_slot_in_s: float = 12.0) -> DemoResult:
        with ExitStack() as stack:
            self.step("1/7", "province keys and keyring")
            self.make_keys()
            self.step("2/7", "device CA, stations provisioned and enrolled, broker ACL")
            self.cli("loa-province", "ca", "init", "--province", "25", "--home", self.home)
            for station in self.stations:
                self.provision(station)
            acl = self.out / "broker" / "acl"
            self.cli("loa-province", "acl", "--home", self.home, "--out", acl)
            self.step("3/7", "private mosquitto (mutual TLS) and media server on 127.0.0.1")
            broker = stack.enter_context(self.broker())
            media_url = stack.enter_context(self.media_server())
            for station in self.stations:
                self.install_certificate(station, broker.url)
            self.step("4/7", "collector and stations (LOA_HAL=sim: MockFactory relays, WAV out)")
            collect = ("loa-province", "collect", "--home", self.home, "--broker", broker.url)
            stack.enter_context(self.process("collector", *collect))
            # Stations start only once the collector is subscribed: nothing to resend later.
            ready = "collecting province"
            self.wait_for(lambda: ready in self.log_text("collector"), "the collector", 20)
            # The coverage window starts here: before it, there were no stations to be up.
            window_from = datetime.now(UTC).replace(microsecond=0)
            for station in self.stations:
                stack.enter_context(self.station_process(station))
            everyone = len(self.stations)
            self.wait_for(lambda: self.said_hello() >= everyone, "every station to say hello", 30)
            self.step("5/7", "playlists signed and published")
            ends = self.publish_playlists(broker.url, media_url, first_slot_in_s)
            self.step("6/7", "on air: waiting for every station's as-run record")
            expected = everyone + sum(1 for s in self.stations if "/08231/" in s)
            self.wait_for(
                lambda: len(self.asruns()) >= expected,
                f"{expected} as-run records",
                first_slot_in_s + 45,
            )
            self.step("7/7", "coverage: table here, HTML report to open in a browser")
            window_to = (ends + timedelta(minutes=1)).isoformat(timespec="seconds")
            report = self.out / "coverage.html"
            coverage = ("loa-province", "coverage", "--home", self.home, "--html", report)
            table = self.cli(
                *coverage, "--from", window_from.isoformat(), "--to", window_to, quiet=True
            )
            self.say(table)
            asruns = self.asruns()
        wavs = {s: self.station_dir(s) / "state" / "speaker.wav" for s in self.stations}
        self.say("What each loudspeaker played (WAV files):")
        for station, path in wavs.items():
            self.say(f"  {station}: {path} ({wav_seconds(path):.1f} s of audio)")
        self.say(f"Logs: {self.logs}")
        self.say(
            f"Done in {time.monotonic() - self.started:.0f} s; everything started was stopped."
        )
        self.say(f"Coverage report (HTML, open it in a browser): {report}")
        return DemoResult(table, wavs, self.logs, asruns, report)

    def step(self, number: str, what: str) -> None:
        self.say(f"\n[{number}] {what}  (+{time.monotonic() - self.started:.0f} s)")

    def make_keys(self) -> None:
        for name in (*KEY_NAMES, "commune-08230", "commune-08231"):
            self.cli("loa-province", "keygen", name, "--dir", self.keys, quiet=True)
        k = self.keys
        self.cli(
            "loa-province", "keyring", "--province", "25", "--version", "1",
            "--key", f"root={k / 'root1.pub'}", "--key", f"root={k / 'root2.pub'}",
            "--key", f"root={k / 'root3.pub'}", "--threshold", "root=2",
            "--key", f"playlist={k / 'playlist.pub'}",
            "--key", f"playlist={k / 'commune-08230.pub'}@25/08230",
            "--key", f"playlist={k / 'commune-08231.pub'}@25/08231",
            "--key", f"command={k / 'command.pub'}", "--key", f"emergency={k / 'emergency.pub'}",
            "--key", f"maintenance={k / 'maintenance.pub'}",
            "--sign", k / "root1.key", "--sign", k / "root2.key",
            "--out", self.out / "keyring-v1.json", "--home", self.home,
        )  # fmt: skip

    def station_dir(self, station: str) -> Path:
        return self.out / "stations" / station.replace("/", "_")

    def provision(self, station: str) -> None:
        province, commune, name = station.split("/")
        directory = self.station_dir(station)
        self.cli("loa-provision", "init", "--province", province, "--commune", commune,
                 "--station", name, "--keyring", self.out / "keyring-v1.json", "--dir", directory,
                 "--clock", "system")  # fmt: skip
        tune_for_demo(directory / "station.toml")
        self.cli("loa-province", "enroll", directory / "keys" / "station.csr",
                 "--signing-key", directory / "keys" / "station.pub", "--home", self.home,
                 "--out", directory / "enrolled.crt")  # fmt: skip

    def install_certificate(self, station: str, broker_url: str) -> None:
        directory = self.station_dir(station)
        self.cli("loa-provision", "enroll", directory / "enrolled.crt",
                 "--ca", self.home / "ca" / "ca.crt", "--config", directory / "station.toml",
                 "--broker", broker_url)  # fmt: skip

    @contextmanager
    def broker(self) -> Iterator[Mosquitto]:
        executable = find_mosquitto()
        if executable is None:
            raise DemoError("mosquitto is not installed (make sysdeps installs it)")
        directory = self.out / "broker"
        self.cli("loa-province", "ca", "server-cert", "--host", "localhost", "--ip", "127.0.0.1",
                 "--out-dir", directory, "--home", self.home, quiet=True)  # fmt: skip
        probe_key = pki.make_key()
        ca_cert = (self.home / "ca" / "ca.crt").read_bytes()
        ca_key = (self.home / "ca" / "ca.key").read_bytes()
        probe_cert = pki.sign_csr(pki.make_csr(probe_key, "demo-probe"), ca_cert, ca_key, days=1)
        (directory / "probe.crt").write_bytes(probe_cert)
        (directory / "probe.key").write_bytes(probe_key)
        files = BrokerFiles(directory / "ca.crt", directory / "server.crt",
                            directory / "server.key", directory / "acl",
                            directory / "crl.pem")  # fmt: skip
        broker = Mosquitto(directory, files, (directory / "probe.crt", directory / "probe.key"),
                           executable=executable)  # fmt: skip
        broker.start()
        self.say(f"  mosquitto on {broker.url} (log: {broker.log_path})")
        try:
            yield broker
        finally:
            broker.stop()

    @contextmanager
    def media_server(self) -> Iterator[str]:
        media = self.out / "media"
        media.mkdir(parents=True, exist_ok=True)
        handler = partial(_QuietHandler, directory=str(media))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)  # fmt: skip
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        self.say(f"  media server on {url} serving {media}")
        try:
            yield url
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)

    @contextmanager
    def process(
        self, name: str, *command: str | Path, env: dict[str, str] | None = None
    ) -> Iterator[None]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name}.log"
        argv = [str(BIN / str(command[0])), *map(str, command[1:])]
        env = env or dict(self.env, PYTHONUNBUFFERED="1")
        with log_path.open("ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # fmt: skip
        self.say(f"  started {name} (pid {proc.pid}, log {log_path})")
        try:
            yield
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def station_process(self, station: str) -> contextmanager[None]:  # type: ignore[valid-type]
        env = dict(self.env, LOA_HAL="sim", LOA_CLOCK_TRUST="system", PYTHONUNBUFFERED="1")
        config = self.station_dir(station) / "station.toml"
        return self.process(
            station.replace("/", "_"), "loa-agent", "run", "--config", config, env=env
        )

    def publish_playlists(self, broker_url: str, media_url: str, lead_s: float) -> datetime:
        media = self.out / "media"
        make_tone(media / "ban-tin.mp3", 440, 2.0)
        make_tone(media / "thong-bao-08231.mp3", 880, 1.5)
        first = datetime.now(UTC) + timedelta(seconds=lead_s)
        second = first + timedelta(seconds=6)
        bodies = {
            "province": (playlist_doc("25", "25", first, "ban-tin-sang", "ban-tin",
                                      media / "ban-tin.mp3", media_url, "Bản tin sáng"),
                         "playlist"),
            "commune-08231": (playlist_doc("08231", "25/08231", second, "thong-bao",
                                           "thong-bao-08231", media / "thong-bao-08231.mp3",
                                           media_url, "Thông báo của xã"), "commune-08231"),
        }  # fmt: skip
        signed = []
        for name, (doc, key) in bodies.items():
            body = self.out / "playlists" / f"{name}.json"
            body.parent.mkdir(parents=True, exist_ok=True)
            body.write_text(json.dumps(doc, ensure_ascii=False, indent=1))
            envelope = body.with_suffix(".signed.json")
            self.cli("loa-province", "sign", body, "--key", self.keys / f"{key}.key",
                     "--out", envelope, "--home", self.home)  # fmt: skip
            signed.append(envelope)
        self.cli("loa-province", "publish", *signed, "--home", self.home, "--broker", broker_url)
        local = first.astimezone(HANOI).strftime("%H:%M:%S")
        self.say(f"  province bulletin at {local} (Hanoi time) to all 3 stations; "
                 f"commune 08231 announcement 6 s later")  # fmt: skip
        return second + timedelta(seconds=5)

    # plumbing ----------------------------------------------------------------------------------

    def cli(self, *command: str | Path, quiet: bool = False) -> str:
        argv = [str(BIN / str(command[0])), *map(str, command[1:])]
        shown = " ".join(shlex.quote(self._short(a)) for a in [str(command[0]), *argv[1:]])
        if not quiet:
            self.say(f"  $ {shown}")
        done = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=120, env=self.env
        )
        if done.returncode != 0:
            raise DemoError(f"`{shown}` failed ({done.returncode}):\n{done.stderr}{done.stdout}")
        return done.stdout

    def _short(self, arg: str) -> str:
        return arg.replace(str(self.out) + "/", "")

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def registry(self) -> Registry:
        # The demo's own SQLite registry, whatever the caller's LOA_PROVINCE_STORE says (its
        # tools run without it: self.env).
        return Registry(self.home / REGISTRY_FILE)

    def said_hello(self) -> int:
        """How many of the demo's stations have a heartbeat stored."""
        with self.registry() as registry:
            return sum(registry.last_report(s, "heartbeat") is not None for s in self.stations)

    def asruns(self) -> list[dict[str, object]]:
        """The as-run records stored, by station then seq."""
        with self.registry() as registry:
            return [json.loads(report.body) for report in registry.reports("asrun")]

    def wait_for(self, done: Callable[[], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise DemoError(
                    f"gave up waiting for {what} after {timeout_s:.0f} s; logs in {self.logs}"
                )
            time.sleep(0.2)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def tune_for_demo(config: Path) -> None:
    """Demo settings: media over plain http on loopback, short relay timings, frequent
    heartbeats. A real station keeps the defaults `loa-provision init` wrote."""
    text = config.read_text()
    text = text.replace("[audio]\n", '[audio]\noutput = "wav"\nwarmup_s = 0.3\nhold_s = 0.3\n')
    text = text.replace("[gpio]\n", "[gpio]\namp_pin = 17\n")
    text = text.replace("[gpio.zones]\n", "[gpio.zones]\nnorth = 27\nsouth = 22\n")
    text += "\n[media]\nallow_http = true\ntimeout_s = 10\n\n[reports]\nheartbeat_s = 5\n"
    config.write_text(text)


def make_tone(path: Path, freq_hz: float, seconds: float) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"sine=frequency={freq_hz}:duration={seconds}:sample_rate=48000",
         "-af", "volume=4", "-b:a", "192k", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip


def playlist_doc(
    issuer: str, target: str, at: datetime, slot: str, item: str, media: Path, media_url: str,
    title: str | None = None,
) -> dict[str, object]:  # fmt: skip
    import hashlib

    data = media.read_bytes()
    local = at.astimezone(HANOI)
    now = datetime.now(UTC).astimezone(HANOI)
    return {
        "kind": "playlist", "schema": 1, "issuer": issuer, "target": target, "version": 1,
        "issued_at": now.isoformat(timespec="seconds"),
        "valid_from": (now - timedelta(hours=1)).isoformat(timespec="seconds"),
        "expires": (now + timedelta(days=1)).isoformat(timespec="seconds"),
        "timezone": "Asia/Ho_Chi_Minh",
        "media": {item: {"url": f"{media_url}/{media.name}",
                         "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                         "title": title or slot, "category": "news"}},
        "slots": [{"id": slot, "start": local.strftime("%H:%M:%S"),
                   "dates": [local.date().isoformat()], "items": [item], "zones": ["all"],
                   "volume": 90}],
    }  # fmt: skip


def wav_seconds(path: Path) -> float:
    if not path.exists():
        return 0.0
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def run_demo(
    out: Path,
    stations: Sequence[str] = DEFAULT_STATIONS,
    say: Callable[[str], None] = print,
    first_slot_in_s: float = 12.0,
) -> DemoResult:
    """Run the demo into ``out`` (emptied first)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return Demo(out, stations, say).run(first_slot_in_s)
