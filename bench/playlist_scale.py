"""Playlist scale: a signed playlist of 5,000 slots and 2,000 media, verified, planned over a
week and scheduled, through the station's own code.

A station is provisioned by ``loa-provision``'s own code with the golden vectors' keyring; the
playlist is signed by the test key holding the keyring's ``playlist`` role
(``tests.harness.trust``), so the signature is real and must verify. Each slot recurs on one
weekday (slot ``i`` on day ``i mod 7``, start times spread over the day) and plays one to three
of the 2,000 media, so a week holds exactly 5,000 occurrences. The body is about 1 MB, inside
the trust core's 2 MiB cap for a playlist.

One trial, each step timed on its own, with the real objects the station's runtime uses:

- ``verify``: ``Ingestor.ingest`` (the trust core's ``verify``: envelope, signature, schema,
  scope, window, version; then the accepted body persisted in the ``TrustStore``);
- ``plan``: what ``Station._reload_playlists`` does before it plans: every stored body back
  from the trust store, ``strict.loads``, ``Playlist.from_body``; then ``planner.occurrences``
  over a week (the station itself plans ``agent.station.HORIZON`` ahead);
- ``schedule``: what ``Station._replan`` does with the plan: ``Programme.replace_plan``, the
  occurrences not yet reported (``Outbox.was_reported``, one query each), and
  ``Timers.replace_plan`` on a started APScheduler: one date job per occurrence.

Trials use successive versions of the same playlist (a version is accepted once), on the same
station: every trial after the first replaces a week's plan and timers, as a new version does.
``seconds`` is the median trial's total. Baseline in the same run: ``json.loads`` of the
envelope, its base64 payload decoded, one Ed25519 verify of its PAE bytes and ``json.loads`` of
the body: the floor any implementation pays to read a signed playlist.

Target: under 1 s.

    .venv/bin/python -m bench.playlist_scale [--quick] [--results DIR]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import queue
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.config import load_config
from agent.core import dsse, strict
from agent.core.models import Playlist
from agent.core.planner import occurrences
from agent.core.verify import Accepted
from agent.ingest import Ingestor
from agent.outbox import Outbox
from agent.player import Player
from agent.programme import Programme
from agent.scheduler import MISFIRE_GRACE_S, Timers
from agent.station import HORIZON
from agent.trust_store import TrustStore
from bench.common import RESULTS, machine_info, write_result
from hal.clock import SystemClock
from hal.relays import GpioRelays, use_mock_pins
from provisioning.init import InitRequest, provision
from tests.harness.trust import STATION, VECTORS, body_bytes, envelope, test_key

COMMAND = ".venv/bin/python -m bench.playlist_scale"
SLOTS = 5000
MEDIA = 2000
WEEK = timedelta(days=7)
TARGET_S = 1.0
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def playlist(version: int, now: datetime) -> dict[str, Any]:
    """5,000 slots, each on one weekday, over 2,000 media; fixed but for the version."""
    media = {
        f"m{n:04d}": {
            "url": f"https://media.example.vn/25/m{n:04d}.mp3",
            "sha256": hashlib.sha256(b"medium %d" % n).hexdigest(),
            "bytes": 480_000 + n,
            "duration_s": 30.0 + n % 570,
            "title": f"Bản tin {n}",
            "category": "news",
        }
        for n in range(MEDIA)
    }
    per_day = -(-SLOTS // 7)
    slots = []
    for i in range(SLOTS):
        second = (i // 7) * 86400 // per_day
        slots.append({
            "id": f"s{i:05d}", "start": f"{second // 3600:02d}:{second // 60 % 60:02d}:"
            f"{second % 60:02d}", "days": [DAYS[i % 7]],
            "items": [f"m{(i * 7 + k) % MEDIA:04d}" for k in range(1 + i % 3)],
            "priority": 50, "zones": ["all"], "volume": 80,
        })  # fmt: skip
    local = now.astimezone(UTC)
    return {
        "kind": "playlist", "schema": 1, "issuer": "25", "target": "25", "version": version,
        "issued_at": (local - timedelta(minutes=1)).isoformat(timespec="seconds"),
        "valid_from": (local - timedelta(days=1)).isoformat(timespec="seconds"),
        "expires": (local + timedelta(days=60)).isoformat(timespec="seconds"),
        "timezone": "Asia/Ho_Chi_Minh", "media": media, "slots": slots,
    }  # fmt: skip


def baseline(data: bytes, public: Ed25519PublicKey) -> float:
    """Seconds to read the envelope, check its one signature and read its body."""
    start = time.perf_counter()
    env = json.loads(data)
    body = base64.b64decode(env["payload"])
    signature = base64.b64decode(env["signatures"][0]["sig"])
    public.verify(signature, dsse.pae(env["payloadType"], body))
    doc = json.loads(body)
    seconds = time.perf_counter() - start
    if len(doc["slots"]) != SLOTS:
        raise RuntimeError("the baseline read another playlist")
    return seconds


class Rig:
    """A provisioned station's trust store, ingestor, outbox, programme and timers."""

    def __init__(self, directory: Path) -> None:
        self.clock = SystemClock()
        result = provision(
            InitRequest(
                _station(), (VECTORS / "keyring-v1.json").read_bytes(), directory,
                clock_trust="system",
            ),
            self.clock.now(),
        )  # fmt: skip
        self.config = load_config(result.config_path.read_text(), {}, result.config_path.parent)
        self.store = TrustStore(self.config.paths.trust_db)
        self.ingestor = Ingestor(self.config, self.store, self.clock, lambda: True)
        self.outbox = Outbox(self.config.paths.outbox)
        self.factory = use_mock_pins()
        self.relays = GpioRelays(17, {"north": 27})
        player = Player(
            self.relays, _no_sink, _no_decoder, self.clock, lambda result: None,
            warmup_s=0.0, hold_s=0.0,
        )  # fmt: skip
        self.programme = Programme(
            self.clock, player, media_ready=lambda m: False, media_path=_no_item,
            volume=lambda o: 80, report=lambda outcome: None, resume_window=timedelta(hours=1),
        )  # fmt: skip
        # What the station gives its timers: a Python function putting the key on the runtime's
        # queue (APScheduler inspects its signature once per job, and a builtin's costs more).
        self.inbox: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.timers = Timers(lambda key: self.inbox.put(key))
        self.timers.start()
        self.lead_s = self.config.audio.warmup_s + self.config.audio.decoder_lead_s

    def trial(self, data: bytes) -> dict[str, float | int]:
        t0 = time.perf_counter()
        verdict = self.ingestor.ingest(data, "loa/v1/25/playlist/25")
        t1 = time.perf_counter()
        if not isinstance(verdict, Accepted):
            raise RuntimeError(f"the playlist was not accepted: {verdict}")
        playlists = [
            Playlist.from_body(strict.loads(body)) for body in self.store.playlist_bodies().values()
        ]
        now = self.clock.now()
        upcoming = occurrences(playlists, now - timedelta(seconds=MISFIRE_GRACE_S), now + WEEK)
        t2 = time.perf_counter()
        overdue = now - timedelta(seconds=MISFIRE_GRACE_S)
        self.programme.replace_plan(upcoming, overdue, self.outbox.was_reported)
        unreported = [o for o in upcoming if not self.outbox.was_reported(o.key)]
        timers = self.timers.replace_plan(unreported, now, lead_s=self.lead_s)
        t3 = time.perf_counter()
        horizon = sum(1 for o in upcoming if o.start < now + HORIZON)
        return {
            "seconds": t3 - t0,
            "verify_s": t1 - t0,
            "plan_s": t2 - t1,
            "schedule_s": t3 - t2,
            "occurrences": len(upcoming),
            "timers": timers,
            "within_station_horizon": horizon,
        }

    def close(self) -> None:
        self.timers.stop()
        self.outbox.close()
        self.store.close()
        self.relays.close()
        self.factory.reset()


def _station() -> Any:
    from agent.core.targets import StationId

    return StationId.parse(STATION)


def _no_sink() -> Any:
    raise RuntimeError("nothing plays in this benchmark")


def _no_decoder(path: Path, gain: float, start_s: float) -> Any:
    raise RuntimeError("nothing plays in this benchmark")


def _no_item(media: Any) -> Any:
    raise RuntimeError("nothing plays in this benchmark")


def run(tmp: Path, trials: int, quick: bool) -> dict[str, Any]:
    now = datetime.now(UTC)
    t = time.perf_counter()
    signed = [envelope("playlist", playlist(v, now), "playlist") for v in range(1, trials + 1)]
    sign_s = (time.perf_counter() - t) / trials
    body_size = len(body_bytes(playlist(1, now)))
    public = test_key("playlist").public_key()
    rig = Rig(tmp / "station")
    runs: list[dict[str, float | int]] = []
    floors: list[float] = []
    try:
        for data in signed:  # the baseline right before each trial, on the same bytes
            floors.append(baseline(data, public))
            runs.append(rig.trial(data))
    finally:
        rig.close()
    median = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    seconds = float(median["seconds"])
    floor = statistics.median(floors)

    def step(key: str) -> float:
        return round(statistics.median(float(r[key]) for r in runs), 4)

    return {
        "benchmark": "playlist_scale",
        "title": f"A signed playlist of {SLOTS} slots and {MEDIA} media: verify, plan a week, "
        "schedule",
        "command": COMMAND + (" --quick" if quick else ""),
        "quick": quick,
        "n": trials,
        "seconds": round(seconds, 3),
        "baseline_seconds": round(floor, 4),
        "ratio": round(seconds / floor, 1),
        "figures": ["seconds", "ratio"],
        "labels": {
            "seconds": f"verify + plan a week ({median['occurrences']} occurrences) + schedule "
            f"their timers, median trial; target < {TARGET_S:g} s",
            "baseline_seconds": "json.loads + one Ed25519 verify + json.loads of the body",
            "ratio": "Loa's time / the baseline's",
        },
        "baselines": {"seconds": "baseline_seconds"},
        "target": {"seconds_below": TARGET_S, "met": seconds < TARGET_S},
        "detail": {
            "verify_s": step("verify_s"),
            "plan_s": step("plan_s"),
            "schedule_s": step("schedule_s"),
            "steps": {
                "verify_s": "Ingestor.ingest: the trust core's verify, then the body persisted",
                "plan_s": "stored bodies -> strict.loads -> Playlist.from_body -> "
                "planner.occurrences over 7 days",
                "schedule_s": "Programme.replace_plan, Outbox.was_reported per occurrence, "
                "Timers.replace_plan (APScheduler, started)",
            },
            "occurrences_per_week": median["occurrences"],
            "timers_set": median["timers"],
            "within_station_horizon": median["within_station_horizon"],
            "station_horizon_days": HORIZON.total_seconds() / 86400,
            "body_bytes": body_size,
            "envelope_bytes": len(signed[0]),
            "sign_s_per_version": round(sign_s, 3),
            "trials": [
                {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in runs
            ],
            "baseline_trials_s": [round(f, 4) for f in floors],
        },
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 trials instead of 7")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="loa-bench-playlist-") as tmp:
        result = run(Path(tmp), 3 if args.quick else 7, args.quick)
    path = write_result("playlist_scale", result, args.results)
    d = result["detail"]
    met = "met" if result["target"]["met"] else "NOT met"
    print(
        f"playlist_scale: {result['seconds']:.3f} s (verify {d['verify_s']:.3f}, plan "
        f"{d['plan_s']:.3f}, schedule {d['schedule_s']:.3f}) for "
        f"{d['occurrences_per_week']} occurrences; baseline {result['baseline_seconds']:.4f} s;"
        f" target < {TARGET_S:g} s {met}"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
