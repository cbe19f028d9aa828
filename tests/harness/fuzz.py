"""Budgets and tallies of the parser fuzzing (issue 13, part "fuzz").

Owns: the hypothesis profiles (``ci`` and ``long``), the ``budget(n)`` every fuzz test sizes its
``max_examples`` with, and :func:`fuzz_and_record`, which runs one ``@given`` property, counts
what the parser did with each example *in the test body* (not what hypothesis says about
itself), and writes one reliability Scenario per parser before the bar is asserted.

Both profiles are derandomized (the examples are a function of the test, so a CI failure
reproduces on any machine) and use no example database. ``long`` (``LOA_RELIABILITY_LONG=1``)
runs ``LONG_FACTOR`` times the examples: more of the same deterministic search, not a new seed.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, settings

from tests.harness.reliability import Scenario, record

LONG_ENV = "LOA_RELIABILITY_LONG"
LONG = os.environ.get(LONG_ENV) == "1"
LONG_FACTOR = 10  # long/CI time is ~1.6x this (bigger examples): a few minutes in all
CI_EXAMPLES = 100  # hypothesis's own default, so tests without a budget cost what they did
COMMAND = "LOA_RELIABILITY_LONG=1 .venv/bin/pytest -q {path}"


def register_profiles() -> None:
    """Called once from tests/conftest.py, before any test module builds its settings."""
    common = {
        "derandomize": True,
        "database": None,
        # "Never hangs": an example taking seconds (they take milliseconds) fails the test; the
        # bound is loose because five engineers' tests share two cores.
        "deadline": timedelta(seconds=5),
        "print_blob": False,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    settings.register_profile("ci", max_examples=CI_EXAMPLES, **common)  # type: ignore[arg-type]
    settings.register_profile(
        "long",
        max_examples=CI_EXAMPLES * LONG_FACTOR,
        **common,  # type: ignore[arg-type]
    )
    settings.load_profile("long" if LONG else "ci")


def budget(n: int) -> int:
    """``n`` examples in CI, ``n * LONG_FACTOR`` in the long run."""
    return n * LONG_FACTOR if LONG else n


@dataclass
class Tally:
    """What one parser did with the examples it was given, counted by the test body."""

    examples: int = 0
    accepted: int = 0  # returned a value
    refused: int = 0  # raised its documented error
    codes: Counter[str] = field(default_factory=Counter)  # section 8 codes, where they apply

    def ok(self) -> None:
        self.examples += 1
        self.accepted += 1

    def refuse(self, code: str | None = None) -> None:
        self.examples += 1
        self.refused += 1
        if code is not None:
            self.codes[str(code)] += 1


def fuzz_and_record(
    parser: str,
    how: str,
    run: Callable[[Tally], None],
    tmp_path: Path,
    test_file: str,
) -> Tally:
    """Run ``run(tally)`` (which calls a ``@given`` property feeding ``tally``), then record.

    A property that fails (an undocumented exception, a broken round trip, a hang hypothesis
    turned into an error) is counted as one failure and one crash and re-raised after the
    Scenario is written, so a failing run still leaves its counts.
    """
    tally = Tally()
    started = time.monotonic()
    failure: BaseException | None = None
    try:
        run(tally)
    except Exception as exc:  # the property failed: count it, record, then re-raise
        failure = exc
    counts: dict[str, object] = {
        "examples": tally.examples,
        "accepted": tally.accepted,
        "refused_documented": tally.refused,
        "failures_found": 0 if failure is None else 1,
        "crashes": 0 if failure is None else 1,
    }
    if tally.codes:
        counts["rejections"] = dict(sorted(tally.codes.items()))
    scenario = Scenario(
        part="fuzz",
        name=parser,
        how=how,
        counts=counts,
        bar={"crashes": 0, "failures_found": 0},
    )
    record(scenario, COMMAND.format(path=test_file), time.monotonic() - started, tmp_path)
    if failure is not None:
        raise failure
    assert tally.examples > 0, f"{parser}: the property ran no example"
    return tally
