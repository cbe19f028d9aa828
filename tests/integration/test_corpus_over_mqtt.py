"""The hostile corpus over the real broker to one real ``loa-agent run`` process.

The operator ``province-25`` publishes the known-good playlist v5, then every corpus case a
station on real time can be given (no prelude, no special clock, small enough for the broker's
packet limit), then one case per code that only a prelude reaches (prelude first, each prelude
envelope awaited until accepted). Cases go out in batches of ``BATCH`` without waiting for each
PUBACK; the station takes its inbox in arrival order and reports one ``telemetry/event`` with
``event == "envelope"`` per message, so the batch's verdicts, read in ``seq`` order, pair with
its cases in publication order (each verdict must also name its case's topic). Each verdict's
``code`` must equal the case's literal expectation. Mismatches are collected and reported
together, so one bug does not hide another.

Topics: a case's own ``topic`` if it has one; otherwise the topic section 2 gives for its body.
When this station does not listen there (a body for another commune or province) or the topic
cannot be published (wildcards, control characters), the case goes to
``loa/v1/25/playlist/25``: such a body's verdict is decided at step 7 or earlier (wrong target,
wrong issuer scope, or a malformed field), and a wrong topic is itself a step 7 failure, so the
expected code stays the same.

Not here, because a station on real time cannot be put there: ``clock-untrusted`` (the agent
runs with ``LOA_CLOCK_TRUST=system`` and its floor is the provisioning time) and
``keyring-expired`` (its keyring is valid until 2036). ``tests/unit/test_hostile_corpus.py``
runs those.

The run is recorded for the reliability suite (issue 13, part "attacks"): cases sent, verdicts
received, verdicts by code, mismatches, the agent's unasked exits, and ``accepted_unsigned``,
the verdicts ``accepted`` for a case that carries no valid signature by the corpus's own check
(``tests.corpus.hostile.validly_signed``, not the agent's word).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import MQTTMessage, topic_matches_sub

from agent.core.targets import StationId
from agent.link import down_topics
from province.mosquitto import MAX_PACKET_SIZE
from tests.corpus.hostile import (
    KNOWN_GOOD,
    KNOWN_GOOD_TOPIC,
    UNDECODABLE_TOPIC,
    Case,
    build,
    section2_topic,
    validly_signed,
)
from tests.harness.broker import MosquittoBroker, Recorder
from tests.harness.reliability import Scenario, record
from tests.harness.station_proc import StationProcess, provision_station
from tests.harness.trust import STATION

pytestmark = pytest.mark.integration
PREFIX = f"loa/v1/{STATION}"
EVENT_TOPIC = f"{PREFIX}/telemetry/event"
SUBSCRIPTIONS = down_topics(StationId.parse(STATION))
EVENT_TIMEOUT_S = 10.0
BATCH = 25
COMMAND = ".venv/bin/pytest -q tests/integration/test_corpus_over_mqtt.py"


def listens(topic: str) -> bool:
    return any(topic_matches_sub(sub, topic) for sub in SUBSCRIPTIONS)


def publishable(topic: str) -> bool:
    return topic.isprintable() and not {"+", "#"} & set(topic) and len(topic.encode()) < 1024


def delivery_topic(case: Case) -> str | None:
    """Where to publish ``case``; None if its own topic is one this station never hears."""
    if case.topic is not None:
        return case.topic if listens(case.topic) and publishable(case.topic) else None
    topic = section2_topic(case.data)
    return topic if listens(topic) and publishable(topic) else UNDECODABLE_TOPIC


def fits(case: Case) -> bool:
    """Within the broker's packet limit, and not empty: an empty MQTT payload clears a retained
    topic and the station ignores it (docs/protocol.md), so it is no envelope over MQTT."""
    sizes = [len(data) for data in (case.data, *case.prelude)]
    return min(sizes) > 0 and max(sizes) < MAX_PACKET_SIZE - 4096


def batches(cases: list[Case]) -> list[list[Case]]:
    """Every plain case in batches, then alone each prelude case for a code the plain cases do
    not reach, then alone each case at the edges of what the agent can represent: should one
    of those kill the agent, every other case has had its verdict."""
    plain = [
        c
        for c in cases
        if not c.prelude and not c.special_clock and fits(c) and delivery_topic(c) is not None
    ]
    covered = {c.expect for c in plain}
    extra: dict[str, Case] = {}
    for c in cases:
        if c.prelude and not c.special_clock and fits(c) and c.expect not in covered:
            extra.setdefault(c.expect, c)
    edges = [c for c in plain if c.family == "time-edges"]
    ordinary = [c for c in plain if c not in edges]
    chunks = [ordinary[i : i + BATCH] for i in range(0, len(ordinary), BATCH)]
    return chunks + [[c] for c in (*extra.values(), *edges)]


class Verdicts:
    """The station's envelope verdicts in ``seq`` order, skipping resends and other events.

    It also plays the collector's part for the station's outbox: receipts on ``.../ack`` for the
    reports seen, so the station does not resend hundreds of unacknowledged events every few
    seconds while the corpus runs (section 7).
    """

    def __init__(self, recorder: Recorder, proc: StationProcess) -> None:
        self.recorder = recorder
        self.proc = proc
        self.last_seq = -1
        self._scanned = 0
        self._waiting: dict[int, dict[str, Any]] = {}  # seq -> envelope verdict not yet taken
        self._highest: dict[str, int] = {}

    def _collect(self) -> None:
        messages = self.recorder.messages
        while self._scanned < len(messages):
            message = messages[self._scanned]
            self._scanned += 1
            if not message.topic.startswith(f"{PREFIX}/telemetry/"):
                continue
            report = json.loads(message.payload)
            kind = message.topic.rsplit("/", 1)[1]
            self._highest[kind] = max(self._highest.get(kind, -1), report["seq"])
            if kind == "event" and report["event"] == "envelope" and report["seq"] > self.last_seq:
                self._waiting[report["seq"]] = report

    def take(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` verdicts in ``seq`` order; fewer if they did not all come in time."""

        def enough(_: MQTTMessage) -> bool:
            if self._scanned != len(self.recorder.messages):
                self._collect()
            return len(self._waiting) >= count

        with contextlib.suppress(AssertionError):
            self.recorder.wait_for(enough, f"{count} envelope verdicts", EVENT_TIMEOUT_S)
        self._collect()
        taken = [self._waiting.pop(seq) for seq in sorted(self._waiting)[:count]]
        if taken:
            self.last_seq = taken[-1]["seq"]
            self._waiting = {s: e for s, e in self._waiting.items() if s > self.last_seq}
        return taken

    def alive(self) -> bool:
        assert self.proc.process is not None
        return self.proc.process.poll() is None

    def acknowledge(self) -> None:
        if self._highest:
            self.recorder.publish(f"{PREFIX}/ack", json.dumps(self._highest).encode())


@pytest.fixture
def operator(mqtt_connect: Any) -> Iterator[Recorder]:
    """The province operator, hearing the station's state and reports."""
    recorder: Recorder = mqtt_connect("province-25")
    recorder.subscribe(f"{PREFIX}/state")
    recorder.subscribe(f"{PREFIX}/telemetry/#")
    yield recorder
    # The station's retained birth/offline must not leak into other tests on the shared broker;
    # mqtt_connect clears what the operator retained itself (the known-good playlist).
    recorder.publish(f"{PREFIX}/state", b"", retain=True)


def test_corpus_over_mqtt(tmp_path: Path, mqtt_broker: MosquittoBroker, operator: Recorder) -> None:
    planned = batches(build())
    cases = [case for batch in planned for case in batch]
    assert {c.expect for c in cases} >= {
        "too-large", "bad-envelope", "wrong-payload-type", "bad-signature", "unknown-key",
        "threshold-not-met", "schema", "out-of-scope", "wrong-audience", "expired",
        "not-yet-valid", "rollback", "version-conflict", "version-gap", "replay",
    }  # fmt: skip
    # One verdict event per case: the flood gate (tested on its own) is opened wide here, and
    # the time topic is heard although this station's clock is trusted.
    proc = provision_station(
        tmp_path / "station", mqtt_broker, STATION, reports="rejection_events_per_minute = 100000\n"
    )
    config = proc.directory / "station.toml"
    config.write_text(
        config.read_text().replace("[broker]\n", '[broker]\ntime_beacons = "always"\n')
    )
    proc.start()
    mismatches: list[str] = []
    outcomes: list[tuple[Case, str]] = []
    started = time.monotonic()
    try:
        wait_for_birth(operator)
        verdicts = Verdicts(operator, proc)
        operator.publish(KNOWN_GOOD_TOPIC, KNOWN_GOOD, retain=True)
        first = verdicts.take(1)
        assert [(e["topic"], e["code"]) for e in first] == [(KNOWN_GOOD_TOPIC, "accepted")]
        mismatches = run_batches(planned, operator, verdicts, outcomes)
    finally:
        elapsed = time.monotonic() - started
        assert proc.process is not None
        crashed = proc.process.poll() is not None
        code = proc.stop()
        if crashed:
            settle(proc, operator)
    print(f"{len(cases)} cases over MQTT in {elapsed:.1f} s")
    scenario = corpus_scenario(cases, outcomes, mismatches, crashed)
    record(scenario, COMMAND, elapsed, tmp_path)
    assert scenario.misses() == {}, scenario.misses()
    assert mismatches == [], "\n".join(mismatches)
    assert code == 0, proc.log_text()[-3000:]


def corpus_scenario(
    cases: list[Case], outcomes: list[tuple[Case, str]], mismatches: list[str], crashed: bool
) -> Scenario:
    """What the run measured: verdicts by code as heard on the station's telemetry, and the
    acceptances of cases without a valid signature by the corpus's own check."""
    rejections: dict[str, int] = {}
    for _, code in outcomes:
        if code != "accepted":
            rejections[code] = rejections.get(code, 0) + 1
    unsigned = sum(1 for case, code in outcomes if code == "accepted" and not validly_signed(case))
    return Scenario(
        part="attacks",
        name="hostile corpus over MQTT",
        how=(
            "Every hostile-corpus case a station on real time can be given, published by the "
            "province operator over the real broker (mutual TLS, ACL) to one real `loa-agent "
            "run`; each verdict read from the station's telemetry and compared with the case's "
            "literal expectation; acceptances checked against the corpus's own signature check."
        ),
        counts={
            "cases_sent": len(cases),
            "verdicts_received": len(outcomes),
            "rejections": dict(sorted(rejections.items())),
            "accepted_unsigned": unsigned,
            "crashes": int(crashed),
            "mismatches": len(mismatches),
        },
        bar={"accepted_unsigned": 0, "crashes": 0, "mismatches": 0},
    )


def is_birth(message: MQTTMessage) -> bool:
    return (
        message.topic == f"{PREFIX}/state"
        and bool(message.payload)
        and json.loads(message.payload).get("online") is True
    )


def wait_for_birth(operator: Recorder) -> None:
    """Wait for a birth message the operator had not received before the call."""
    before = {id(m) for m in list(operator.messages) if is_birth(m)}
    operator.wait_for(lambda m: is_birth(m) and id(m) not in before, "birth", timeout=20)


def settle(proc: StationProcess, operator: Recorder) -> None:
    """After the agent died, start it again and stop it cleanly: resuming its session cancels
    the MQTT Will it left behind, which would otherwise publish a retained ``online: false``
    after the Will Delay, when this test's cleanup is long over."""
    proc.start()
    wait_for_birth(operator)
    proc.stop()


def run_batches(
    planned: list[list[Case]],
    operator: Recorder,
    verdicts: Verdicts,
    outcomes: list[tuple[Case, str]],
) -> list[str]:
    """Publish the cases batch by batch and compare the verdicts; return the mismatches.
    Every (case, verdict code) heard is appended to ``outcomes``."""
    mismatches: list[str] = []
    preluded: set[bytes] = set()
    for batch in planned:
        for case in batch:
            for data in case.prelude:
                if data not in preluded:
                    publish_and_expect_accepted(operator, verdicts, data)
                    preluded.add(data)
        topics = [delivery_topic(case) for case in batch]
        for case, topic in zip(batch, topics, strict=True):
            assert topic is not None
            operator.client.publish(topic, case.data, qos=1)
        got = verdicts.take(len(batch))
        if len(got) < len(batch):
            if not verdicts.alive():
                last = verdicts.proc.log_text().strip().splitlines()[-1:]
                names = [c.name for c in batch]
                mismatches.append(f"the agent exited ({last}) during {names}")
                break
            heard = [(e.get("topic"), e["code"]) for e in got]
            mismatches.append(f"batch at {batch[0].name}: {len(got)} verdicts, heard {heard}")
            continue
        for case, topic, event in zip(batch, topics, got, strict=True):
            outcomes.append((case, str(event["code"])))
            if event.get("topic") != topic:
                mismatches.append(f"{case.name}: verdict about {event.get('topic')}, not {topic}")
            elif event["code"] != case.expect:
                mismatches.append(
                    f"{case.name}: expected {case.expect}, got {event['code']} ({case.note})"
                )
        verdicts.acknowledge()
    return mismatches


def publish_and_expect_accepted(operator: Recorder, verdicts: Verdicts, data: bytes) -> None:
    topic = section2_topic(data)
    operator.publish(topic, data)
    assert [(e["topic"], e["code"]) for e in verdicts.take(1)] == [(topic, "accepted")]
