"""The hostile corpus (``tests/corpus/hostile.py``) against real provisioned stations.

Each case gets a fresh station (real SQLite state, the Ingestor the agent uses, a fake clock at
the corpus's ``NOW``), its prelude accepted, province playlist v5 accepted as the last good
schedule; then the case must be rejected with the code written beside it, change nothing, and
leave v5 in force.

A case with ``clock_untrusted`` is provisioned with ``clock_trust = "kernel"`` while the kernel
still vouches for the clock (so that v5 and the prelude can be accepted, as on a station that
lost NTP later), and the case arrives through an Ingestor of the same store whose kernel says
"not synchronised".
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from agent.core.verify import Accepted, Rejection
from agent.ingest import Ingestor
from tests.corpus.hostile import KNOWN_GOOD, NOW, Case, build
from tests.harness.clock import FakeClock
from tests.harness.trust import make_station

CASES = build()

# PROTOCOL.md section 8, written out here rather than taken from the corpus or the code.
EVERY_CODE = {
    "too-large", "bad-envelope", "wrong-payload-type", "bad-signature", "unknown-key",
    "threshold-not-met", "schema", "out-of-scope", "wrong-audience", "clock-untrusted",
    "expired", "not-yet-valid", "rollback", "version-conflict", "version-gap", "replay",
    "keyring-expired",
}  # fmt: skip
# The attack families the corpus must cover (the brief of the corpus, one name each).
FAMILIES = {
    "tampered-body", "tampered-signature", "payload-type", "type-confusion", "unknown-key",
    "outside-role", "threshold", "out-of-scope", "wrong-audience", "clock-untrusted",
    "time-window", "keyring-expired", "rollback", "version-conflict", "version-gap", "replay",
    "too-large", "envelope-json", "base64", "body-json", "field-types", "field-missing",
    "field-bounds", "hostile-strings", "urls", "timezone", "slot-items", "time-edges",
}  # fmt: skip


def test_corpus_is_large_covers_every_code_and_family() -> None:
    assert len(CASES) >= 150
    assert {case.expect for case in CASES} == EVERY_CODE
    assert {case.family for case in CASES} == FAMILIES
    assert len({case.name for case in CASES}) == len(CASES)


def test_corpus_is_deterministic() -> None:
    again = build()
    assert [(c.name, c.data, c.expect, c.prelude) for c in again] == [
        (c.name, c.data, c.expect, c.prelude) for c in CASES
    ]


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_case_is_rejected_and_changes_nothing(case: Case, tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    station = make_station(
        tmp_path / "station",
        clock,
        keyring_envelope=case.keyring,
        clock_trust="kernel" if case.clock_untrusted else "system",
        kernel_synchronised=True,
    )
    try:
        for number, data in enumerate(case.prelude):
            verdict = station.ingest(data)
            assert isinstance(verdict, Accepted), f"prelude {number}: {verdict}"
        verdict = station.ingest(KNOWN_GOOD)
        assert isinstance(verdict, Accepted), f"known-good v5: {verdict}"
        if case.wall is not None:
            clock.set_wall(moment(case.wall))
        if case.floor is not None:
            station.store.raise_floor(moment(case.floor))
        ingestor = station.ingestor
        if case.clock_untrusted:
            ingestor = Ingestor(station.config, station.store, clock, lambda: False)
        before = station.fingerprint()

        verdict = ingestor.ingest(case.data, case.topic)

        assert isinstance(verdict, Rejection), f"{case.note}: {verdict}"
        assert verdict.code == case.expect, f"{case.note}: {verdict.detail}"
        assert station.fingerprint() == before
        in_force = json.loads(station.playlists()[("25", "25")])
        assert in_force["version"] == 5
    finally:
        station.store.close()
