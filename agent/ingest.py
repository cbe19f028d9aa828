"""Envelopes from anywhere (files now, MQTT in the running agent) through the one trust core.

``Ingestor`` binds the pure verifier to the persisted state: it takes the state lock, verifies,
persists the effects of an accepted envelope in the same transaction, and returns the verdict.
The running agent and ``loa-agent ingest`` both go through here, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from agent.config import Config
from agent.core.clock import Clock
from agent.core.models import Command
from agent.core.verify import (
    Accepted,
    ClockView,
    Context,
    Verdict,
    clock_trusted,
    trust_alerts,
    verify,
)
from agent.schemas import load_schema_set
from agent.trust_store import StoreError, TrustStore
from agent.version import running_version
from hal.clock import kernel_clock_synchronised


@dataclass
class Ingestor:
    config: Config
    store: TrustStore
    clock: Clock
    # The kernel's word on clock sync (adjtimex); tests give their own answer.
    kernel_synchronised: Callable[[], bool] = field(default=kernel_clock_synchronised)
    # The version releases are compared with (docs/releases.md); tests pretend to be others.
    version: str = field(default_factory=running_version)

    def __post_init__(self) -> None:
        # Compiling the validators takes a Pi a good part of a second: at start, not when the
        # first emergency is waiting for its verdict.
        load_schema_set()

    def clock_view(self) -> ClockView:
        synchronised = self.config.clock_trust == "system" or self.kernel_synchronised()
        return ClockView(self.clock.now(), synchronised)

    def trust(self) -> tuple[bool, tuple[str, ...]]:
        """Whether the clock is trusted now, and the trust alerts to report."""
        state, view = self.store.snapshot(), self.clock_view()
        return clock_trusted(state, view), trust_alerts(state, view, self.config.limits)

    def ingest(self, data: bytes, topic: str | None = None) -> Verdict:
        ctx = Context(
            station=self.config.station,
            clock=self.clock_view(),
            schemas=load_schema_set(),
            limits=self.config.limits,
            topic=topic,
            running_version=self.version,
        )
        verdict: Verdict | None = None
        try:
            with self.store.transaction() as state:
                verdict = verify(state, data, ctx)
                if isinstance(verdict, Accepted) and verdict.effects:
                    self.store.persist(verdict.effects, ctx.clock.now)
        except StoreError:
            if verdict is None:  # the state could not even be locked: judge on the snapshot
                verdict = verify(self.store.snapshot(), data, ctx)
            if not isinstance(verdict, Accepted) or not verdict.effects:
                return verdict  # nothing to write: a rejection is as good as ever
            if not isinstance(verdict.message, Command):
                raise  # a playlist or keyring not persisted is not believed: held, retried
            # A command acts now, full disk or not: an emergency must sound. Its id is kept
            # in memory (a replay is refused in this run) until the disk takes it.
            self.store.keep_unwritten(verdict.effects, ctx.clock.now)
        return verdict
