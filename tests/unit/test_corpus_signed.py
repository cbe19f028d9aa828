"""The corpus's own signature check (``tests.corpus.hostile.validly_signed``), which the attack
scenarios count ``accepted_unsigned`` with: it must tell a valid signature from every kind of
invalid one without asking the trust core."""

from __future__ import annotations

from tests.corpus.hostile import KNOWN_GOOD, Case, build, flip, sig_of, validly_signed, with_sig
from tests.harness.trust import envelope, playlist_body


def case(data: bytes) -> Case:
    return Case(name="c", data=data, expect="accepted", note="", family="t")


def test_a_good_envelope_is_validly_signed() -> None:
    assert validly_signed(case(KNOWN_GOOD))


def test_a_flipped_bit_a_stranger_and_junk_are_not() -> None:
    assert not validly_signed(case(with_sig(KNOWN_GOOD, flip(sig_of(KNOWN_GOOD), 5, 1))))
    assert not validly_signed(case(envelope("playlist", playlist_body(), "stranger")))
    assert not validly_signed(case(b"\xff\x00 not json"))
    assert not validly_signed(case(b"[" * 100_000))


def test_every_bad_signature_case_with_one_signature_is_unsigned() -> None:
    cases = [c for c in build() if c.expect in {"bad-signature", "unknown-key"}]
    single = [c for c in cases if c.data.count(b'"keyid"') == 1]
    assert single and not any(validly_signed(c) for c in single)
