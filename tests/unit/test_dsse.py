"""Unit tests of agent.core.dsse: PAE, envelope parsing, signing, verification (PROTOCOL s3)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core import dsse
from agent.core.codes import Code, Rejected
from agent.core.dsse import Envelope, Signature

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
VECTORS = SHARED / "vectors"

PLAYLIST_TYPE = "application/vnd.loa.playlist+json"
BODY = b'{"kind": "playlist", "version": 1}'
CAP = 3 * 1024 * 1024

# The manifest's order of test keys: seed n is 32 bytes of n, 1-based.
KEY_NAMES = (
    "root1",
    "root2",
    "root3",
    "playlist",
    "command",
    "emergency",
    "maintenance",
    "commune-08230",
)


def key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def pub(seed: int) -> bytes:
    return dsse.public_raw(key(seed))


def envelope_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(dsse.sign(PLAYLIST_TYPE, BODY, [key(4)]))
    doc.update(overrides)
    return doc


def encode(doc: object) -> bytes:
    return json.dumps(doc).encode()


def rejected_code(data: bytes, max_bytes: int = CAP) -> Code:
    with pytest.raises(Rejected) as info:
        dsse.parse_envelope(data, max_bytes)
    return info.value.code


# -- PAE -------------------------------------------------------------------------------------------
def test_pae_golden_vector() -> None:
    vector = json.loads((VECTORS / "pae.json").read_text("utf-8"))
    got = dsse.pae(vector["payloadType"], vector["body"].encode("utf-8"))
    assert got == vector["pae"].encode("utf-8")
    assert got == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


@pytest.mark.parametrize(
    ("payload_type", "body", "expected"),
    [
        ("", b"", b"DSSEv1 0  0 "),
        ("t", b"", b"DSSEv1 1 t 0 "),
        ("t", b"x" * 10, b"DSSEv1 1 t 10 " + b"x" * 10),
        # LEN counts bytes, not characters
        ("tỉnh", b"\xc3\xa3", b"DSSEv1 6 t\xe1\xbb\x89nh 2 \xc3\xa3"),
        ("a b", b" 1 ", b"DSSEv1 3 a b 3  1 "),
    ],
)
def test_pae_lengths_are_byte_counts(payload_type: str, body: bytes, expected: bytes) -> None:
    assert dsse.pae(payload_type, body) == expected


# -- keyids ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(1, 10))
def test_keyid_is_sha256_of_raw_public_key(seed: int) -> None:
    raw = pub(seed)
    assert len(raw) == 32
    keyid = dsse.keyid_of(raw)
    assert keyid == hashlib.sha256(raw).hexdigest()
    assert len(keyid) == 64 and keyid == keyid.lower()


def test_keyring_vector_keys_are_seeds_one_to_eight() -> None:
    envelope = dsse.parse_envelope((VECTORS / "keyring-v1.json").read_bytes(), CAP)
    assert envelope.payload_type == "application/vnd.loa.keyring+json"
    body = json.loads(envelope.body)
    keyids = {name: dsse.keyid_of(pub(n)) for n, name in enumerate(KEY_NAMES, start=1)}

    assert set(body["keys"]) == set(keyids.values())
    for name, keyid in keyids.items():
        entry = body["keys"][keyid]
        assert bytes.fromhex(entry["public"]) == pub(KEY_NAMES.index(name) + 1)
        assert entry["scheme"] == "ed25519"
        assert entry["scope"] == (["25/08230"] if name == "commune-08230" else ["25"])

    roles = body["roles"]
    assert roles["root"] == {
        "keyids": [keyids["root1"], keyids["root2"], keyids["root3"]],
        "threshold": 2,
    }
    assert roles["playlist"]["keyids"] == [keyids["playlist"], keyids["commune-08230"]]
    assert roles["command"]["keyids"] == [keyids["command"], keyids["commune-08230"]]
    assert roles["emergency"]["keyids"] == [keyids["emergency"]]
    assert roles["maintenance"]["keyids"] == [keyids["maintenance"]]
    # The stranger (seed 9) is not in the keyring.
    assert dsse.keyid_of(pub(9)) not in body["keys"]


def test_keyring_vector_is_signed_by_its_root_threshold() -> None:
    envelope = dsse.parse_envelope((VECTORS / "keyring-v1.json").read_bytes(), CAP)
    by_keyid = {dsse.keyid_of(pub(n)): pub(n) for n in (1, 2, 3)}
    signers = {
        s.keyid
        for s in envelope.signatures
        if s.keyid in by_keyid and envelope.verifies_with(by_keyid[s.keyid], s)
    }
    assert len(signers) >= 2


# -- sign / verify ---------------------------------------------------------------------------------
def test_sign_then_parse_then_verify() -> None:
    data = dsse.sign(PLAYLIST_TYPE, BODY, [key(4)])
    envelope = dsse.parse_envelope(data, CAP)
    assert envelope.payload_type == PLAYLIST_TYPE
    assert envelope.body == BODY
    assert len(envelope.signatures) == 1
    signature = envelope.signatures[0]
    assert signature.keyid == dsse.keyid_of(pub(4))
    assert len(signature.sig) == dsse.ED25519_SIG_BYTES
    assert envelope.verifies_with(pub(4), signature)


def test_sign_with_several_keys_signs_with_each() -> None:
    envelope = dsse.parse_envelope(dsse.sign(PLAYLIST_TYPE, BODY, [key(1), key(2), key(3)]), CAP)
    assert [s.keyid for s in envelope.signatures] == [dsse.keyid_of(pub(n)) for n in (1, 2, 3)]
    for n, signature in zip((1, 2, 3), envelope.signatures, strict=True):
        assert envelope.verifies_with(pub(n), signature)
        other = 1 + n % 3
        assert not envelope.verifies_with(pub(other), signature)


def test_sign_is_deterministic_and_uses_standard_base64() -> None:
    data = dsse.sign(PLAYLIST_TYPE, BODY, [key(4)])
    assert data == dsse.sign(PLAYLIST_TYPE, BODY, [key(4)])  # Ed25519 is deterministic
    doc = json.loads(data)
    assert doc["payload"] == base64.b64encode(BODY).decode()
    assert base64.b64decode(doc["signatures"][0]["sig"], validate=True) == key(4).sign(
        dsse.pae(PLAYLIST_TYPE, BODY)
    )


def test_sign_without_keys_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one signing key"):
        dsse.sign(PLAYLIST_TYPE, BODY, [])


def _signed() -> Envelope:
    return dsse.parse_envelope(dsse.sign(PLAYLIST_TYPE, BODY, [key(4)]), CAP)


@pytest.mark.parametrize("bit", [0, 7, 8 * 5 + 3, 8 * len(BODY) - 1])
def test_flipped_payload_bit_fails(bit: int) -> None:
    good = _signed()
    body = bytearray(good.body)
    body[bit // 8] ^= 1 << (bit % 8)
    tampered = Envelope(good.payload_type, bytes(body), good.signatures)
    assert not tampered.verifies_with(pub(4), good.signatures[0])


@pytest.mark.parametrize(
    "payload_type",
    [
        "application/vnd.loa.command+json",
        "application/vnd.loa.playlist+json ",
        "Application/vnd.loa.playlist+json",
        "",
    ],
)
def test_different_payload_type_fails(payload_type: str) -> None:
    good = _signed()
    tampered = Envelope(payload_type, good.body, good.signatures)
    assert not tampered.verifies_with(pub(4), good.signatures[0])


def test_pae_binds_type_and_body_boundary() -> None:
    # Moving bytes between the type and the body changes the PAE, so the signature fails.
    signature = Signature(None, key(4).sign(dsse.pae("ab", b"c")))
    assert Envelope("ab", b"c", (signature,)).verifies_with(pub(4), signature)
    assert not Envelope("a", b"bc", (signature,)).verifies_with(pub(4), signature)


def test_wrong_key_fails() -> None:
    good = _signed()
    assert not good.verifies_with(pub(5), good.signatures[0])


@pytest.mark.parametrize(
    "sig",
    [
        b"",
        bytes(64),
        bytes(63),
        bytes(65),
        b"\xff" * 64,
    ],
)
def test_malformed_signature_bytes_never_verify(sig: bytes) -> None:
    assert not _signed().verifies_with(pub(4), Signature(None, sig))


def test_truncated_or_extended_valid_signature_fails() -> None:
    good = _signed()
    sig = good.signatures[0].sig
    assert not good.verifies_with(pub(4), Signature(None, sig[:-1]))
    assert not good.verifies_with(pub(4), Signature(None, sig + b"\x00"))


@pytest.mark.parametrize("public", [b"", bytes(31), bytes(33)])
def test_malformed_public_key_never_verifies(public: bytes) -> None:
    good = _signed()
    assert not good.verifies_with(public, good.signatures[0])


# -- parse_envelope: accepted ----------------------------------------------------------------------
def test_parse_accepts_exactly_the_cap() -> None:
    data = dsse.sign(PLAYLIST_TYPE, BODY, [key(4)])
    assert dsse.parse_envelope(data, len(data)).body == BODY


def test_parse_accepts_urlsafe_base64() -> None:
    body = b"\xfb\xff\xfe"  # encodes with '+' and '/' in the standard alphabet
    sig = key(4).sign(dsse.pae(PLAYLIST_TYPE, body))
    doc = {
        "payloadType": PLAYLIST_TYPE,
        "payload": base64.urlsafe_b64encode(body).decode(),
        "signatures": [{"sig": base64.urlsafe_b64encode(sig).decode()}],
    }
    assert "-" in doc["payload"] or "_" in doc["payload"]
    envelope = dsse.parse_envelope(encode(doc), CAP)
    assert envelope.body == body
    assert envelope.signatures[0].keyid is None
    assert envelope.verifies_with(pub(4), envelope.signatures[0])


@pytest.mark.parametrize("keyid", [None, ""])
def test_parse_missing_or_empty_keyid_is_none(keyid: str | None) -> None:
    doc = envelope_doc()
    doc["signatures"][0]["keyid"] = keyid
    assert dsse.parse_envelope(encode(doc), CAP).signatures[0].keyid is None


def test_parse_accepts_sixteen_signatures() -> None:
    doc = envelope_doc()
    doc["signatures"] = doc["signatures"] * dsse.MAX_SIGNATURES
    assert len(dsse.parse_envelope(encode(doc), CAP).signatures) == 16


# -- parse_envelope: refusals ----------------------------------------------------------------------
def test_parse_refuses_oversize_before_anything_else() -> None:
    data = dsse.sign(PLAYLIST_TYPE, BODY, [key(4)])
    with pytest.raises(Rejected) as info:
        dsse.parse_envelope(data, len(data) - 1)
    assert info.value.code is Code.TOO_LARGE
    assert rejected_code(b"x" * 11, 10) is Code.TOO_LARGE  # garbage too, size comes first


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b'{"payloadType": "t", "payloadType": "t"}',
        b"NaN",
        b"[]",
        b'"envelope"',
        b"42",
        b"null",
        b"true",
    ],
)
def test_parse_refuses_non_object_json(data: bytes) -> None:
    assert rejected_code(data) is Code.BAD_ENVELOPE


@pytest.mark.parametrize(
    "overrides",
    [
        {"payloadType": None},
        {"payloadType": 1},
        {"payloadType": ""},
        {"payloadType": "x" * 101},
        {"payloadType": ["application/vnd.loa.playlist+json"]},
        {"payload": None},
        {"payload": 1},
        {"payload": ["eA=="]},
        {"signatures": None},
        {"signatures": {}},
        {"signatures": "sig"},
        {"signatures": []},
    ],
)
def test_parse_refuses_wrong_typed_fields(overrides: dict[str, Any]) -> None:
    assert rejected_code(encode(envelope_doc(**overrides))) is Code.BAD_ENVELOPE


@pytest.mark.parametrize("field", ["payloadType", "payload", "signatures"])
def test_parse_refuses_missing_field(field: str) -> None:
    doc = envelope_doc()
    del doc[field]
    assert rejected_code(encode(doc)) is Code.BAD_ENVELOPE


def test_parse_refuses_seventeen_signatures() -> None:
    doc = envelope_doc()
    doc["signatures"] = doc["signatures"] * (dsse.MAX_SIGNATURES + 1)
    assert rejected_code(encode(doc)) is Code.BAD_ENVELOPE


@pytest.mark.parametrize(
    "entry",
    [
        None,
        "sig",
        ["keyid", "sig"],
        {},
        {"keyid": "k"},
        {"keyid": "k", "sig": None},
        {"keyid": "k", "sig": 7},
        {"keyid": 7, "sig": "AAAA"},
        {"keyid": True, "sig": "AAAA"},
        {"keyid": "k" * 129, "sig": "AAAA"},
        {"keyid": "k", "sig": "A" * 204},
    ],
)
def test_parse_refuses_bad_signature_entries(entry: object) -> None:
    doc = envelope_doc()
    doc["signatures"].append(entry)
    assert rejected_code(encode(doc)) is Code.BAD_ENVELOPE


@pytest.mark.parametrize(
    "bad",
    [
        "not base64!",
        "aGVsbG8=\n",
        "+/8",  # standard alphabet, unpadded
        "aGVsbG9=",  # non-canonical
        "a+b_",  # mixed alphabets
        "QQ===",
        "ＱＱ==",
    ],
)
@pytest.mark.parametrize("where", ["payload", "sig"])
def test_parse_refuses_bad_base64(bad: str, where: str) -> None:
    doc = envelope_doc()
    if where == "payload":
        doc["payload"] = bad
    else:
        doc["signatures"][0]["sig"] = bad
    with pytest.raises(Rejected) as info:
        dsse.parse_envelope(encode(doc), CAP)
    assert info.value.code is Code.BAD_ENVELOPE
    assert info.value.detail.startswith(f"{where}: ")


def test_parse_refuses_nan_inside_envelope() -> None:
    data = encode(envelope_doc()).replace(b'"payloadType"', b'"x": NaN, "payloadType"', 1)
    assert rejected_code(data) is Code.BAD_ENVELOPE


def test_rejected_carries_code_and_detail() -> None:
    with pytest.raises(Rejected) as info:
        dsse.parse_envelope(b"[]", CAP)
    assert info.value.code is Code.BAD_ENVELOPE
    assert info.value.detail == "envelope is not a JSON object"
    assert str(info.value) == "bad-envelope: envelope is not a JSON object"
