"""A hostile corpus for the station's trust core: forged, malformed, replayed and oversized
envelopes, each with the section 8 code it must get.

Every expectation is a string literal written beside its case from PROTOCOL.md and the project's
decisions in ``docs/protocol.md``; nothing here asks the code under test what to expect. The
corpus is deterministic: test keys from fixed seeds (``tests/harness/trust.py``), fixed times,
``random.Random`` with fixed seeds for the offsets of bit flips, Ed25519's deterministic
signatures. ``build()`` makes it in memory (the tests); ``main()`` writes it to a directory as
files and a manifest (for people and for other implementations).

The timeline of a case, which ``tests/unit/test_hostile_corpus.py`` follows:

1. a station ``25/08230/08230-01`` is provisioned at ``NOW`` with ``keyring`` (default the
   golden ``keyring-v1.json``);
2. every envelope of ``prelude`` is ingested and must be accepted;
3. ``KNOWN_GOOD`` (province playlist v5) is ingested and must be accepted;
4. the wall clock is set to ``wall`` and the time floor raised to ``floor`` when given, and the
   kernel stops vouching for the clock when ``clock_untrusted``;
5. the case's ``data`` arrives (on ``topic`` when given, else as ``loa-agent ingest`` gives it)
   and must be rejected with ``expect``, changing nothing.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.core import dsse
from tests.harness.trust import (
    PAYLOAD,
    STATION,
    body_bytes,
    command_body,
    emergency_body,
    envelope,
    keyid,
    keyring_body,
    playlist_body,
    public_hex,
    test_key,
)

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)  # 17:00 in Hanoi: tests/harness/clock.py's start
ISSUED = "2026-11-22T08:00:00+07:00"  # nine hours before NOW
FAR = "2036-01-01T00:00:00+07:00"  # far enough for a real station's real clock too
MiB = 1024 * 1024
KiB = 1024

KNOWN_GOOD = envelope("playlist", playlist_body(version=5), "playlist")
KNOWN_GOOD_TOPIC = "loa/v1/25/playlist/25"
UNDECODABLE_TOPIC = "loa/v1/25/playlist/25"

# PROTOCOL.md section 8: the verdict codes, and keyring-expired (docs/protocol.md, step 9).
SECTION8_CODES = (
    "too-large", "bad-envelope", "wrong-payload-type", "bad-signature", "unknown-key",
    "threshold-not-met", "schema", "out-of-scope", "wrong-audience", "clock-untrusted",
    "expired", "not-yet-valid", "rollback", "version-conflict", "version-gap", "replay",
    "keyring-expired",
)  # fmt: skip

# A keyring that expires nine days after NOW; its 30-day grace is over at AFTER_GRACE.
SHORT_KEYRING = envelope(
    "keyring", keyring_body(expires="2026-12-01T00:00:00+07:00"), "root1", "root2"
)
AFTER_GRACE = "2027-01-15T00:00:00Z"
ED25519_L = 2**252 + 27742317777372353535851937790883648493
_NAME = re.compile(r"\A[a-z0-9][a-z0-9-]{0,79}\Z")


@dataclass(frozen=True, kw_only=True)
class Case:
    """One hostile envelope and the verdict it must get (see the module docstring)."""

    name: str
    data: bytes
    expect: str
    note: str
    family: str
    topic: str | None = None
    prelude: list[bytes] = field(default_factory=list)
    clock_untrusted: bool = False  # the kernel no longer vouches for the clock (section 9)
    keyring: bytes | None = None  # provisioned instead of keyring-v1.json
    wall: str | None = None  # the wall clock when the case arrives (RFC 3339)
    floor: str | None = None  # the time floor a trusted clock persisted before the case
    fixed_now: bool = False  # the verdict holds at NOW only (a real clock would differ)

    @property
    def special_clock(self) -> bool:
        """Needs a clock or trust a running station on real time cannot be given."""
        return (
            self.clock_untrusted
            or self.fixed_now
            or self.keyring is not None
            or self.wall is not None
            or self.floor is not None
        )


# --- bodies ----------------------------------------------------------------------------------


def p6(**changes: Any) -> dict[str, Any]:
    """The province playlist v6: accepted over v5 unless the case breaks something."""
    return playlist_body(**{"version": 6, **changes})


def stop(id: str = "h-stop", **changes: Any) -> dict[str, Any]:
    return command_body(**{"id": id, "issued_at": ISSUED, "expires": FAR, **changes})


def emergency(id: str = "h-emergency", **changes: Any) -> dict[str, Any]:
    return emergency_body(**{"id": id, "issued_at": ISSUED, "expires": FAR, **changes})


def beacon(ts: str = "2026-11-22T16:59:00+07:00", **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": "time", "schema": 1, "province": "25", "ts": ts}
    doc.update(changes)
    return doc


def keyring_with_roots(version: int, roots: list[str], threshold: int) -> dict[str, Any]:
    """keyring-v1's body at ``version`` with the root role made of the named test keys."""
    doc = keyring_body(version)
    for name in roots:
        doc["keys"].setdefault(
            keyid(name), {"scheme": "ed25519", "public": public_hex(name), "scope": ["25"]}
        )
    doc["roles"]["root"] = {"keyids": [keyid(n) for n in roots], "threshold": threshold}
    used = {k for role in doc["roles"].values() for k in role["keyids"]}
    doc["keys"] = {k: v for k, v in doc["keys"].items() if k in used}
    return doc


SLOT: dict[str, Any] = playlist_body()["slots"][0]
MEDIA: dict[str, Any] = playlist_body()["media"]["news"]
STORM: dict[str, Any] = emergency_body()["media"]


def slot(**changes: Any) -> dict[str, Any]:
    return {**SLOT, **changes}


def media(**changes: Any) -> dict[str, Any]:
    return {**MEDIA, **changes}


def dated_slot(**changes: Any) -> dict[str, Any]:
    doc = {k: v for k, v in SLOT.items() if k != "days"}
    return {**doc, "dates": ["2026-11-23"], **changes}


def without(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != key}


# --- envelope surgery ------------------------------------------------------------------------


def _set_payload_type(payload_type: str, doc: dict[str, Any]) -> None:
    doc["payloadType"] = payload_type


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def load(data: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(data)
    return doc


def dump(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def edit(data: bytes, change: Callable[[dict[str, Any]], object]) -> bytes:
    doc = load(data)
    change(doc)
    return dump(doc)


def body_of(data: bytes) -> bytes:
    return base64.b64decode(load(data)["payload"])


def with_body(data: bytes, body: bytes) -> bytes:
    """The envelope with another body under its old signatures."""
    return edit(data, lambda d: d.update(payload=b64(body)))


def with_payload(data: bytes, payload: Any) -> bytes:
    return edit(data, lambda d: d.update(payload=payload))


def sig_of(data: bytes, index: int = 0) -> bytes:
    return base64.b64decode(load(data)["signatures"][index]["sig"])


def with_sig(data: bytes, raw: bytes, index: int = 0) -> bytes:
    return edit(data, lambda d: d["signatures"][index].update(sig=b64(raw)))


def with_field(data: bytes, index: int, **changes: Any) -> bytes:
    return edit(data, lambda d: d["signatures"][index].update(changes))


def flip(raw: bytes, offset: int, bit: int) -> bytes:
    out = bytearray(raw)
    out[offset] ^= 1 << bit
    return bytes(out)


def signature(
    payload_type: str, body: bytes, signer: str, key_of: str | None = None
) -> dict[str, str]:
    """A signature entry over PAE(payload_type, body) by ``signer``, labelled ``key_of``."""
    sig = test_key(signer).sign(dsse.pae(payload_type, body))
    return {"keyid": keyid(key_of or signer), "sig": b64(sig)}


def raw_envelope(payload_type: Any, payload: Any, signatures: Any) -> bytes:
    return dump({"payloadType": payload_type, "payload": payload, "signatures": signatures})


def signed(kind: str, body: bytes, *signers: str, payload_type: str | None = None) -> bytes:
    """Body bytes signed as ``kind`` (or under ``payload_type``) by the named keys."""
    ptype = payload_type or PAYLOAD[kind]
    return raw_envelope(ptype, b64(body), [signature(ptype, body, s) for s in signers])


def padded(data: bytes, total: int) -> bytes:
    """JSON text grown to exactly ``total`` bytes with trailing whitespace (still valid JSON)."""
    text = data.rstrip()
    assert len(text) <= total
    return text + b" " * (total - len(text))


def splice(body: bytes, old: bytes, new: bytes) -> bytes:
    """``body`` with the one occurrence of ``old`` replaced: for text json.dumps cannot write."""
    assert body.count(old) == 1, (old, body[:80])
    return body.replace(old, new)


# --- the corpus ------------------------------------------------------------------------------


class Corpus:
    """Collects cases, refusing duplicate or file-unsafe names."""

    def __init__(self) -> None:
        self.cases: list[Case] = []
        self._names: set[str] = set()
        self.family = ""

    def add(self, name: str, data: bytes, expect: str, note: str, **extra: Any) -> None:
        assert _NAME.match(name), name
        assert name not in self._names, name
        assert expect in SECTION8_CODES, expect
        self._names.add(name)
        self.cases.append(
            Case(name=name, data=data, expect=expect, note=note, family=self.family, **extra)
        )


def tampered_bodies(c: Corpus) -> None:
    """Bit flips in signed bodies at many offsets: a role key's signature no longer verifies."""
    c.family = "tampered-body"
    rng = random.Random(0x10A_0001)
    targets = [
        ("playlist", envelope("playlist", p6(), "playlist"), 24),
        ("stop", envelope("command", stop("h-tamper"), "command"), 8),
        ("keyring", envelope("keyring", keyring_body(2), "root1", "root2"), 5),
        ("beacon", envelope("time", beacon(), "maintenance"), 3),
    ]
    for label, data, count in targets:
        body = body_of(data)
        offsets = sorted({0, len(body) - 1, *rng.sample(range(1, len(body) - 1), count - 2)})
        for offset in offsets:
            bit = rng.randrange(8)
            c.add(
                f"flip-{label}-body-{offset}-bit-{bit}",
                with_body(data, flip(body, offset, bit)),
                "bad-signature",
                f"{label} body, byte {offset} bit {bit} flipped after signing",
            )
    # An emergency whose action is still readable: the emergency key's signature fails.
    data = envelope("command", emergency("h-tamper-e"), "emergency")
    body = body_of(data)
    start = body.index(b"storm.mp3")
    for offset in (start, start + 4, start + 8):
        c.add(
            f"flip-emergency-media-url-{offset}",
            with_body(data, flip(body, offset, 1)),
            "bad-signature",
            "emergency media URL changed after signing",
        )
    c.add(
        "forged-playlist-body-v6-under-v5-signature",
        with_body(KNOWN_GOOD, body_bytes(p6())),
        "bad-signature",
        "v5's signature carried over to a v6 body",
    )
    # The action cannot be read any more, so the role is unknown (docs/protocol.md): the key that
    # signed is a key of a command-capable role and its signature failed: bad-signature.
    unreadable = [
        ("emergency-action", emergency("h-tamper-e2"), "emergency", b'"emergency"', b'"emergencx"'),
        ("emergency-json", emergency("h-tamper-e3"), "emergency", b'"action":', b'"action";'),
        (
            "resync-action",
            stop("h-tamper-r", action="resync"),
            "maintenance",
            b'"resync"',
            b'"resynk"',
        ),
    ]
    for label, doc, signer, old, new in unreadable:
        data = envelope("command", doc, signer)
        c.add(
            f"flip-{label}-unreadable",
            with_body(data, splice(body_of(data), old, new)),
            "bad-signature",
            f"action unreadable after tampering; the {signer} key's signature failed "
            "(section 8 step 4: a role key's signature failed)",
        )


def tampered_signatures(c: Corpus) -> None:
    """Signature bytes changed, truncated, extended, malleated, borrowed or mislabelled."""
    c.family = "tampered-signature"
    good = envelope("playlist", p6(), "playlist")
    sig = sig_of(good)
    for byte in (0, 1, 31, 32, 62, 63):
        c.add(
            f"sig-playlist-byte-{byte}-flipped",
            with_sig(good, flip(sig, byte, byte % 8)),
            "bad-signature",
            f"signature byte {byte} flipped ({'R' if byte < 32 else 'S'} half)",
        )
    s_plus_l = (int.from_bytes(sig[32:], "little") + ED25519_L).to_bytes(32, "little")
    variants = {
        "zeroed": (bytes(64), "64 zero bytes"),
        "all-ff": (b"\xff" * 64, "64 bytes 0xff"),
        "truncated-63": (sig[:63], "63 bytes: wrong length counts as a failed signature"),
        "extended-65": (sig + b"\x00", "65 bytes: wrong length counts as a failed signature"),
        "empty": (b"", "an empty signature"),
        "malleated-s-plus-l": (sig[:32] + s_plus_l, "S + L: the non-canonical twin of S"),
        "borrowed-from-v5": (sig_of(KNOWN_GOOD), "v5's valid signature on the v6 body"),
    }
    for label, (raw, note) in variants.items():
        c.add(f"sig-playlist-{label}", with_sig(good, raw), "bad-signature", note)
    body = body_of(good)
    forged = raw_envelope(
        PAYLOAD["playlist"],
        b64(body),
        [signature(PAYLOAD["playlist"], body, "stranger", "playlist")],
    )
    c.add(
        "sig-stranger-under-playlist-keyid", forged, "bad-signature", "keyid names the playlist key"
    )
    stranger = load(envelope("playlist", p6(), "stranger"))["signatures"]
    c.add(
        "sig-bad-beside-stranger",
        edit(with_sig(good, flip(sig, 5, 0)), lambda d: d["signatures"].extend(stranger)),
        "bad-signature",
        "a stranger's signature does not hide the failed role signature",
    )
    cmd = envelope("command", stop("h-sig"), "command")
    c.add("sig-stop-flipped", with_sig(cmd, flip(sig_of(cmd), 9, 3)), "bad-signature", "command")
    emer = envelope("command", emergency("h-sig-e"), "emergency")
    c.add("sig-emergency-zeroed", with_sig(emer, bytes(64)), "bad-signature", "emergency")
    resync = envelope("command", stop("h-sig-r", action="resync"), "maintenance")
    c.add("sig-resync-flipped", with_sig(resync, flip(sig_of(resync), 40, 7)), "bad-signature", "")
    beat = envelope("time", beacon(), "maintenance")
    c.add("sig-beacon-flipped", with_sig(beat, flip(sig_of(beat), 1, 1)), "bad-signature", "time")
    ring = envelope("keyring", keyring_body(2), "root1", "root2")
    c.add(
        "sig-keyring-second-root-flipped",
        with_sig(ring, flip(sig_of(ring, 1), 3, 2), 1),
        "bad-signature",
        "root1 valid, root2 failed: 1 of 2 and a failed role signature",
    )
    c.add(
        "sig-keyring-keyids-swapped",
        edit(
            ring,
            lambda d: (
                d["signatures"][0].update(keyid=keyid("root2")),
                d["signatures"][1].update(keyid=keyid("root1")),
            ),
        ),
        "bad-signature",
        "each root signature labelled as the other root",
    )
    c.add(
        "sig-keyring-root1-copied-as-root2",
        with_sig(ring, sig_of(ring, 0), 1),
        "bad-signature",
        "root1's signature bytes labelled root2",
    )


def payload_types(c: Corpus) -> None:
    """Payload types that are not one of Loa's four down types (step 3)."""
    c.family = "payload-type"
    good = envelope("playlist", p6(), "playlist")
    playlist = PAYLOAD["playlist"]
    types = {
        "text-plain": "text/plain",
        "json": "application/json",
        "asrun": "application/vnd.loa.asrun+json",
        "heartbeat": "application/vnd.loa.heartbeat+json",
        "trailing-space": playlist + " ",
        "leading-space": " " + playlist,
        "trailing-newline": playlist + "\n",
        "capitalised": "A" + playlist[1:],
        "upper-suffix": playlist.replace("+json", "+JSON"),
        "with-parameter": playlist + "; charset=utf-8",
        "nul-suffix": playlist + "\x00",
        "rtl-override": "\u202e" + playlist,
        "zero-width": playlist + "\u200b",
        "cyrillic-a": playlist.replace("playlist", "pl\u0430ylist"),
        "dsse-golden": "http://example.com/HelloWorld",
        "versioned": playlist.replace("playlist", "playlist.v2"),
        "100-chars": "application/" + "x" * 88,
    }
    for label, ptype in types.items():
        c.add(
            f"type-{label}",
            edit(good, partial(_set_payload_type, ptype)),
            "wrong-payload-type",
            f"payloadType {ptype!r}",
        )
    # A release is a down type since docs/releases.md; the test keyring has no release role, so
    # a playlist relabelled as one is trusted by no key: step 4, not step 3.
    c.add(
        "type-release",
        edit(good, lambda d: d.update(payloadType="application/vnd.loa.release+json")),
        "threshold-not-met",
        "a release with no release role in the keyring: no key may sign it",
    )
    body = body_bytes(p6())
    c.add(
        "type-text-plain-signed-so",
        signed("playlist", body, "playlist", payload_type="text/plain"),
        "wrong-payload-type",
        "a valid signature under text/plain",
    )
    c.add(
        "type-json-by-stranger",
        signed("playlist", body, "stranger", payload_type="application/json"),
        "wrong-payload-type",
        "step 3 comes before signatures",
    )


def type_confusion(c: Corpus) -> None:
    """Signatures made under one payload type presented under another, and bodies of one kind
    validly signed under another kind's type."""
    c.family = "type-confusion"
    stop_body = body_bytes(stop("h-confused"))
    commune_stop = body_bytes(stop("h-confused-c", issuer="08230"))
    playlist_bytes = body_bytes(p6())
    ring = body_bytes(keyring_body(2))
    emer = body_bytes(emergency("h-confused-e"))
    relabelled = [
        ("playlist-sig-on-command", "playlist", "command", stop_body, ["command"]),
        ("commune-playlist-sig-on-command", "playlist", "command", commune_stop, ["commune-08230"]),
        ("command-sig-on-playlist", "command", "playlist", playlist_bytes, ["playlist"]),
        ("playlist-sig-on-keyring", "playlist", "keyring", ring, ["root1", "root2"]),
        ("time-sig-on-emergency", "time", "command", emer, ["emergency"]),
        ("keyring-sig-on-playlist", "keyring", "playlist", playlist_bytes, ["playlist"]),
        ("command-sig-on-time", "command", "time", body_bytes(beacon()), ["maintenance"]),
    ]
    for label, signed_as, shown_as, body, signers in relabelled:
        sigs = [signature(PAYLOAD[signed_as], body, s) for s in signers]
        c.add(
            f"confusion-{label}",
            raw_envelope(PAYLOAD[shown_as], b64(body), sigs),
            "bad-signature",
            f"signed as {signed_as}, presented as {shown_as}: PAE binds the type",
        )
    playlist = PAYLOAD["playlist"]
    odd = {
        "golden-type": dsse.pae("http://example.com/HelloWorld", playlist_bytes),
        "release-type": dsse.pae("application/vnd.loa.release+json", playlist_bytes),
        "raw-body": playlist_bytes,
        "pae-length-off-by-one": b"DSSEv1 %d %s %d %s"
        % (len(playlist), playlist.encode(), len(playlist_bytes) + 1, playlist_bytes),
        "pae-empty-type": dsse.pae("", playlist_bytes),
        "json-of-envelope": dump({"payloadType": playlist, "payload": b64(playlist_bytes)}),
    }
    for label, message in odd.items():
        sig = {"keyid": keyid("playlist"), "sig": b64(test_key("playlist").sign(message))}
        c.add(
            f"confusion-sig-over-{label}",
            raw_envelope(playlist, b64(playlist_bytes), [sig]),
            "bad-signature",
            "the playlist key signed something other than PAE(playlist type, body)",
        )
    valid_but_wrong_kind = [
        ("command-body-as-playlist", "playlist", stop_body, ["playlist"], "schema"),
        ("playlist-body-as-command", "command", playlist_bytes, ["command"], "schema"),
        ("playlist-body-as-keyring", "keyring", playlist_bytes, ["root1", "root2"], "schema"),
        ("command-body-as-time", "time", stop_body, ["maintenance"], "schema"),
        ("time-body-as-command", "command", body_bytes(beacon()), ["maintenance"], "schema"),
        ("keyring-body-as-playlist", "playlist", ring, ["playlist"], "schema"),
        ("emergency-body-as-playlist", "playlist", emer, ["commune-08230"], "schema"),
    ]
    for label, kind, body, signers, expect in valid_but_wrong_kind:
        c.add(
            f"kind-{label}",
            signed(kind, body, *signers),
            expect,
            "validly signed by a role key of the type, but the body is another kind",
        )
    c.add(
        "kind-playlist-body-as-command-by-playlist-key",
        signed("command", playlist_bytes, "playlist"),
        "threshold-not-met",
        "no action to read and the playlist key is in no command-capable role",
    )


def unknown_keys(c: Corpus) -> None:
    """Signatures by no key of the keyring, or whose keyid names none."""
    c.family = "unknown-key"
    for kind, doc in [
        ("playlist", p6()),
        ("command", stop("h-unknown")),
        ("command", emergency("h-unknown-e")),
        ("keyring", keyring_body(2)),
        ("time", beacon()),
    ]:
        label = doc.get("action", kind)
        c.add(
            f"unknown-stranger-{label}",
            envelope(kind, doc, "stranger"),
            "unknown-key",
            f"{label} signed by a key no keyring names",
        )
    c.add("unknown-future-key", envelope("playlist", p6(), "new1"), "unknown-key", "new1 not yet")
    c.add(
        "unknown-keyring-by-future-roots",
        envelope("keyring", keyring_with_roots(2, ["new1", "new2", "new3"], 2), "new1", "new2"),
        "unknown-key",
        "new roots only: v1 knows none of them",
    )
    good = envelope("playlist", p6(), "playlist")
    keyids: dict[str, Any] = {
        "empty": "",
        "null": None,
        "upper-hex": keyid("playlist").upper(),
        "path-traversal": "../../etc/passwd",
        "nul": keyid("playlist")[:10] + "\x00",
        "rtl": "\u202e" + keyid("playlist")[:60],
        "zeros": "0" * 64,
        "stranger": keyid("stranger"),
        "truncated": keyid("playlist")[:63],
    }
    for label, value in keyids.items():
        c.add(
            f"unknown-keyid-{label}",
            with_field(good, 0, keyid=value),
            "unknown-key",
            "a valid playlist signature whose keyid selects no keyring key (no trial keys)",
        )
    c.add(
        "unknown-keyid-missing",
        edit(good, lambda d: d["signatures"][0].pop("keyid")),
        "unknown-key",
        "signatures without keyid are ignored",
    )
    many = load(envelope("playlist", p6(), "stranger"))["signatures"] * 16
    c.add(
        "unknown-16-strangers",
        edit(good, lambda d: d.update(signatures=many)),
        "unknown-key",
        "the maximum number of signatures, all by a stranger",
    )
    no_action = without(stop("h-unknown-na"), "action")
    c.add(
        "unknown-command-without-action",
        envelope("command", no_action, "stranger"),
        "unknown-key",
        "no schema verdict for an anonymous sender",
    )


def outside_role(c: Corpus) -> None:
    """Keyring keys signing outside their role; rotations short of the root threshold."""
    c.family = "outside-role"
    cases = [
        ("playlist-by-emergency", "playlist", p6(), ["emergency"]),
        ("playlist-by-root", "playlist", p6(), ["root1"]),
        ("playlist-by-command", "playlist", p6(), ["command"]),
        ("playlist-by-maintenance", "playlist", p6(), ["maintenance"]),
        ("stop-by-emergency", "command", stop("h-role-1"), ["emergency"]),
        ("stop-by-playlist", "command", stop("h-role-2"), ["playlist"]),
        ("stop-by-maintenance", "command", stop("h-role-3"), ["maintenance"]),
        ("emergency-by-command", "command", emergency("h-role-4"), ["command"]),
        ("emergency-by-commune", "command", emergency("h-role-5"), ["commune-08230"]),
        ("emergency-by-playlist", "command", emergency("h-role-6"), ["playlist"]),
        (
            "cancel-by-command",
            "command",
            stop("h-role-7", action="cancel", references="h-x"),
            ["command"],
        ),
        ("resync-by-command", "command", stop("h-role-8", action="resync"), ["command"]),
        (
            "relay-test-by-emergency",
            "command",
            stop("h-role-9", action="relay_test"),
            ["emergency"],
        ),
        (
            "set-volume-by-root",
            "command",
            stop("h-role-10", action="set_volume", volume=50),
            ["root1"],
        ),
        ("beacon-by-playlist", "time", beacon(), ["playlist"]),
        ("beacon-by-root", "time", beacon(), ["root1"]),
        ("keyring-by-playlist-and-command", "keyring", keyring_body(2), ["playlist", "command"]),
        (
            "action-less-command-by-playlist",
            "command",
            without(stop("h-role-11"), "action"),
            ["playlist"],
        ),
    ]
    for label, kind, doc, signers in cases:
        c.add(
            f"role-{label}",
            envelope(kind, doc, *signers),
            "threshold-not-met",
            "a keyring key, but not of the role this payload needs",
        )
    c.family = "threshold"
    v2 = keyring_body(2)
    one_root = load(envelope("keyring", v2, "root1"))["signatures"]
    shortfalls = [
        ("one-root", envelope("keyring", v2, "root1"), "1 of 2 root signatures"),
        ("root1-twice", envelope("keyring", v2, "root1", "root1"), "a key counts once"),
        (
            "root1-sixteen-times",
            edit(envelope("keyring", v2, "root1"), lambda d: d.update(signatures=one_root * 16)),
            "the same signature entry sixteen times",
        ),
        ("root1-and-stranger", envelope("keyring", v2, "root1", "stranger"), "stranger ignored"),
        ("root1-and-playlist", envelope("keyring", v2, "root1", "playlist"), "playlist not root"),
        (
            "new-roots-one-old",
            envelope(
                "keyring",
                keyring_with_roots(2, ["new1", "new2", "new3"], 2),
                "root1",
                "new1",
                "new2",
            ),
            "the new roots agree, only one old root does",
        ),
        (
            "replace-root3-old-and-new",
            envelope(
                "keyring", keyring_with_roots(2, ["root1", "root2", "new1"], 2), "root1", "new1"
            ),
            "v1 sees only root1",
        ),
        (
            "raise-threshold-to-3-two-sign",
            envelope(
                "keyring", keyring_with_roots(2, ["root1", "root2", "root3"], 3), "root1", "root2"
            ),
            "v2's own root threshold is 3",
        ),
        (
            "single-root-role",
            envelope("keyring", keyring_with_roots(2, ["root1"], 1), "root1"),
            "v2 needs 1 root, v1 still needs 2",
        ),
    ]
    for label, data, note in shortfalls:
        c.add(f"threshold-keyring-{label}", data, "threshold-not-met", note)


def scopes(c: Corpus) -> None:
    """Keys signing as an issuer, or for a target, their scope does not allow (step 6)."""
    c.family = "out-of-scope"
    commune = "commune-08230"
    cases = [
        ("commune-key-as-province", "playlist", p6(target="25/08230"), commune),
        ("commune-key-other-commune", "playlist", p6(issuer="08230", target="25/08231"), commune),
        ("commune-key-province-target", "playlist", p6(issuer="08230", target="25"), commune),
        (
            "commune-key-as-other-commune",
            "playlist",
            p6(issuer="08231", target="25/08231"),
            commune,
        ),
        (
            "commune-key-other-name-own-target",
            "playlist",
            p6(issuer="08231", target="25/08230"),
            commune,
        ),
        ("province-key-as-commune", "playlist", p6(issuer="08230", target="25/08230"), "playlist"),
        ("province-key-other-province", "playlist", p6(target="26"), "playlist"),
        ("province-key-as-other-province", "playlist", p6(issuer="26", target="26"), "playlist"),
        ("commune-key-stop-as-province", "command", stop("h-scope-1"), commune),
        (
            "commune-key-stop-province-target",
            "command",
            stop("h-scope-2", issuer="08230", target="25"),
            commune,
        ),
        (
            "commune-key-stop-other-station",
            "command",
            stop("h-scope-3", issuer="08230", target="25/08231/08231-01"),
            commune,
        ),
        ("beacon-other-province", "time", beacon(province="26"), "maintenance"),
        (
            "emergency-other-province",
            "command",
            emergency("h-scope-4", issuer="26", target="26"),
            "emergency",
        ),
    ]
    for label, kind, doc, signer in cases:
        c.add(f"scope-{label}", envelope(kind, doc, signer), "out-of-scope", f"signed by {signer}")
    other = keyring_body(2, province="26")
    for entry in other["keys"].values():
        entry["scope"] = ["26"]
    c.add(
        "scope-keyring-other-province",
        envelope("keyring", other, "root1", "root2"),
        "out-of-scope",
        "v1's roots are scoped to 25 and may not vouch for 26",
    )
    commune_roots = keyring_body(2)
    for name in ("root1", "root2", "root3"):
        commune_roots["keys"][keyid(name)]["scope"] = ["25/08230"]
    c.add(
        "scope-keyring-roots-scoped-to-commune",
        envelope("keyring", commune_roots, "root1", "root2"),
        "out-of-scope",
        "a keyring is issued by the province: its roots must be scoped to it",
    )


def audiences(c: Corpus) -> None:
    """Envelopes for someone else, or on a topic that is not theirs (step 7)."""
    c.family = "wrong-audience"
    targets = [
        ("playlist-other-commune", "playlist", p6(target="25/08231"), "playlist"),
        ("playlist-sibling-station", "playlist", p6(target="25/08230/08230-02"), "playlist"),
        ("playlist-station-elsewhere", "playlist", p6(target="25/08231/08231-01"), "playlist"),
        (
            "commune-playlist-sibling-station",
            "playlist",
            p6(issuer="08230", target="25/08230/08230-02"),
            "commune-08230",
        ),
        ("stop-sibling-station", "command", stop("h-aud-1", target="25/08230/08230-02"), "command"),
        ("stop-other-commune", "command", stop("h-aud-2", target="25/08231"), "command"),
        (
            "emergency-other-commune",
            "command",
            emergency("h-aud-3", target="25/08231"),
            "emergency",
        ),
    ]
    for label, kind, doc, signer in targets:
        c.add(f"audience-{label}", envelope(kind, doc, signer), "wrong-audience", "not for us")
    good = envelope("playlist", p6(), "playlist")
    stop_env = envelope("command", stop("h-aud-4"), "command")
    ring = envelope("keyring", keyring_body(2), "root1", "root2")
    beat = envelope("time", beacon(), "maintenance")
    topics = [
        ("playlist-on-commune-topic", good, "loa/v1/25/08230/playlist/25"),
        ("playlist-on-station-topic", good, f"loa/v1/{STATION}/playlist/25"),
        ("playlist-on-issuer-mismatch", good, "loa/v1/25/playlist/08230"),
        ("playlist-on-time-topic", good, "loa/v1/25/time"),
        ("playlist-on-keyring-topic", good, "loa/v1/25/keyring/6"),
        ("playlist-on-cmd-topic", good, "loa/v1/25/cmd"),
        ("stop-on-province-cmd", stop_env, "loa/v1/25/cmd"),
        ("stop-on-station-cmd", stop_env, f"loa/v1/{STATION}/cmd"),
        ("stop-on-playlist-topic", stop_env, "loa/v1/25/08230/playlist/25"),
        ("keyring-v2-on-v3-topic", ring, "loa/v1/25/keyring/3"),
        ("keyring-v2-on-zero-padded-topic", ring, "loa/v1/25/keyring/02"),
        ("beacon-on-playlist-topic", beat, "loa/v1/25/playlist/25"),
    ]
    for label, data, topic in topics:
        c.add(
            f"audience-{label}",
            data,
            "wrong-audience",
            f"arrived on {topic}, not the section 2 topic of its body",
            topic=topic,
        )


def clocks(c: Corpus) -> None:
    """An untrusted clock: only emergency, cancel and time beacons may pass (section 9)."""
    c.family = "clock-untrusted"
    unsynced = [
        ("playlist", envelope("playlist", p6(), "playlist")),
        ("stop", envelope("command", stop("h-clock-1"), "command")),
        (
            "set-volume",
            envelope("command", stop("h-clock-2", action="set_volume", volume=40), "command"),
        ),
        ("relay-test", envelope("command", stop("h-clock-3", action="relay_test"), "command")),
        (
            "live-start",
            envelope(
                "command",
                stop(
                    "h-clock-4", action="live_start", stream={"url": "https://live.example.vn/25"}
                ),
                "command",
            ),
        ),
        ("resync", envelope("command", stop("h-clock-5", action="resync"), "maintenance")),
        ("keyring", envelope("keyring", keyring_body(2), "root1", "root2")),
        ("emergency-before-floor", envelope("command", emergency("h-clock-6"), "emergency")),
        (
            "cancel-before-floor",
            envelope("command", stop("h-clock-7", action="cancel", references="h-x"), "emergency"),
        ),
    ]
    for label, data in unsynced:
        c.add(
            f"clock-unsynced-{label}",
            data,
            "clock-untrusted",
            "the kernel does not vouch for the clock",
            clock_untrusted=True,
        )
    below = "2026-11-01T00:00:00Z"
    for label, data in [
        ("playlist", envelope("playlist", p6(), "playlist")),
        ("stop", envelope("command", stop("h-clock-8"), "command")),
        ("keyring", envelope("keyring", keyring_body(2), "root1", "root2")),
        ("emergency", envelope("command", emergency("h-clock-9"), "emergency")),
    ]:
        c.add(
            f"clock-below-floor-{label}",
            data,
            "clock-untrusted",
            "a clock below the persisted time floor is untrusted even when configured trusted",
            wall=below,
        )


def windows(c: Corpus) -> None:
    """Validity windows in the past or the future (step 9)."""
    c.family = "time-window"
    expired = [
        (
            "playlist-october",
            "playlist",
            p6(valid_from="2026-10-01T00:00:00+07:00", expires="2026-10-15T00:00:00+07:00"),
            "playlist",
        ),
        ("playlist-expires-now", "playlist", p6(expires="2026-11-22T17:00:00+07:00"), "playlist"),
        (
            "playlist-1970",
            "playlist",
            p6(
                issued_at="1970-01-01T00:00:00Z",
                valid_from="1970-01-01T00:00:00Z",
                expires="1970-01-02T00:00:00Z",
            ),
            "playlist",
        ),
        (
            "stop-a-second-ago",
            "command",
            stop("h-win-1", expires="2026-11-22T16:59:59+07:00"),
            "command",
        ),
        ("stop-expires-now", "command", stop("h-win-2", expires="2026-11-22T10:00:00Z"), "command"),
        (
            "stop-other-offset",
            "command",
            stop("h-win-3", expires="2026-11-21T23:59:59.999999-10:00"),
            "command",
        ),
        (
            "emergency",
            "command",
            emergency("h-win-4", expires="2026-11-22T09:00:00+07:00"),
            "emergency",
        ),
        ("keyring", "keyring", keyring_body(2, expires="2026-11-01T00:00:00+07:00"), "root1+root2"),
        (
            "keyring-expires-now",
            "keyring",
            keyring_body(2, expires="2026-11-22T10:00:00Z"),
            "root1+root2",
        ),
    ]
    for label, kind, doc, signers in expired:
        c.add(f"expired-{label}", envelope(kind, doc, *signers.split("+")), "expired", "past")
    future = [
        ("playlist-2035", "playlist", p6(issued_at="2035-01-01T00:00:00+07:00"), "playlist"),
        ("stop-2035", "command", stop("h-win-5", issued_at="2035-01-01T00:00:00+07:00"), "command"),
        (
            "emergency-2035",
            "command",
            emergency("h-win-6", issued_at="2035-01-01T00:00:00Z"),
            "emergency",
        ),
        ("beacon-2035", "time", beacon(ts="2035-01-01T00:00:00+07:00"), "maintenance"),
    ]
    for label, kind, doc, signer in future:
        c.add(f"future-{label}", envelope(kind, doc, signer), "not-yet-valid", "issued in 2035")
    skew = [
        ("playlist-6-min", "playlist", p6(issued_at="2026-11-22T17:06:00+07:00"), "playlist"),
        (
            "stop-skew-plus-1s",
            "command",
            stop("h-win-7", issued_at="2026-11-22T10:05:01Z"),
            "command",
        ),
        ("beacon-6-min", "time", beacon(ts="2026-11-22T17:06:00+07:00"), "maintenance"),
    ]
    for label, kind, doc, signer in skew:
        c.add(
            f"future-{label}",
            envelope(kind, doc, signer),
            "not-yet-valid",
            "beyond the 300 s allowed skew at NOW",
            fixed_now=True,
        )


def expired_keyring(c: Corpus) -> None:
    """The keyring expired and its 30-day grace is over: only a successor keyring passes."""
    c.family = "keyring-expired"
    late = "2027-01-14T08:00:00+07:00"
    until = "2027-01-20T00:00:00+07:00"
    cases = [
        ("playlist", envelope("playlist", p6(), "playlist"), {}),
        ("stop", envelope("command", stop("h-kx-1"), "command"), {}),
        (
            "emergency",
            envelope("command", emergency("h-kx-2", issued_at=late, expires=until), "emergency"),
            {},
        ),
        (
            "resync",
            envelope("command", stop("h-kx-3", action="resync", issued_at=late), "maintenance"),
            {},
        ),
        ("beacon", envelope("time", beacon(ts="2027-01-15T06:59:00+07:00"), "maintenance"), {}),
        (
            "emergency-untrusted-clock",
            envelope("command", emergency("h-kx-4", issued_at=late, expires=until), "emergency"),
            {"clock_untrusted": True, "floor": "2027-01-14T00:00:00Z"},
        ),
        (
            "beacon-untrusted-clock",
            envelope("time", beacon(ts="2027-01-15T06:59:00+07:00"), "maintenance"),
            {"clock_untrusted": True, "floor": "2027-01-14T00:00:00Z"},
        ),
    ]
    for label, data, extra in cases:
        c.add(
            f"keyring-expired-{label}",
            data,
            "keyring-expired",
            "keyring expired 2026-12-01, grace over 2026-12-31; every non-keyring envelope fails",
            keyring=SHORT_KEYRING,
            wall=AFTER_GRACE,
            **extra,
        )


def versions(c: Corpus) -> None:
    """Rollback, equal-version swaps and version gaps (step 10)."""
    c.family = "rollback"
    commune_v5 = envelope(
        "playlist", playlist_body(version=5, issuer="08230", target="25/08230"), "commune-08230"
    )
    station_v5 = envelope("playlist", playlist_body(version=5, target=STATION), "playlist")
    ring_v2 = envelope("keyring", keyring_body(2), "root1", "root2")
    c.add("rollback-v4", envelope("playlist", playlist_body(version=4), "playlist"), "rollback", "")
    c.add("rollback-v1", envelope("playlist", playlist_body(version=1), "playlist"), "rollback", "")
    c.add(
        "rollback-v4-freshly-issued",
        envelope("playlist", playlist_body(version=4, issued_at=ISSUED), "playlist"),
        "rollback",
        "a newer issued_at does not make an older version newer",
    )
    c.add(
        "rollback-commune-stream",
        envelope(
            "playlist", playlist_body(version=3, issuer="08230", target="25/08230"), "commune-08230"
        ),
        "rollback",
        "commune stream at v5",
        prelude=[commune_v5],
    )
    c.add(
        "rollback-station-stream",
        envelope("playlist", playlist_body(version=4, target=STATION), "playlist"),
        "rollback",
        "station stream at v5",
        prelude=[station_v5],
    )
    c.add(
        "rollback-keyring-v1-after-v2",
        envelope("keyring", keyring_body(1), "root1", "root2"),
        "rollback",
        "",
        prelude=[ring_v2],
    )
    c.family = "version-conflict"
    other_v5 = playlist_body(version=5, slots=[slot(start="07:00")])
    same_v5 = playlist_body(version=5)
    reordered = dict(reversed(list(same_v5.items())))
    swaps = [
        ("other-slot", body_bytes(other_v5), "equal version, other schedule"),
        ("indented", json.dumps(same_v5, indent=2).encode(), "same content, other bytes"),
        ("keys-reordered", body_bytes(reordered), "same content, other key order"),
        ("trailing-newline", body_bytes(same_v5) + b"\n", "one byte more"),
        ("ascii-escaped", json.dumps(same_v5, separators=(",", ":")).encode(), "\\u escapes"),
    ]
    for label, body, note in swaps:
        c.add(
            f"conflict-v5-{label}", signed("playlist", body, "playlist"), "version-conflict", note
        )
    c.add(
        "conflict-commune-stream",
        envelope(
            "playlist",
            playlist_body(
                version=5, issuer="08230", target="25/08230", slots=[slot(start="07:00")]
            ),
            "commune-08230",
        ),
        "version-conflict",
        "",
        prelude=[commune_v5],
    )
    c.add(
        "conflict-keyring-v1",
        envelope("keyring", keyring_body(1, expires="2035-01-01T00:00:00+07:00"), "root1", "root2"),
        "version-conflict",
        "keyring v1 with another expiry",
    )
    c.add(
        "conflict-keyring-v2",
        envelope("keyring", keyring_body(2, expires="2035-01-01T00:00:00+07:00"), "root1", "root2"),
        "version-conflict",
        "",
        prelude=[ring_v2],
    )
    c.family = "version-gap"
    for version in (3, 10, 2**53 - 1):
        c.add(
            f"gap-keyring-v{version}",
            envelope("keyring", keyring_body(version), "root1", "root2"),
            "version-gap",
            "keyring versions are applied in order",
        )
    c.add(
        "gap-keyring-v4-after-v2",
        envelope("keyring", keyring_body(4), "root1", "root2"),
        "version-gap",
        "",
        prelude=[ring_v2],
    )
    c.add(
        "gap-keyring-v3-after-grace",
        envelope("keyring", keyring_body(3), "root1", "root2"),
        "version-gap",
        "keyrings are exempt from keyring-expired, not from order",
        keyring=SHORT_KEYRING,
        wall=AFTER_GRACE,
    )


def replays(c: Corpus) -> None:
    """A command id is accepted once (step 10)."""
    c.family = "replay"
    first = envelope("command", stop("h-replay"), "command")
    again = [
        ("same-bytes", first, "the same envelope again"),
        (
            "commune-key",
            envelope("command", stop("h-replay", issuer="08230"), "commune-08230"),
            "same id, other signer",
        ),
        (
            "other-action",
            envelope("command", stop("h-replay", action="relay_test"), "command"),
            "same id, other action",
        ),
        (
            "station-target",
            envelope("command", stop("h-replay", target=STATION), "command"),
            "same id, narrower target",
        ),
        (
            "later-expiry",
            envelope("command", stop("h-replay", expires="2036-06-01T00:00:00+07:00"), "command"),
            "same id, longer life",
        ),
        (
            "urlsafe-payload",
            with_payload(first, base64.urlsafe_b64encode(body_of(first)).decode().rstrip("=")),
            "same body in unpadded URL-safe base64",
        ),
    ]
    for label, data, note in again:
        c.add(f"replay-{label}", data, "replay", note, prelude=[first])
    emer = envelope("command", emergency("h-replay-e"), "emergency")
    c.add("replay-emergency", emer, "replay", "", prelude=[emer])


def sizes(c: Corpus) -> None:
    """Size caps (step 1 for the envelope, right after step 3 for the body)."""
    c.family = "too-large"
    good = envelope("playlist", p6(), "playlist")
    over = 3 * MiB + 1
    c.add("size-envelope-whitespace", padded(good, over), "too-large", "3 MiB + 1 byte")
    c.add("size-envelope-garbage", b"x" * over, "too-large", "step 1 comes before parsing")
    c.add(
        "size-envelope-by-stranger",
        padded(envelope("playlist", p6(), "stranger"), over),
        "too-large",
        "",
    )
    bodies = [
        ("playlist", body_bytes(p6()), 2 * MiB, ["playlist"]),
        ("playlist-by-stranger", body_bytes(p6()), 2 * MiB, ["stranger"]),
        ("command", body_bytes(stop("h-size")), 64 * KiB, ["command"]),
        ("keyring", body_bytes(keyring_body(2)), 256 * KiB, ["root1", "root2"]),
        ("time", body_bytes(beacon()), 4 * KiB, ["maintenance"]),
    ]
    for label, body, cap, signers in bodies:
        kind = label.split("-")[0]
        c.add(
            f"size-body-{label}",
            signed(kind, padded(body, cap + 1), *signers),
            "too-large",
            f"body one byte over the {kind} cap, checked before signatures",
        )
    cap_xml = emergency("h-size-cap", cap_xml="x" * 65536)
    c.add(
        "size-body-emergency-cap-xml",
        envelope("command", cap_xml, "emergency"),
        "too-large",
        "cap_xml at its schema maximum (64 KiB) cannot fit a 64 KiB command body",
    )
    c.add(
        "size-unknown-type-large-body",
        signed(
            "playlist",
            padded(body_bytes(p6()), 2 * MiB + 100_000),
            "playlist",
            payload_type="text/plain",
        ),
        "wrong-payload-type",
        "step 3 before the body cap: no cap is known for an unknown type",
    )


def envelope_json(c: Corpus) -> None:
    """Envelopes that are not strict JSON or not DSSE's shape (step 2)."""
    c.family = "envelope-json"
    good = envelope("playlist", p6(), "playlist")
    text = good.decode()
    doc = load(good)
    ptype, payload, sigs = doc["payloadType"], doc["payload"], doc["signatures"]
    sig0 = json.dumps(sigs[0])
    raw: dict[str, bytes] = {
        "empty": b"",
        "whitespace": b" \n\t ",
        "null": b"null",
        "array": b"[]",
        "string": b'"envelope"',
        "number": b"0",
        "empty-object": b"{}",
        "not-json": b"{not json",
        "bom": b"\xef\xbb\xbf" + good,
        "utf16": text.encode("utf-16"),
        "trailing-garbage": good.rstrip() + b"x",
        "two-envelopes": good + good,
        "single-quotes": good.replace(b'"', b"'"),
        "comment": b"/* hi */" + good,
        "trailing-comma": good.rstrip().rstrip(b"}").rstrip() + b",}",
        "array-of-envelope": b"[" + good + b"]",
        "deep-array-1e5": b"[" * 100_000 + b"]" * 100_000,
        "deep-open-1e5": b"[" * 100_000,
        "deep-object-5e4": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "deep-extra-field": good.rstrip()[:-1] + b',"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "nan-field": good.rstrip()[:-1] + b',"x":NaN}',
        "infinity-field": good.rstrip()[:-1] + b',"x":Infinity}',
        "minus-infinity-field": good.rstrip()[:-1] + b',"x":-Infinity}',
        "int-2-53-field": good.rstrip()[:-1] + b',"x":9007199254740992}',
        "int-minus-2-53-field": good.rstrip()[:-1] + b',"x":-9007199254740992}',
        "int-5000-digits": good.rstrip()[:-1] + b',"x":' + b"9" * 5000 + b"}",
        "float-1e400": good.rstrip()[:-1] + b',"x":1e400}',
        "dup-payload": raw_envelope_text(
            f'"payloadType":{json.dumps(ptype)},"payload":"e30=","payload":{json.dumps(payload)},'
            f'"signatures":{json.dumps(sigs)}'
        ),
        "dup-payload-type": raw_envelope_text(
            f'"payloadType":"text/plain","payloadType":{json.dumps(ptype)},'
            f'"payload":{json.dumps(payload)},"signatures":{json.dumps(sigs)}'
        ),
        "dup-signatures": raw_envelope_text(
            f'"payloadType":{json.dumps(ptype)},"payload":{json.dumps(payload)},'
            f'"signatures":[],"signatures":{json.dumps(sigs)}'
        ),
        "dup-keyid": raw_envelope_text(
            f'"payloadType":{json.dumps(ptype)},"payload":{json.dumps(payload)},'
            f'"signatures":[{{"keyid":"x",{sig0[1:]}]'
        ),
        "dup-sig": raw_envelope_text(
            f'"payloadType":{json.dumps(ptype)},"payload":{json.dumps(payload)},'
            f'"signatures":[{{"sig":"AAAA",{sig0[1:]}]'
        ),
        "dup-in-extra-field": good.rstrip()[:-1] + b',"x":{"a":1,"a":2}}',
        "lone-surrogate-type": good.replace(b'"application/', b'"\\ud800application/'),
        "lone-surrogate-keyid": good.replace(b'"keyid": "', b'"keyid": "\\udc00'),
        "invalid-utf8-keyid": good.replace(b'"keyid": "', b'"keyid": "\xff'),
        "invalid-utf8-extra": good.rstrip()[:-1] + b',"x":"\xc0\xaf"}',
        "control-char-in-string": good.replace(b'"keyid": "', b'"keyid": "\x01'),
    }
    for label, data in raw.items():
        c.add(f"envelope-{label}", data, "bad-envelope", "not strict JSON or not an envelope")
    shapes: dict[str, Callable[[dict[str, Any]], Any]] = {
        "no-payload-type": lambda d: d.pop("payloadType"),
        "payload-type-null": lambda d: d.update(payloadType=None),
        "payload-type-number": lambda d: d.update(payloadType=7),
        "payload-type-list": lambda d: d.update(payloadType=[ptype]),
        "payload-type-empty": lambda d: d.update(payloadType=""),
        "payload-type-101-chars": lambda d: d.update(payloadType="application/" + "x" * 89),
        "no-payload": lambda d: d.pop("payload"),
        "payload-null": lambda d: d.update(payload=None),
        "payload-number": lambda d: d.update(payload=5),
        "payload-list": lambda d: d.update(payload=[payload]),
        "payload-object": lambda d: d.update(payload={"b64": payload}),
        "no-signatures": lambda d: d.pop("signatures"),
        "signatures-empty": lambda d: d.update(signatures=[]),
        "signatures-17": lambda d: d.update(signatures=sigs * 17),
        "signatures-object": lambda d: d.update(signatures=sigs[0]),
        "signatures-string": lambda d: d.update(signatures="sig"),
        "signature-null": lambda d: d.update(signatures=[None]),
        "signature-string": lambda d: d.update(signatures=[sigs[0]["sig"]]),
        "signature-list": lambda d: d.update(signatures=[[sigs[0]["sig"]]]),
        "sig-missing": lambda d: d["signatures"][0].pop("sig"),
        "sig-null": lambda d: d["signatures"][0].update(sig=None),
        "sig-number": lambda d: d["signatures"][0].update(sig=12),
        "sig-201-chars": lambda d: d["signatures"][0].update(sig="A" * 200 + "="),
        "keyid-number": lambda d: d["signatures"][0].update(keyid=5),
        "keyid-list": lambda d: d["signatures"][0].update(keyid=[]),
        "keyid-129-chars": lambda d: d["signatures"][0].update(keyid="a" * 129),
        "keyid-10k": lambda d: d["signatures"][0].update(keyid="a" * 10_240),
    }
    for label, change in shapes.items():
        c.add(f"envelope-{label}", edit(good, change), "bad-envelope", "not DSSE's shape")


def raw_envelope_text(inner: str) -> bytes:
    return ("{" + inner + "}").encode()


def base64_variants(c: Corpus) -> None:
    """Base64 that is not in one of the accepted forms (docs/protocol.md: one spelling)."""
    c.family = "base64"
    body = body_bytes(p6())
    body += b" " * (-len(body) % 3 + 1)  # length % 3 == 1: two padding characters, 4 spare bits
    good = signed("playlist", body, "playlist")
    std = b64(body)
    url = base64.urlsafe_b64encode(body).decode().rstrip("=")
    assert std.endswith("==")
    # Bytes fb ef ff encode as "++//": a payload with both of standard base64's own letters.
    aligned = body[: len(body) - len(body) % 3]
    tricky_std = b64(aligned + b"\xfb\xef\xff  ")
    assert "++//" in tricky_std and tricky_std.endswith("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def bump(text: str, letters: str = alphabet) -> str:
        """Set the lowest unused bit of the last letter: same bytes, non-canonical text."""
        return text[:-1] + letters[letters.index(text[-1]) | 1]

    url_alphabet = alphabet[:62] + "-_"
    payloads = {
        "mixed-alphabets": tricky_std.replace("+", "-", 1),
        "mixed-alphabets-slash-underscore": tricky_std.replace("/", "_", 1),
        "std-unpadded-with-plus": tricky_std.rstrip("="),
        "triple-padding": std.rstrip("=") + "===",
        "quadruple-padding": std.rstrip("=") + "====",
        "one-pad-short": std[:-1],
        "padding-inside": std[:8] + "=" + std[8:],
        "non-canonical-std": bump(std.rstrip("=")) + "==",
        "non-canonical-urlsafe": bump(url, url_alphabet),
        "urlsafe-one-pad": url + "=",
        "mime-line-breaks": "\n".join(std[i : i + 76] for i in range(0, len(std), 76)),
        "space-inside": std[:40] + " " + std[40:],
        "impossible-length": url + "AAA",
        "only-padding": "=",
        "non-ascii-letter": std[:10] + "\u00e9" + std[11:],
        "fullwidth-letter": std[:10] + "\uff21" + std[11:],
        "percent-encoded": std.replace("=", "%3D"),
        "data-uri": "data:application/json;base64," + std,
    }
    for label, text in payloads.items():
        c.add(
            f"b64-payload-{label}",
            with_payload(good, text),
            "bad-envelope",
            "payload base64 not in an accepted form",
        )
    sig_std = b64(sig_of(good))
    assert sig_std.endswith("==")
    sig_texts = {
        "mixed-alphabets": "+" + sig_std[1:10] + "-" + sig_std[11:],
        "non-canonical": bump(sig_std.rstrip("=")) + "==",
        "triple-padding": sig_std.rstrip("=") + "===",
        "space-inside": sig_std[:20] + " " + sig_std[20:],
        "non-ascii": sig_std[:5] + "\u00e9" + sig_std[6:],
    }
    for label, text in sig_texts.items():
        c.add(
            f"b64-sig-{label}",
            with_field(good, 0, sig=text),
            "bad-envelope",
            "signature base64 not in an accepted form",
        )


def body_json(c: Corpus) -> None:
    """Validly signed bodies that are not strict JSON, or not one object (step 5)."""
    c.family = "body-json"
    base = body_bytes(p6())
    deep = b"[" * 100_000 + b"]" * 100_000
    whole: dict[str, bytes] = {
        "empty": b"",
        "not-json": b"{playlist",
        "array": b"[]",
        "string": b'"playlist"',
        "number": b"6",
        "null": b"null",
        "true": b"true",
        "bom": b"\xef\xbb\xbf" + base,
        "utf16": base.decode().encode("utf-16"),
        "trailing-garbage": base + b"x",
        "two-objects": base + base,
        "single-quotes": base.replace(b'"', b"'"),
        "comment": b"// v6\n" + base,
        "deep-array-1e5": deep,
        "deep-object-5e4": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    }
    for label, body in whole.items():
        c.add(f"body-{label}", signed("playlist", body, "playlist"), "schema", "not one object")
    title = "Bản tin".encode()
    edits: dict[str, tuple[bytes, bytes]] = {
        "deep-in-media": (b'"media":{', b'"media":{"x":' + deep + b","),
        "nan-duration": (b'"duration_s":600.0', b'"duration_s":NaN'),
        "infinity-duration": (b'"duration_s":600.0', b'"duration_s":Infinity'),
        "minus-infinity-gap": (b'"gap_s":2', b'"gap_s":-Infinity'),
        "float-1e400": (b'"duration_s":600.0', b'"duration_s":1e400'),
        "version-2-53": (b'"version":6', b'"version":9007199254740992'),
        "version-minus-2-53": (b'"version":6', b'"version":-9007199254740992'),
        "version-5000-digits": (b'"version":6', b'"version":' + b"9" * 5000),
        "bytes-1e30": (b'"bytes":4800514', b'"bytes":' + b"1" + b"0" * 30),
        "dup-version": (b'"version":6', b'"version":6,"version":7'),
        "dup-kind": (b'"kind":"playlist"', b'"kind":"playlist","kind":"command"'),
        "dup-media-name": (b'"media":{', b'"media":{"news":{},'),
        "dup-media-url": (b'"url":', b'"url":"file:///etc/passwd","url":'),
        "dup-slot-id": (b'"id":"morning"', b'"id":"morning","id":"evening"'),
        "dup-slot-days": (b'"days":', b'"days":["mon"],"days":'),
        "lone-surrogate-title": (title, b"\\ud800"),
        "lone-surrogate-key": (b'"media":{', b'"media":{"\\udc00":{},'),
        "invalid-utf8-title": (title, b"B\xffn tin"),
        "overlong-utf8-slash": (b'"id":"morning"', b'"id":"..\xc0\xafetc"'),
        "cesu-surrogate-bytes": (title, b"\xed\xa0\x80"),
    }
    for label, (old, new) in edits.items():
        body = splice(base, old, new)
        c.add(f"body-{label}", signed("playlist", body, "playlist"), "schema", "not strict JSON")
    cmd = body_bytes(stop("h-json"))
    commands: dict[str, tuple[bytes, bytes, str]] = {
        "dup-action": (b'"action":"stop"', b'"action":"stop","action":"emergency"', "command"),
        "dup-action-by-emergency": (
            b'"action":"stop"',
            b'"action":"emergency","action":"stop"',
            "emergency",
        ),
        "dup-command-id": (b'"id":"h-json"', b'"id":"h-json","id":"h-other"', "command"),
        "dup-target": (
            b'"target":"25/08230"',
            b'"target":"25/08231","target":"25/08230"',
            "command",
        ),
        "action-not-json": (b'"action":"stop"', b'"action":stop', "command"),
    }
    for label, (old, new, signer) in commands.items():
        c.add(
            f"body-{label}",
            signed("command", splice(cmd, old, new), signer),
            "schema",
            "a parser differential: the action cannot be read one way only",
        )
    ring = splice(
        body_bytes(keyring_body(2)),
        b'"roles":{',
        b'"roles":{"root":{"keyids":[],"threshold":1},',
    )
    beat = (
        b'{"kind":"time","schema":1,"province":"25",'
        b'"ts":"2035-01-01T00:00:00Z","ts":"2026-11-22T16:59:00+07:00"}'
    )
    others = [
        ("deep-command-3e4", "command", b"[" * 30_000 + b"]" * 30_000, ["command"]),
        ("deep-keyring-1e5", "keyring", deep, ["root1", "root2"]),
        ("deep-time-2e3", "time", b"[" * 2_000 + b"]" * 2_000, ["maintenance"]),
        ("dup-keyring-role", "keyring", ring, ["root1", "root2"]),
        ("dup-beacon-ts", "time", beat, ["maintenance"]),
    ]
    for label, kind, body, signers in others:
        c.add(f"body-{label}", signed(kind, body, *signers), "schema", "not strict JSON")


PLAYLIST_FIELDS = (
    "kind:string schema:integer issuer:string target:string version:integer issued_at:string "
    "valid_from:string expires:string timezone:string media:object slots:array"
)
COMMAND_FIELDS = (
    "kind:string schema:integer id:string issuer:string target:string issued_at:string "
    "expires:string action:string zones:array priority:integer volume:integer repeat:integer "
    "gap_s:number references:string stream:object"
)
KEYRING_FIELDS = (
    "kind:string schema:integer province:string version:integer expires:string keys:object "
    "roles:object live_hosts:array"
)


def typed(spec: str) -> dict[str, str]:
    """``"kind:string version:integer"`` as ``{"kind": "string", "version": "integer"}``."""
    return dict(item.split(":", 1) for item in spec.split())


def wrong_types(c: Corpus) -> None:
    """Every field of every body with values of the wrong JSON type, missing, or just past its
    bounds, validly signed (step 5)."""
    c.family = "field-types"
    by_type: dict[str, list[Any]] = {
        "string": [None, 25, True, [], {}],
        "integer": [None, "6", 6.5, True, [], {}],
        "number": [None, "2", True, []],
        "object": [None, [], "x", 1],
        "array": [None, {}, "x", 1],
    }

    def short(value: Any) -> str:
        if value is None:
            return "null"
        return "bool" if isinstance(value, bool) else type(value).__name__

    def sweep(
        prefix: str,
        kind: str,
        build: Callable[[str, Any], dict[str, Any]],
        fields: dict[str, str],
        signers: list[str],
    ) -> None:
        for name, json_type in fields.items():
            for value in by_type[json_type]:
                c.add(
                    f"{prefix}-{name.replace('_', '-')}-{short(value)}",
                    envelope(kind, build(name, value), *signers),
                    "schema",
                    f"{prefix} {name} = {json.dumps(value)}",
                )

    sweep("playlist", "playlist", lambda k, v: {**p6(), k: v}, typed(PLAYLIST_FIELDS), ["playlist"])
    sweep(
        "media", "playlist", lambda k, v: p6(media={"news": media(**{k: v})}),
        typed("url:string sha256:string bytes:integer duration_s:number title:string "
              "category:string"),
        ["playlist"],
    )  # fmt: skip
    sweep(
        "slot", "playlist", lambda k, v: p6(slots=[slot(**{k: v})]),
        typed("id:string start:string end:string days:array items:array priority:integer "
              "zones:array volume:integer gap_s:number"),
        ["playlist"],
    )  # fmt: skip
    sweep(
        "stop",
        "command",
        lambda k, v: {**stop("h-types"), k: v},
        typed(COMMAND_FIELDS),
        ["command"],
    )
    sweep(
        "emergency", "command", lambda k, v: {**emergency("h-types-e"), k: v},
        typed("media:object cap:object cap_xml:string"), ["emergency"],
    )  # fmt: skip
    sweep(
        "keyring", "keyring", lambda k, v: {**keyring_body(2), k: v}, typed(KEYRING_FIELDS),
        ["root1", "root2"],
    )  # fmt: skip
    sweep(
        "beacon", "time", lambda k, v: beacon(**{k: v}),
        typed("kind:string schema:integer province:string ts:string"), ["maintenance"],
    )  # fmt: skip
    c.family = "field-missing"
    required = {
        "playlist": (p6(), PLAYLIST_FIELDS, ["playlist"]),
        "command": (stop("h-missing"), COMMAND_FIELDS, ["command"]),
        "keyring": (keyring_body(2), KEYRING_FIELDS, ["root1", "root2"]),
        "time": (beacon(), "kind:string schema:integer province:string ts:string", ["maintenance"]),
    }
    optional = {"timezone", "zones", "priority", "volume", "repeat", "gap_s", "references",
                "stream", "live_hosts"}  # fmt: skip
    for kind, (doc, spec, signers) in required.items():
        for name in [n for n in typed(spec) if n not in optional]:
            c.add(
                f"missing-{kind}-{name.replace('_', '-')}",
                envelope(kind, without(doc, name), *signers),
                "schema",
                f"{kind} without {name}",
            )
    cap_without_status = {"identifier": "x", "sender": "y", "sent": ISSUED, "msgType": "Alert",
                          "scope": "Public"}  # fmt: skip
    no_root = without(keyring_body()["roles"], "root")
    nested_missing = [
        ("media-url", "playlist", p6(media={"news": without(MEDIA, "url")}), ["playlist"]),
        ("media-sha256", "playlist", p6(media={"news": without(MEDIA, "sha256")}), ["playlist"]),
        ("media-bytes", "playlist", p6(media={"news": without(MEDIA, "bytes")}), ["playlist"]),
        ("slot-id", "playlist", p6(slots=[without(SLOT, "id")]), ["playlist"]),
        ("slot-start", "playlist", p6(slots=[without(SLOT, "start")]), ["playlist"]),
        ("slot-items", "playlist", p6(slots=[without(SLOT, "items")]), ["playlist"]),
        ("slot-days-and-dates", "playlist", p6(slots=[without(SLOT, "days")]), ["playlist"]),
        ("emergency-media", "command", without(emergency("h-missing-e"), "media"), ["emergency"]),
        ("cancel-references", "command", stop("h-missing-c", action="cancel"), ["emergency"]),
        ("live-start-stream", "command", stop("h-missing-l", action="live_start"), ["command"]),
        ("set-volume-volume", "command", stop("h-missing-v", action="set_volume"), ["command"]),
        ("keyring-root-role", "keyring", keyring_body(2, roles=no_root), ["root1", "root2"]),
        (
            "cap-status",
            "command",
            emergency("h-missing-cap", cap=cap_without_status),
            ["emergency"],
        ),
    ]
    for label, kind, doc, signers in nested_missing:
        c.add(f"missing-{label}", envelope(kind, doc, *signers), "schema", "required field absent")
    c.family = "field-bounds"
    bounds = [
        ("playlist-version-0", p6(version=0)),
        ("playlist-version-minus-1", p6(version=-1)),
        ("playlist-schema-2", p6(schema=2)),
        ("playlist-extra-field", p6(extra="field")),
        ("media-bytes-0", p6(media={"news": media(bytes=0)})),
        ("media-bytes-over-2-gib", p6(media={"news": media(bytes=2**31 + 1)})),
        ("media-duration-0", p6(media={"news": media(duration_s=0)})),
        ("media-duration-over-a-day", p6(media={"news": media(duration_s=86400.5)})),
        ("media-title-201", p6(media={"news": media(title="t" * 201)})),
        ("media-category-unknown", p6(media={"news": media(category="weapon")})),
        ("media-sha256-upper", p6(media={"news": media(sha256=MEDIA["sha256"].upper())})),
        ("media-sha256-63", p6(media={"news": media(sha256=MEDIA["sha256"][:63])})),
        ("media-extra-field", p6(media={"news": media(path="/etc/passwd")})),
        ("media-5001-entries", p6(media={f"m{i}": MEDIA for i in range(5001)})),
        ("slot-priority-0", p6(slots=[slot(priority=0)])),
        ("slot-priority-61", p6(slots=[slot(priority=61)])),
        ("slot-priority-emergency", p6(slots=[slot(priority=100)])),
        ("slot-volume-101", p6(slots=[slot(volume=101)])),
        ("slot-volume-minus-1", p6(slots=[slot(volume=-1)])),
        ("slot-gap-minus", p6(slots=[slot(gap_s=-0.1)])),
        ("slot-gap-601", p6(slots=[slot(gap_s=600.5)])),
        ("slot-start-24", p6(slots=[slot(start="24:00")])),
        ("slot-start-one-digit", p6(slots=[slot(start="6:00")])),
        ("slot-start-60-min", p6(slots=[slot(start="06:60")])),
        ("slot-start-leap-second", p6(slots=[slot(start="06:00:60")])),
        ("slot-end-equals-start", p6(slots=[slot(end="06:00")])),
        ("slot-days-duplicate", p6(slots=[slot(days=["mon", "mon"])])),
        ("slot-days-unknown", p6(slots=[slot(days=["funday"])])),
        ("slot-days-empty", p6(slots=[slot(days=[])])),
        ("slot-days-and-dates", p6(slots=[slot(dates=["2026-11-23"])])),
        ("slot-dates-feb-30", p6(slots=[dated_slot(dates=["2026-02-30"])])),
        ("slot-dates-fullwidth", p6(slots=[dated_slot(dates=["\uff12\uff10\uff12\uff16-11-23"])])),
        ("slot-dates-short", p6(slots=[dated_slot(dates=["2026-1-1"])])),
        ("slot-zones-empty", p6(slots=[slot(zones=[])])),
        ("slot-zones-upper", p6(slots=[slot(zones=["ALL"])])),
        ("slot-zones-duplicate", p6(slots=[slot(zones=["all", "all"])])),
        ("slot-extra-field", p6(slots=[slot(shell="rm -rf /")])),
        ("slot-ids-not-unique", p6(slots=[slot(), slot(start="07:00")])),
        ("playlist-expires-before-valid", p6(expires="2026-10-01T00:00:00+07:00")),
        ("playlist-expires-equals-valid", p6(expires="2026-11-01T08:00:00+07:00")),
        ("time-feb-30", p6(valid_from="2026-02-30T00:00:00+07:00")),
        ("time-no-offset", p6(issued_at="2026-11-01T08:00:00")),
        ("time-space", p6(issued_at="2026-11-01 08:00:00+07:00")),
        ("time-lowercase-t", p6(issued_at="2026-11-01t08:00:00+07:00")),
        ("time-offset-24h", p6(issued_at="2026-11-01T08:00:00+24:00")),
        ("time-leap-second", p6(issued_at="2026-12-31T23:59:60Z")),
        ("time-month-13", p6(issued_at="2026-13-01T08:00:00+07:00")),
        ("time-year-0", p6(issued_at="0000-01-01T00:00:00Z")),
        ("time-fullwidth-digits", p6(issued_at="\uff12\uff10\uff12\uff16-11-01T08:00:00+07:00")),
        ("time-seven-decimals", p6(issued_at="2026-11-01T08:00:00.1234567+07:00")),
        ("time-41-chars", p6(issued_at="2026-11-01T08:00:00.123456+07:00" + " " * 9)),
    ]
    for label, doc in bounds:
        c.add(f"bound-{label}", envelope("playlist", doc, "playlist"), "schema", label)
    command_bounds = [
        ("stop-priority-101", stop("h-b-1", priority=101), "command"),
        ("stop-repeat-0", stop("h-b-2", repeat=0), "command"),
        ("stop-repeat-11", stop("h-b-3", repeat=11), "command"),
        ("stop-volume-101", stop("h-b-4", volume=101), "command"),
        (
            "stop-expires-before-issued",
            stop("h-b-5", expires="2026-11-22T07:00:00+07:00"),
            "command",
        ),
        ("stop-expires-equals-issued", stop("h-b-6", expires=ISSUED), "command"),
        ("stop-unknown-action", stop("h-b-7", action="shutdown"), "command"),
        ("stop-action-upper", stop("h-b-8", action="STOP"), "command"),
        ("stop-extra-field", stop("h-b-9", exec="/bin/sh"), "command"),
        ("stop-kind-playlist", stop("h-b-10", kind="playlist"), "command"),
        ("emergency-priority-89", emergency("h-b-11", priority=89), "emergency"),
        ("emergency-unknown-action-by-emergency", emergency("h-b-12", action="siren"), "emergency"),
        ("emergency-media-extra", emergency("h-b-13", media={**STORM, "exec": "x"}), "emergency"),
        (
            "emergency-cap-status",
            emergency(
                "h-b-14",
                cap={
                    "identifier": "x",
                    "sender": "y",
                    "sent": ISSUED,
                    "status": "Bogus",
                    "msgType": "Alert",
                    "scope": "Public",
                },
            ),
            "emergency",
        ),
        (
            "stream-format-wav",
            stop(
                "h-b-15",
                action="live_start",
                stream={"url": "https://live.example.vn/25", "format": "wav"},
            ),
            "command",
        ),
    ]
    for label, doc, signer in command_bounds:
        c.add(f"bound-{label}", envelope("command", doc, signer), "schema", label)
    keyring_bounds = [
        ("keyid-not-hash", "keyid is not the SHA-256 of its key"),
        ("role-names-unknown-key", "a role names a key the keyring lacks"),
        ("threshold-above-keys", "threshold 4 of 3 root keys"),
        ("threshold-0", "threshold 0"),
        ("scheme-rsa", "scheme rsa"),
        ("public-63-hex", "public key 63 hex digits"),
        ("scope-traversal", "scope ../../"),
        ("extra-role", "a role the schema does not know"),
        ("keys-empty", "no keys at all"),
        ("live-host-url", "live_hosts entry with a scheme"),
    ]
    for label, note in keyring_bounds:
        c.add(
            f"bound-keyring-{label}",
            envelope("keyring", broken_keyring(label), "root1", "root2"),
            "schema",
            note,
        )


def broken_keyring(label: str) -> dict[str, Any]:
    """Keyring v2 bodies with one structural fault each (names as in ``wrong_types``)."""
    doc = keyring_body(2)
    root3 = keyid("root3")
    match label:
        case "keyid-not-hash":
            doc["keys"]["0" * 64] = doc["keys"].pop(root3)
            doc["roles"]["root"]["keyids"] = [keyid("root1"), keyid("root2"), "0" * 64]
        case "role-names-unknown-key":
            doc["roles"]["playlist"]["keyids"].append(keyid("stranger"))
        case "threshold-above-keys":
            doc["roles"]["root"]["threshold"] = 4
        case "threshold-0":
            doc["roles"]["root"]["threshold"] = 0
        case "scheme-rsa":
            doc["keys"][root3]["scheme"] = "rsa"
        case "public-63-hex":
            doc["keys"][root3]["public"] = doc["keys"][root3]["public"][:63]
        case "scope-traversal":
            doc["keys"][keyid("playlist")]["scope"] = ["../../"]
        case "extra-role":
            doc["roles"]["admin"] = {"keyids": [keyid("root1")], "threshold": 1}
        case "keys-empty":
            doc["keys"] = {}
        case "live-host-url":
            doc["live_hosts"] = ["javascript:alert(1)"]
        case _:
            raise ValueError(label)
    return doc


HOSTILE_STRINGS: dict[str, str] = {
    "traversal": "../../etc/passwd",
    "dot-dot": "..",
    "leading-dot": ".hidden",
    "slash": "a/b",
    "backslash": "a\\b",
    "nul": "news\x00",
    "bell": "news\x07",
    "newline": "news\n",
    "tab": "ne\tws",
    "rtl-override": "\u202enews",
    "zero-width": "news\u200b",
    "fullwidth": "\uff4e\uff45\uff57\uff53",
    "empty": "",
    "space": "my news",
    "10k": "n" * 10_240,
    "65-chars": "n" * 65,
    "percent": "news%2F..",
    "url": "https://evil.example/x",
}


def hostile_strings(c: Corpus) -> None:
    """Hostile strings where the schema wants names: media names, slot ids, command ids,
    references, zones, issuers and targets (step 5; they never reach a file system)."""
    c.family = "hostile-strings"
    for label, value in HOSTILE_STRINGS.items():
        doc = p6(media={value: MEDIA}, slots=[slot(items=[value])])
        c.add(
            f"str-media-name-{label}", envelope("playlist", doc, "playlist"), "schema", repr(value)
        )
        c.add(
            f"str-slot-id-{label}",
            envelope("playlist", p6(slots=[slot(id=value)]), "playlist"),
            "schema",
            repr(value),
        )
        c.add(
            f"str-command-id-{label}",
            envelope("command", stop(value), "command"),
            "schema",
            repr(value),
        )
    others = [
        (
            "cancel-references-traversal",
            "command",
            stop("h-str-1", action="cancel", references="../../etc/passwd"),
            "emergency",
        ),
        ("zones-traversal", "command", stop("h-str-2", zones=["../.."]), "command"),
        ("slot-zone-nul", "playlist", p6(slots=[slot(zones=["all\x00"])]), "playlist"),
        ("issuer-traversal", "playlist", p6(issuer="../../etc/passwd"), "playlist"),
        ("target-traversal", "playlist", p6(target="25/../../etc"), "playlist"),
        ("target-topic-word", "playlist", p6(target="25/08230/playlist"), "playlist"),
        ("target-wildcard", "playlist", p6(target="25/+"), "playlist"),
        ("target-trailing-slash", "playlist", p6(target="25/"), "playlist"),
        ("target-upper-station", "command", stop("h-str-3", target="25/08230/08230-0A"), "command"),
        ("issuer-rtl", "playlist", p6(issuer="\u202e52"), "playlist"),
        ("issuer-fullwidth", "playlist", p6(issuer="\uff12\uff15"), "playlist"),
        ("beacon-province-nul", "time", beacon(province="25\x00"), "maintenance"),
        ("keyring-province-traversal", "keyring", keyring_body(2, province="../25"), "root1+root2"),
    ]
    for label, kind, doc, signers in others:
        c.add(f"str-{label}", envelope(kind, doc, *signers.split("+")), "schema", label)


def urls(c: Corpus) -> None:
    """Media and stream URLs that are not http(s) or not one token (step 5)."""
    c.family = "urls"
    bad = {
        "file": "file:///etc/passwd",
        "ftp": "ftp://media.example.vn/25/news.mp3",
        "javascript": "javascript:alert(1)",
        "data": "data:audio/mpeg;base64,SUQzBAAAAAAA",
        "gopher": "gopher://media.example.vn/1",
        "smb": "smb://server/share/news.mp3",
        "scheme-relative": "//media.example.vn/25/news.mp3",
        "no-scheme": "media.example.vn/25/news.mp3",
        "single-slash": "https:/media.example.vn/25/news.mp3",
        "upper-scheme": "HTTPS://media.example.vn/25/news.mp3",
        "space": "https://media.example.vn/25/my news.mp3",
        "tab": "https://media.example.vn/25/\tnews.mp3",
        "newline": "https://media.example.vn/25/news.mp3\n",
        "leading-space": " https://media.example.vn/25/news.mp3",
        "empty": "",
        "scheme-only": "https://",
        "2100-chars": "https://media.example.vn/" + "a" * 2100,
    }
    for label, url in bad.items():
        c.add(
            f"url-media-{label}",
            envelope("playlist", p6(media={"news": media(url=url)}), "playlist"),
            "schema",
            repr(url),
        )
    for label in ("file", "data", "ftp", "javascript", "space"):
        c.add(
            f"url-emergency-{label}",
            envelope(
                "command",
                emergency(f"h-url-{label}", media={**STORM, "url": bad[label]}),
                "emergency",
            ),
            "schema",
            repr(bad[label]),
        )
    for label, url in [
        ("javascript", bad["javascript"]),
        ("rtsp", "rtsp://live.example.vn/25"),
        ("file", bad["file"]),
        ("space", "https://live.example.vn/a b"),
    ]:
        doc = stop(f"h-url-live-{label}", action="live_start", stream={"url": url})
        c.add(f"url-live-{label}", envelope("command", doc, "command"), "schema", repr(url))


def timezones(c: Corpus) -> None:
    """Time zones that are not IANA zones this station knows (step 5)."""
    c.family = "timezone"
    zones = {
        "mars": "Mars/Olympus_Mons",
        "hanoi": "Asia/Hanoi",
        "lowercase": "asia/ho_chi_minh",
        "region-directory": "Asia",
        "sub-directory": "America/Argentina",
        "data-file": "zone.tab",
        "offset": "+07:00",
        "utc-plus": "UTC+7",
        "etc-gmt-99": "Etc/GMT+99",
        "empty": "",
        "trailing-space": "Asia/Ho_Chi_Minh ",
        "nul": "Asia/Ho_Chi_Minh\x00",
        "traversal": "../../etc/passwd",
        "absolute": "/etc/localtime",
        "too-deep": "Asia/Ho_Chi_Minh/Extra",
        "65-chars": "A" * 65,
    }
    for label, zone in zones.items():
        c.add(
            f"tz-{label}",
            envelope("playlist", p6(timezone=zone), "playlist"),
            "schema",
            repr(zone),
        )


def slot_items(c: Corpus) -> None:
    """Slots that play media the playlist does not declare (step 5)."""
    c.family = "slot-items"
    items = {
        "missing": ["missing"],
        "one-of-two-missing": ["news", "missing"],
        "case-differs": ["NEWS"],
        "empty-list": [],
        "101-items": ["news"] * 101,
        "other-playlist-media": ["news-1123"],
    }
    for label, value in items.items():
        c.add(
            f"items-{label}",
            envelope("playlist", p6(slots=[slot(items=value)]), "playlist"),
            "schema",
            repr(value)[:60],
        )
    c.add(
        "items-no-media-at-all",
        envelope("playlist", p6(media={}), "playlist"),
        "schema",
        "media empty, slot plays news",
    )


def unrepresentable_times(c: Corpus) -> None:
    """Legitimately signed times at the edge of what a datetime holds. The protocol is silent;
    the careful answer (written here) is that an instant outside years 1..9999 in UTC is not a
    wire time (``schema``), and that whatever the verdict the core never raises."""
    c.family = "time-edges"
    c.add(
        "edge-stop-expires-beyond-9999-utc",
        envelope("command", stop("h-edge-1", expires="9999-12-31T23:59:59-23:59"), "command"),
        "schema",
        "in UTC this instant is in year 10000",
    )
    c.add(
        "edge-beacon-beyond-9999-untrusted",
        envelope("time", beacon(ts="9999-12-31T23:59:59-23:59"), "maintenance"),
        "schema",
        "in UTC this instant is in year 10000; an untrusted clock has no future bound",
        clock_untrusted=True,
    )
    # A keyring that "never" expires would make every later expiry check overflow (9999-12-31
    # plus the grace period): wire times end with year 8999 (docs/protocol.md), so it is refused.
    c.add(
        "edge-never-expiring-keyring",
        envelope("keyring", keyring_body(2, expires="9999-12-31T23:59:59Z"), "root1", "root2"),
        "schema",
        "a root-signed keyring that expires at the end of 9999 is not a wire time",
    )


FAMILIES: tuple[Callable[[Corpus], None], ...] = (
    tampered_bodies,
    tampered_signatures,
    payload_types,
    type_confusion,
    unknown_keys,
    outside_role,
    scopes,
    audiences,
    clocks,
    windows,
    expired_keyring,
    versions,
    replays,
    sizes,
    envelope_json,
    base64_variants,
    body_json,
    wrong_types,
    hostile_strings,
    urls,
    timezones,
    slot_items,
    unrepresentable_times,
)


def build() -> list[Case]:
    """The whole corpus, in a fixed order."""
    corpus = Corpus()
    for family in FAMILIES:
        family(corpus)
    return corpus.cases


# --- delivery over MQTT ----------------------------------------------------------------------


def section2_topic(data: bytes) -> str:
    """The topic section 2 gives for this envelope's body, read leniently (this is delivery,
    not judgement); ``UNDECODABLE_TOPIC`` when the body cannot be read."""
    try:
        env = json.loads(data)
        kind = {v: k for k, v in PAYLOAD.items()}.get(env["payloadType"])
        doc = json.loads(base64.b64decode(env["payload"]))
        kind = kind or doc["kind"]
        if kind == "playlist":
            return f"loa/v1/{doc['target']}/playlist/{doc['issuer']}"
        if kind == "command":
            return f"loa/v1/{doc['target']}/cmd"
        if kind == "keyring":
            return f"loa/v1/{doc['province']}/keyring/{doc['version']}"
        if kind == "time":
            return f"loa/v1/{doc['province']}/time"
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        pass
    return UNDECODABLE_TOPIC


# --- writing it out --------------------------------------------------------------------------


def write(cases: list[Case], directory: Path) -> Path:
    """Write each envelope (and prelude) as a file and a ``manifest.json`` describing them."""
    directory.mkdir(parents=True, exist_ok=True)
    preludes: dict[bytes, str] = {}
    entries = []
    for number, case in enumerate(cases):
        names = []
        for data in case.prelude:
            if data not in preludes:
                preludes[data] = f"prelude-{len(preludes):02d}.json"
                (directory / preludes[data]).write_bytes(data)
            names.append(preludes[data])
        file = f"{number:03d}-{case.name}.json"
        (directory / file).write_bytes(case.data)
        entry: dict[str, Any] = {
            "name": case.name,
            "file": file,
            "expect": case.expect,
            "family": case.family,
            "note": case.note,
            "topic": case.topic,
            "prelude": names,
        }
        for key in ("clock_untrusted", "keyring", "wall", "floor", "fixed_now"):
            value = getattr(case, key)
            if value:
                entry[key] = "short-keyring.json" if key == "keyring" else value
        entries.append(entry)
    (directory / "known-good-v5.json").write_bytes(KNOWN_GOOD)
    (directory / "short-keyring.json").write_bytes(SHORT_KEYRING)
    manifest = {
        "about": __doc__,
        "station": STATION,
        "now": NOW.isoformat(),
        "known_good": "known-good-v5.json",
        "cases": entries,
    }
    path = directory / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return path


def _pae(payload_type: str, body: bytes) -> bytes:
    # DSSE's pre-authentication encoding, written out from the DSSE spec (PROTOCOL.md section
    # 3) rather than taken from agent.core.dsse: this is the corpus's own check.
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def trusted_keys(case: Case) -> dict[str, Ed25519PublicKey]:
    """keyid -> public key of every key the station holds when the case arrives: those of its
    provisioned keyring (default keyring-v1) and of every keyring its prelude brings."""
    keyrings = [case.keyring or envelope("keyring", keyring_body(1), "root1", "root2")]
    keyrings += [d for d in case.prelude if _payload_type(d) == PAYLOAD["keyring"]]
    keys: dict[str, Ed25519PublicKey] = {}
    for data in keyrings:
        for kid, entry in json.loads(body_of(data))["keys"].items():
            keys[kid] = Ed25519PublicKey.from_public_bytes(bytes.fromhex(entry["public"]))
    return keys


def _payload_type(data: bytes) -> str | None:
    try:
        value = load(data).get("payloadType")
    except (ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) else None


def validly_signed(case: Case) -> bool:
    """Whether ``case.data`` carries at least one signature that verifies, under the key its
    ``keyid`` names, over the envelope's own payload, with a key the station holds.

    The corpus's own knowledge, independent of the trust core: an envelope for which this is
    False and that a station accepts was accepted without a valid signature (issue 13's
    ``accepted_unsigned``). Anything that does not even parse as an envelope is unsigned.
    """
    keys = trusted_keys(case)
    try:
        doc = load(case.data)
        body = base64.b64decode(doc["payload"], validate=True)
        pae = _pae(doc["payloadType"], body)
        signatures = list(doc["signatures"])
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return False
    for entry in signatures:
        try:
            key = keys.get(entry["keyid"])
            raw = base64.b64decode(entry["sig"], validate=True)
        except (ValueError, TypeError, KeyError):
            continue
        if key is None:
            continue
        try:
            key.verify(raw, pae)
        except (InvalidSignature, ValueError):
            continue
        return True
    return False


def summary(cases: list[Case]) -> Iterator[str]:
    for key in ("expect", "family"):
        counts: dict[str, int] = {}
        for case in cases:
            counts[getattr(case, key)] = counts.get(getattr(case, key), 0) + 1
        yield f"by {key}: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the hostile envelope corpus to DIR.")
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    cases = build()
    path = write(cases, args.directory)
    print(f"{len(cases)} cases, manifest {path}")
    for line in summary(cases):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
