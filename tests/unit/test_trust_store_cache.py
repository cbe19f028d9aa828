"""The trust store's cached snapshot moves forward by the effects it wrote (no read-back after
each accepted command): it must always equal what a fresh connection reads from the file."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from agent.core.trust_state import RememberCommand, TrustState
from agent.core.verify import Accepted
from agent.trust_store import TrustStore
from tests.harness.clock import FakeClock
from tests.harness.trust import (
    Station,
    command_body,
    envelope,
    keyring_body,
    playlist_body,
)


def on_disk(station: Station) -> TrustState:
    fresh = TrustStore(station.config.paths.trust_db)
    try:
        return fresh.snapshot()
    finally:
        fresh.close()


def same(a: TrustState, b: TrustState) -> None:
    assert a.keyring_sha256 == b.keyring_sha256
    assert dict(a.streams) == dict(b.streams)
    assert dict(a.commands) == dict(b.commands)
    assert a.time_floor == b.time_floor


def command(n: int, clock: FakeClock, lifetime_s: float) -> bytes:
    issued = clock.now() - timedelta(seconds=1)
    doc: dict[str, Any] = command_body(
        id=f"cache-{n:04d}",
        issued_at=issued.isoformat(),
        expires=(clock.now() + timedelta(seconds=lifetime_s)).isoformat(),
    )
    return envelope("command", doc, "command")


def test_snapshot_follows_every_write_as_the_file_does(
    station: Station, fake_clock: FakeClock
) -> None:
    verdicts = [station.ingest(command(n, fake_clock, 30 + 20 * (n % 3))) for n in range(6)]
    assert all(isinstance(v, Accepted) for v in verdicts), verdicts
    same(station.state(), on_disk(station))
    assert len(station.state().commands) == 6

    fake_clock.advance(45)  # the 30 s ones expire; the next write forgets them, as the file
    assert isinstance(station.ingest(command(99, fake_clock, 600)), Accepted)
    same(station.state(), on_disk(station))
    assert len(station.state().commands) == 5

    playlist = envelope("playlist", playlist_body(version=3), "playlist")
    assert isinstance(station.ingest(playlist), Accepted)
    same(station.state(), on_disk(station))

    rotated = envelope("keyring", keyring_body(2), "root1", "root2")
    assert isinstance(station.ingest(rotated), Accepted)
    same(station.state(), on_disk(station))
    assert station.state().keyring is not None and station.state().keyring.version == 2

    station.store.raise_floor(fake_clock.now())
    same(station.state(), on_disk(station))
    assert station.state().time_floor == fake_clock.now()


def test_a_write_by_another_connection_is_seen(station: Station, fake_clock: FakeClock) -> None:
    station.state()  # cached
    other = TrustStore(station.config.paths.trust_db)
    try:
        later = fake_clock.now() + timedelta(hours=1)
        with other.transaction():
            other.persist((RememberCommand("by-ingest-cli", later),), fake_clock.now())
    finally:
        other.close()
    assert "by-ingest-cli" in station.state().commands
    same(station.state(), on_disk(station))


def test_a_rolled_back_write_leaves_no_trace_in_the_snapshot(
    station: Station, fake_clock: FakeClock
) -> None:
    with pytest.raises(RuntimeError), station.store.transaction():
        later = fake_clock.now() + timedelta(hours=1)
        station.store.persist((RememberCommand("never", later),), fake_clock.now())
        raise RuntimeError("a check failed after the write")
    assert "never" not in station.state().commands
    same(station.state(), on_disk(station))
