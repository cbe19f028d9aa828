"""The signing log: what it records, that every kind of tampering is found at the right line,
and that two officers signing at the same moment still leave one intact chain."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from agent import keyfiles
from agent.core import dsse
from province.signer import SignerError, open_signer
from province.signing import sign_body, signed_record
from province.signing_log import (
    GENESIS,
    Signed,
    SigningLogError,
    append,
    entry_hash,
    log_path,
    verify_log,
)
from tests.harness.trust import command_body

NOW = datetime(2026, 11, 22, 8, 30, tzinfo=UTC)
KEYID = "ab" * 32


def signed(label: str, issuer: str = "25") -> Signed:
    body = json.dumps({"kind": "playlist", "issuer": issuer, "label": label}).encode()
    return Signed(
        kind="playlist",
        payload_type="application/vnd.loa.playlist+json",
        issuer=issuer,
        target="25",
        label=label,
        body=body,
        envelope=b"envelope of " + body,
        keyids=(KEYID,),
        signers=(f"file:/keys/playlist.key ({label})",),
    )


def write_log(path: Path, count: int) -> list[bytes]:
    for n in range(1, count + 1):
        append(path, signed(f"v{n}"), NOW, host="desk", user="officer")
    return path.read_bytes().splitlines(keepends=True)


def test_entries_record_what_was_signed_and_chain(tmp_path: Path) -> None:
    path = log_path(tmp_path / "home")  # the home does not exist yet: the log makes its directory
    first = append(path, signed("v1"), NOW, host="desk", user="officer")
    second = append(path, signed("v2", issuer="08230"), NOW)

    doc = json.loads(path.read_bytes().splitlines()[0])
    assert list(doc) == [
        "seq", "ts", "kind", "payload_type", "issuer", "target", "label", "body_sha256",
        "envelope_sha256", "keyids", "signers", "host", "user", "prev", "hash",
    ]  # fmt: skip
    item = signed("v1")
    assert doc["seq"] == 1 and doc["ts"] == "2026-11-22T08:30:00Z"
    assert doc["body_sha256"] == hashlib.sha256(item.body).hexdigest()
    assert doc["envelope_sha256"] == hashlib.sha256(item.envelope).hexdigest()
    assert doc["keyids"] == [KEYID] and doc["signers"] == ["file:/keys/playlist.key (v1)"]
    assert (doc["host"], doc["user"], doc["prev"]) == ("desk", "officer", GENESIS)
    assert doc["hash"] == first.hash == entry_hash(doc)

    assert (second.seq, second.prev, second.issuer) == (2, first.hash, "08230")
    assert second.host and second.user  # taken from the machine when not given

    report = verify_log(path)
    assert report.ok and report.broken_line is None
    assert [e.label for e in report.entries] == ["v1", "v2"]
    assert report.head == second.hash


def test_an_empty_log_is_intact_and_a_missing_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "signing-log.jsonl"
    missing = verify_log(path)
    assert not missing.ok and "does not exist" in str(missing.problem)
    path.write_bytes(b"")
    empty = verify_log(path)
    assert empty.ok and empty.entries == () and empty.head == GENESIS


def test_a_file_signer_is_named_in_the_log_by_path_and_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = keyfiles.generate()
    keyfiles.save_private(tmp_path / "c08230.key", key)
    monkeypatch.chdir(tmp_path)
    signer = open_signer("file:c08230.key")  # relative, and in the form describe() writes
    assert signer.keyid == keyfiles.keyid(key) and signer.public_raw() == dsse.public_raw(key)
    fingerprint = keyfiles.fingerprint(signer.keyid)
    assert signer.describe() == f"file:{tmp_path / 'c08230.key'} ({fingerprint})"
    assert open_signer(str(tmp_path / "c08230.key")).keyid == signer.keyid

    body = json.dumps(command_body(id="x")).encode()
    envelope = sign_body(body, [signer])
    record = signed_record(body, envelope, [signer])
    subject = (record.kind, record.issuer, record.target, record.label)
    assert subject == ("command", "25", "25/08230", "x")
    assert record.keyids == (signer.keyid,) and record.signers == (signer.describe(),)

    with pytest.raises(SignerError, match="not available in this build"):
        open_signer("pkcs11:token=loa;object=root1")


def edit_label(lines: list[bytes]) -> list[bytes]:
    doc = json.loads(lines[1])
    doc["label"] = "v99"
    return [lines[0], json.dumps(doc).encode() + b"\n", *lines[2:]]


def edit_and_rehash(lines: list[bytes]) -> list[bytes]:
    doc = json.loads(lines[1])
    doc["label"] = "v99"
    doc["hash"] = entry_hash(doc)
    return [lines[0], json.dumps(doc).encode() + b"\n", *lines[2:]]


def renumber_after_delete(lines: list[bytes]) -> list[bytes]:
    doc = json.loads(lines[2])
    doc["seq"] = 2
    doc["hash"] = entry_hash(doc)
    return [lines[0], json.dumps(doc).encode() + b"\n", *lines[3:]]


TAMPERING: dict[str, tuple[Callable[[list[bytes]], list[bytes]], int, str]] = {
    "edited": (edit_label, 2, "line 2 was edited"),
    "edited and rehashed": (edit_and_rehash, 3, "line 3 does not chain"),
    "deleted": (lambda ls: [ls[0], *ls[2:]], 2, "entry 2 was deleted"),
    "first deleted": (lambda ls: ls[1:], 1, "entry 1 was deleted"),
    "two deleted": (lambda ls: [ls[0], *ls[3:]], 2, "entry 2-3 was deleted"),
    "deleted, renumbered": (renumber_after_delete, 2, "line 2 does not chain"),
    "swapped": (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], 2, "entry 2 is at line 3"),
    "moved back": (lambda ls: [ls[0], ls[1], ls[3], ls[2], ls[4]], 3, "reordered"),
    "duplicated": (lambda ls: [*ls[:3], ls[1], *ls[3:]], 4, "repeats entry 2"),
    "truncated": (lambda ls: [*ls[:4], ls[4][:40]], 5, "line 5 is truncated"),
    "newline cut": (lambda ls: [*ls[:4], ls[4][:-1]], 5, "line 5 is truncated"),
    "garbage": (lambda ls: [*ls[:2], b"{not json\n", *ls[3:]], 3, "not a signing-log entry"),
    "duplicate key": (
        lambda ls: [ls[0], ls[1].replace(b'{"seq":2,', b'{"seq":2,"seq":2,'), *ls[2:]],
        2,
        "duplicate",
    ),
    "blank line": (lambda ls: [ls[0], b"\n", *ls[1:]], 2, "line 2 is empty"),
}


@pytest.mark.parametrize("case", TAMPERING, ids=list(TAMPERING))
def test_tampering_is_found_at_the_first_broken_line(tmp_path: Path, case: str) -> None:
    tamper, line, message = TAMPERING[case]
    path = tmp_path / "signing-log.jsonl"
    lines = write_log(path, 5)
    path.write_bytes(b"".join(tamper(lines)))

    report = verify_log(path)

    assert not report.ok
    assert report.broken_line == line, report.problem
    assert message in str(report.problem)
    # Everything before the break is still reported, and only that.
    assert [e.seq for e in report.entries] == list(range(1, line))


def test_cutting_whole_lines_off_the_end_shows_only_against_the_recorded_head(
    tmp_path: Path,
) -> None:
    path = tmp_path / "signing-log.jsonl"
    lines = write_log(path, 4)
    registered = verify_log(path).head  # what the officer wrote into the paper register
    path.write_bytes(b"".join(lines[:3]))

    report = verify_log(path)

    assert report.ok  # a hash chain cannot see its own tail cut off ...
    assert report.head != registered  # ... the head kept elsewhere can
    assert registered not in {e.hash for e in report.entries}


@pytest.mark.parametrize("damage", ["truncated", "edited"])
def test_append_refuses_a_damaged_tail_and_leaves_the_log_alone(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "signing-log.jsonl"
    lines = write_log(path, 2)
    last = lines[1][:30] if damage == "truncated" else lines[1].replace(b'"v2"', b'"v9"')
    path.write_bytes(lines[0] + last)
    before = path.read_bytes()

    with pytest.raises(SigningLogError, match="log --verify"):
        append(path, signed("v3"), NOW)

    assert path.read_bytes() == before


def append_many(path: str, who: str, count: int, barrier: Barrier) -> None:
    barrier.wait()  # both processes start appending at the same moment
    for n in range(count):
        append(Path(path), signed(f"{who}-{n}"), NOW, host=who, user=who)


def test_concurrent_appends_from_two_processes_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "signing-log.jsonl"
    count = 150
    # spawn: a fresh interpreter per officer, as two loa-province commands would be.
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    officers = [
        ctx.Process(target=append_many, args=(str(path), who, count, barrier))
        for who in ("an", "binh")
    ]
    for process in officers:
        process.start()
    for process in officers:
        process.join(timeout=120)
    assert [p.exitcode for p in officers] == [0, 0]

    report = verify_log(path)

    assert report.ok, report.problem
    assert [e.seq for e in report.entries] == list(range(1, 2 * count + 1))
    for who in ("an", "binh"):
        mine = [e.label for e in report.entries if e.user == who]
        assert mine == [f"{who}-{n}" for n in range(count)]  # each officer's order is kept
