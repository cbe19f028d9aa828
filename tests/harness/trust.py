"""Trust material for tests: the golden vectors' test keys, body builders, and a provisioned
station whose state lives in a temporary directory.

The keys come from fixed seeds exactly as ``shared/vectors/manifest.json`` describes (seed = 32
bytes of the key's 1-based number), so envelopes built here verify against ``keyring-v1.json``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import Config, load_config
from agent.core import dsse
from agent.core.trust_state import TrustState
from agent.core.verify import Verdict
from agent.ingest import Ingestor
from agent.trust_store import TrustStore
from provisioning.init import InitRequest, provision
from tests.harness.clock import FakeClock

SHARED = Path(os.environ.get("LOA_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
VECTORS = SHARED / "vectors"
STATION = "25/08230/08230-01"

KEY_NAMES = (
    "root1", "root2", "root3", "playlist", "command", "emergency", "maintenance",
    "commune-08230", "stranger", "new1", "new2", "new3",
)  # fmt: skip
PAYLOAD = {
    "playlist": "application/vnd.loa.playlist+json",
    "command": "application/vnd.loa.command+json",
    "keyring": "application/vnd.loa.keyring+json",
    "time": "application/vnd.loa.time+json",
}


def test_key(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([KEY_NAMES.index(name) + 1]) * 32)


def public_hex(name: str) -> str:
    return dsse.public_raw(test_key(name)).hex()


def keyid(name: str) -> str:
    return dsse.keyid_of(dsse.public_raw(test_key(name)))


def body_bytes(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def envelope(kind: str, doc: Mapping[str, Any] | bytes, *signers: str) -> bytes:
    """A DSSE envelope of ``doc`` (a dict or raw body bytes) signed by the named test keys."""
    body = doc if isinstance(doc, bytes) else body_bytes(doc)
    return dsse.sign(PAYLOAD[kind], body, [test_key(s) for s in signers])


def decode(envelope_bytes: bytes) -> dict[str, Any]:
    env = json.loads(envelope_bytes)
    doc: dict[str, Any] = json.loads(base64.b64decode(env["payload"]))
    return doc


def playlist_body(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "playlist",
        "schema": 1,
        "issuer": "25",
        "target": "25",
        "version": 1,
        "issued_at": "2026-11-01T08:00:00+07:00",
        "valid_from": "2026-11-01T08:00:00+07:00",
        "expires": "2036-01-01T00:00:00+07:00",
        "timezone": "Asia/Ho_Chi_Minh",
        "media": {
            "news": {
                "url": "https://media.example.vn/25/news.mp3",
                "sha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
                "bytes": 4800514,
                "duration_s": 600.0,
                "title": "Bản tin",
                "category": "news",
            }
        },
        "slots": [
            {
                "id": "morning",
                "start": "06:00",
                "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                "items": ["news"],
                "priority": 50,
                "zones": ["all"],
                "volume": 80,
                "gap_s": 2,
            }
        ],
    }
    doc.update(changes)
    return doc


def command_body(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "command",
        "schema": 1,
        "id": "t-0001",
        "issuer": "25",
        "target": "25/08230",
        "issued_at": "2026-11-22T08:00:00+07:00",
        "expires": "2026-11-22T23:00:00+07:00",
        "action": "stop",
        "zones": ["all"],
    }
    doc.update(changes)
    return doc


def emergency_body(**changes: Any) -> dict[str, Any]:
    doc = command_body(
        action="emergency",
        priority=100,
        volume=100,
        repeat=3,
        media={
            "url": "https://media.example.vn/25/storm.mp3",
            "sha256": "9a105749cfcbac2e07d7640697861f62dfcc7c02bc24519e9c287431bc493f9d",
            "bytes": 123456,
            "duration_s": 42.0,
        },
    )
    doc.update(changes)
    return doc


def keyring_body(version: int = 1, **changes: Any) -> dict[str, Any]:
    """The body of ``keyring-v1.json`` (same keys, roles, thresholds), at ``version``."""
    doc = decode((VECTORS / "keyring-v1.json").read_bytes())
    doc["version"] = version
    doc.update(changes)
    return doc


@dataclass
class Station:
    """A provisioned station in a temporary directory, driven through the real Ingestor."""

    config: Config
    store: TrustStore
    clock: FakeClock
    ingestor: Ingestor

    def ingest(self, data: bytes, topic: str | None = None) -> Verdict:
        return self.ingestor.ingest(data, topic)

    def state(self) -> TrustState:
        return self.store.snapshot()

    def playlists(self) -> dict[tuple[str, str], bytes]:
        return self.store.playlist_bodies()

    def fingerprint(self) -> tuple[Any, ...]:
        """Everything ingest may change, to prove a rejection changed nothing."""
        state = self.state()
        return (
            state.keyring_sha256,
            dict(state.streams),
            dict(state.commands),
            state.time_floor,
            self.playlists(),
        )


def make_station(
    directory: Path,
    clock: FakeClock,
    keyring_envelope: bytes | None = None,
    station: str = STATION,
    clock_trust: str = "system",
    kernel_synchronised: bool = True,
) -> Station:
    from agent.core.targets import StationId

    envelope_bytes = keyring_envelope or (VECTORS / "keyring-v1.json").read_bytes()
    result = provision(
        InitRequest(StationId.parse(station), envelope_bytes, directory, clock_trust=clock_trust),
        clock.now(),
    )
    config = load_config(result.config_path.read_text(), {}, result.config_path.parent)
    store = TrustStore(config.paths.trust_db)
    ingestor = Ingestor(config, store, clock, lambda: kernel_synchronised)
    return Station(config, store, clock, ingestor)


@pytest.fixture
def station(tmp_path: Path, fake_clock: FakeClock) -> Iterator[Station]:
    made = make_station(tmp_path / "station", fake_clock)
    yield made
    made.store.close()


def sign_with(kind: str, doc: Mapping[str, Any], signers: Sequence[str]) -> bytes:
    return envelope(kind, doc, *signers)
