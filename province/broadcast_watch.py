"""Wait and report: what each station of a target did with one command, station by station.

This module owns the reading of the answers a ``province.broadcast.Link`` hands over: the
envelope verdict, the emergency and live events (docs/protocol.md, "Emergency and broadcast
commands"), the signed as-run of a test broadcast (checked with the station's registered key by
the collector's own check), hardware events and heartbeat inputs, and the retained state that
tells "offline" from "never connected". It prints a line whenever a station's result changes
and a table at the end.

Expected stations come from the caller (the registry's stations in the target); what it does
with the verdict (the exit code) is the caller's too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TextIO

from agent.core import dsse
from agent.core.codes import Rejected
from agent.core.timefmt import parse_rfc3339
from province.broadcast import Link

# The collector's check of an as-run signature, reused so that a test broadcast and coverage
# judge a station's records by the same rule (a private name: it is the collector's, not ours).
from province.collector import _Refuse, _verified_asrun
from province.registry import StationRecord

SOUNDED, CANCELLED, NOT_ON, STOPPED = "sounded", "cancelled", "not on", "stopped"
SILENT, REFUSED, FAILED, NO_ANSWER = "silent", "refused", "failed", "no answer"
ACCEPTED, FETCHING, PASS, FAIL = "accepted", "fetching", "PASS", "FAIL"
MODES = ("emergency", "test", "cancel", "live", "live-stop")
# What "it worked" means, per mode: a cancel that finds nothing on air has done its job too.
SUCCESS = {
    "emergency": {SOUNDED}, "test": {PASS}, "cancel": {CANCELLED, NOT_ON}, "live": {SOUNDED},
    "live-stop": {STOPPED, NOT_ON},
}  # fmt: skip
FAULT_CODES = {"output-silent", "speaker-line-fault", "amp-power-lost", "mains-lost"}
# A rejection names no command id (the station could not trust the body), so it is tied to ours
# by its topic and its time: not earlier than this before we sent (station clocks drift).
REJECTION_SLACK = timedelta(seconds=30)
NOT_REJECTIONS = {"accepted", "accepted-noop", "rejections-suppressed"}
TENTATIVE_GRACE_S = 1.0


@dataclass(frozen=True, slots=True)
class Expect:
    """The command whose answers are awaited."""

    mode: str  # one of MODES
    command_id: str
    topic: str  # the command topic it went out on
    sent_at: datetime
    references: str | None = None  # cancel: the emergency; live-stop: the live broadcast
    sound_s: float | None = None  # test: seconds of the clip times its repetitions
    min_level_db: float = -45.0


@dataclass
class View:
    """One station's answer so far."""

    record: StationRecord
    result: str = NO_ANSWER
    detail: str = ""
    final: bool = False
    online: bool | None = None
    heard: bool = False  # any report from it during the wait
    accepted: bool = False
    tentative: bool = False  # refused by a rejection tied to us by topic and time only
    repetitions: int = 0
    asrun: dict[str, Any] | None = None
    faults: list[str] = field(default_factory=list)
    inputs: dict[str, Any] | None = None
    level_source: str | None = None

    @property
    def station(self) -> str:
        return self.record.id.path


class Tracker:
    """Each expected station's result, fed the target's telemetry one message at a time."""

    def __init__(self, expect: Expect, stations: Sequence[StationRecord]) -> None:
        if expect.mode not in MODES:
            raise ValueError(f"unknown mode {expect.mode!r}")
        self.expect = expect
        self.views = {r.id.path: View(r) for r in sorted(stations, key=lambda r: r.id.path)}
        self._seen: set[tuple[str, str, int]] = set()

    def done(self) -> bool:
        return all(v.final for v in self.views.values())

    def tentative(self) -> bool:
        return any(v.tentative for v in self.views.values())

    def ok(self, view: View) -> bool:
        return view.result in SUCCESS[self.expect.mode]

    def all_ok(self) -> bool:
        return all(self.ok(v) for v in self.views.values())

    def feed(self, topic: str, payload: bytes) -> View | None:
        """The view the message changed (its result or detail), if any."""
        parts = topic.split("/")
        if len(parts) < 6 or parts[:2] != ["loa", "v1"]:
            return None
        view = self.views.get("/".join(parts[2:5]))
        if view is None or (view.final and not view.tentative) or not payload:
            return None
        before = (view.result, view.detail)
        kind = parts[6] if parts[5:6] == ["telemetry"] and len(parts) == 7 else parts[5]
        if kind == "asrun":
            self._asrun(view, payload)
        else:
            doc = _json(payload)
            if doc is None or self._repeat(view, kind, doc):
                return None
            if kind == "state":
                view.online = doc.get("online") is True
            elif kind == "heartbeat":
                self._heartbeat(view, doc)
            elif kind == "event":
                view.heard = view.online = True
                self._event(view, doc)
        return view if (view.result, view.detail) != before else None

    def close(self) -> None:
        """The wait is over: say why each unfinished station is unfinished."""
        for view in self.views.values():
            view.tentative = False
            if view.final:
                continue
            if view.result == NO_ANSWER:
                view.detail = self._silence(view)
                if self.expect.mode == "test":
                    view.result, view.detail = FAIL, f"{NO_ANSWER}: {view.detail}"
            elif self.expect.mode == "test":
                last = f"{view.result}: {view.detail}" if view.detail else view.result
                view.result, view.detail = FAIL, f"no as-run within the wait (last: {last})"
            else:
                view.detail = f"{view.detail or view.result}; nothing more within the wait"
            view.final = True

    # -- the reports ----------------------------------------------------------------------------

    def _repeat(self, view: View, kind: str, doc: dict[str, Any]) -> bool:
        """Stations send an unacknowledged report again: each (station, kind, seq) counts once."""
        seq = doc.get("seq")
        if kind == "state" or not isinstance(seq, int):
            return False
        key = (view.station, kind, seq)
        if key in self._seen:
            return True
        self._seen.add(key)
        return False

    def _heartbeat(self, view: View, doc: dict[str, Any]) -> None:
        view.heard = view.online = True
        hw = doc.get("hw")
        if isinstance(hw, dict):
            view.level_source = hw.get("level") if isinstance(hw.get("level"), str) else None
            view.inputs = hw.get("inputs") if isinstance(hw.get("inputs"), dict) else None

    def _event(self, view: View, doc: dict[str, Any]) -> None:
        event, code, cid = doc.get("event"), doc.get("code"), doc.get("id")
        ours = self.expect.command_id
        if event == "envelope" and doc.get("payload_kind") == "command":
            if code == "accepted" and doc.get("label") == ours:
                view.accepted = True
                if view.result in (NO_ANSWER, REFUSED):
                    self._set(view, ACCEPTED, "verified and accepted", final=False)
            elif code not in NOT_REJECTIONS and not view.accepted and self._ours(doc):
                self._set(view, REFUSED, f"{code}: {doc.get('detail', '')}")
                # Another command's rejection on the same topic looks the same: our own
                # acceptance, reported right after it, overrules it.
                view.tentative = True
        elif event == "command" and code == "unsupported" and cid == ours:
            self._set(view, REFUSED, f"unsupported: {doc.get('detail', '')}")
        elif event in ("hw", "power") and code in FAULT_CODES:
            if doc.get("slot") == f"emergency:{ours}":
                view.faults.append(f"{code}: {doc.get('detail', '')}")
        elif self.expect.mode in ("emergency", "test") and event == "emergency" and cid == ours:
            self._emergency(view, code, doc)
        elif self.expect.mode == "cancel" and event == "emergency":
            self._cancel(view, code, doc)
        elif self.expect.mode in ("live", "live-stop") and event == "live":
            self._live(view, code, doc)

    def _ours(self, doc: dict[str, Any]) -> bool:
        if doc.get("topic") != self.expect.topic:
            return False
        try:
            return parse_rfc3339(str(doc.get("ts"))) >= self.expect.sent_at - REJECTION_SLACK
        except ValueError:
            return True

    def _emergency(self, view: View, code: object, doc: dict[str, Any]) -> None:
        detail = str(doc.get("detail", ""))
        sounding_final = self.expect.mode == "emergency"  # a test waits for its as-run
        if code == "emergency-fetching":
            self._set(view, FETCHING, "fetching its clip before it sounds", final=False)
        elif code in ("emergency-started", "emergency-repeated"):
            view.repetitions = max(view.repetitions, _int(doc.get("repetition")))
            zones = ",".join(str(z) for z in doc.get("zones") or [])
            heard = f"repetition {view.repetitions} of {doc.get('of')}"
            self._set(view, SOUNDED, f"{heard}, volume {doc.get('volume')}, zones {zones}",
                      final=sounding_final)  # fmt: skip
        elif code == "emergency-ended":
            reason = str(doc.get("reason") or "")
            played = f"played {_float(doc.get('played_s')):.1f} s"
            if reason.startswith("cancelled by"):
                self._set(view, CANCELLED, f"{reason}, {played}", final=sounding_final)
            elif view.repetitions or _float(doc.get("played_s")) > 0:
                self._set(view, SOUNDED, f"{doc.get('outcome')}: {reason or 'played out'}, "
                          f"{played}", final=sounding_final)  # fmt: skip
            else:
                self._set(view, FAILED, f"{doc.get('outcome')}: {reason}", final=sounding_final)
        elif code == "emergency-silent":
            self._set(view, SILENT, detail)
        elif code in ("emergency-refused", "expired"):
            self._set(view, REFUSED, f"{code}: {detail}")

    def _cancel(self, view: View, code: object, doc: dict[str, Any]) -> None:
        cid = doc.get("id")
        if code == "emergency-ended" and cid == self.expect.references:
            if doc.get("reason") == f"cancelled by {self.expect.command_id}":
                played = _float(doc.get("played_s"))
                self._set(view, CANCELLED, f"{cid} stopped ({doc.get('outcome')}, had played "
                          f"{played:.1f} s)")  # fmt: skip
            else:
                self._set(view, NOT_ON, f"{cid} had ended: {doc.get('outcome')}, "
                          f"{doc.get('reason') or 'played out'}")  # fmt: skip
        elif code == "cancel-unmatched" and cid == self.expect.command_id:
            self._set(view, NOT_ON, str(doc.get("detail", "")))

    def _live(self, view: View, code: object, doc: dict[str, Any]) -> None:
        cid, reason = doc.get("id"), str(doc.get("reason") or doc.get("detail") or "")
        if self.expect.mode == "live-stop":
            # live-stopped names the live_start it ended; a refusal of our stop means there was
            # nothing (or not that relay) on, which is what a stop wants.
            by_us = reason == f"stopped by {self.expect.command_id}"
            if code == "live-stopped" and (by_us or cid == self.expect.references):
                self._set(view, STOPPED, f"{cid} off: {reason}")
            elif code == "live-refused" and cid == self.expect.command_id:
                self._set(view, NOT_ON, reason)
            return
        if cid != self.expect.command_id:
            return
        if code in ("live-started", "live-resumed"):
            self._set(view, SOUNDED, f"{code}: {doc.get('url') or ''}".rstrip(": "))
        elif code == "live-refused":
            self._set(view, REFUSED, reason)
        elif code in ("live-fallback", "live-stopped"):
            self._set(view, FAILED, f"{code}: {reason}")
        elif code == "live-stalled":
            self._set(view, ACCEPTED, f"stalled: {reason}", final=False)

    def _asrun(self, view: View, payload: bytes) -> None:
        slot = f"emergency:{self.expect.command_id}"
        try:
            doc = _json(_verified_asrun(payload, view.record))
        except _Refuse as exc:
            unverified = _unverified_body(payload)
            if unverified is not None and unverified.get("slot") == slot:
                self._set(view, FAIL, f"its as-run does not verify: {exc}")
            return
        if doc is None or doc.get("slot") != slot or self._repeat(view, "asrun", doc):
            return
        view.heard = view.online = True
        view.asrun = doc
        if self.expect.mode == "test":
            reasons, facts = judge_test(view, self.expect)
            self._set(view, FAIL if reasons else PASS, "; ".join(reasons or facts))

    def _set(self, view: View, result: str, detail: str, *, final: bool = True) -> None:
        if self.expect.mode == "test" and final and result not in (PASS, FAIL):
            # A test that did not sound (refused, silent, failed) has failed, and says why.
            result, detail = FAIL, f"{result}: {detail}"
        view.result, view.detail, view.final, view.tentative = result, detail, final, False

    def _silence(self, view: View) -> str:
        if view.heard:
            return "online, but sent nothing about this command"
        if view.online is False:
            return "offline (its last state on the broker says so)"
        if view.online:
            return "its last state says online, but it sent nothing during the wait"
        return "nothing from it during the wait, and no state on the broker (never connected?)"


def judge_test(view: View, expect: Expect) -> tuple[list[str], list[str]]:
    """(reasons it failed, facts it passed on) of a test broadcast's as-run and inputs."""
    record = view.asrun or {}
    reasons: list[str] = []
    outcome = record.get("outcome")
    if outcome != "complete":
        reasons.append(f"outcome {outcome}: {record.get('reason') or 'no reason given'}")
    played = _float(record.get("played_s"))
    # Short of the clip's length: said only of a play that ran (a failed fetch says enough).
    ran = outcome in ("complete", "partial", "preempted")
    if ran and expect.sound_s is not None and played < 0.9 * expect.sound_s - 0.5:
        reasons.append(f"played {played:.1f} s of {expect.sound_s:.1f} s")
    if record.get("relay_ok") is False:
        reasons.append("the relays did not read back as switched")
    if record.get("amp_power_ok") is False:
        reasons.append("no amplifier power sensed")
    level = record.get("output_level_db")
    source = view.level_source or "level"
    if isinstance(level, int | float) and level < expect.min_level_db:
        reasons.append(f"output {level:.1f} dBFS ({source}) below {expect.min_level_db:.0f} dBFS")
    reasons += view.faults
    for name, value in sorted((view.inputs or {}).items()):
        if value is False:
            reasons.append(f"input {name} absent at its last heartbeat")
    level_text = "no level" if level is None else f"{_float(level):.1f} dBFS ({source})"
    facts = [
        f"{outcome}, played {played:.1f} s",
        level_text,
        "relays " + {True: "ok", False: "failed", None: "not read back"}[record.get("relay_ok")],
        "amp " + {True: "ok", False: "off", None: "not sensed"}[record.get("amp_power_ok")],
    ]
    if record.get("clock_trusted") is False:
        facts.append("station clock untrusted")
    return reasons, facts


def _json(payload: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _unverified_body(payload: bytes) -> dict[str, Any] | None:
    try:
        return _json(dsse.parse_envelope(payload, len(payload) + 1).body)
    except Rejected:
        return None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


# -- the wait and the table --------------------------------------------------------------------


def wait(
    link: Link, tracker: Tracker, wait_s: float, out: TextIO,
    monotonic: Callable[[], float] = time.monotonic,
) -> None:  # fmt: skip
    """Feed the tracker until every station answered or ``wait_s`` passed, printing each change."""
    start = monotonic()
    deadline = start + wait_s
    grace: float | None = None
    while True:
        if tracker.done():
            if not tracker.tentative():
                break
            # A refusal tied to us by topic and time alone: give the station's next reports
            # (an acceptance of ours would follow at once) a moment before believing it.
            grace = grace or monotonic() + TENTATIVE_GRACE_S
            deadline = min(deadline, grace)
        left = deadline - monotonic()
        if left <= 0:
            break
        message = link.next_message(min(left, 0.5))
        if message is None:
            continue
        changed = tracker.feed(*message)
        if changed is not None:
            print(f"{monotonic() - start:6.1f} s  {changed.station:<28} {changed.result:<10} "
                  f"{changed.detail}", file=out, flush=True)  # fmt: skip
    tracker.close()


def render(tracker: Tracker) -> str:
    """The final table and a summary line."""
    rows = [("station", "result", "detail")] + [
        (v.station, v.result, v.detail) for v in tracker.views.values()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{a.ljust(widths[0])}  {b.ljust(widths[1])}  {c}".rstrip() for a, b, c in rows]
    good = sum(tracker.ok(v) for v in tracker.views.values())
    counts: dict[str, int] = {}
    for view in tracker.views.values():
        counts[view.result] = counts.get(view.result, 0) + 1
    spread = ", ".join(f"{n} {result}" for result, n in sorted(counts.items()))
    want = "/".join(sorted(SUCCESS[tracker.expect.mode]))
    lines.append(f"{good} of {len(tracker.views)} stations {want} ({spread})")
    return "\n".join(lines)
