"""Unit tests of agent.core.strict: the one accepted spelling of base64 and JSON (PROTOCOL s3)."""

from __future__ import annotations

import base64
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core import strict
from agent.core.strict import MAX_SAFE_INTEGER, StrictDecodeError


# -- base64: accepted forms ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", b""),
        ("QQ==", b"A"),
        ("QUI=", b"AB"),
        ("QUJD", b"ABC"),
        ("aGVsbG8gd29ybGQ=", b"hello world"),
        # standard alphabet, padded
        ("+/8=", b"\xfb\xff"),
        ("++++", b"\xfb\xef\xbe"),
        # URL-safe alphabet, padded
        ("-_8=", b"\xfb\xff"),
        ("_w==", b"\xff"),
        # URL-safe alphabet, unpadded
        ("-_8", b"\xfb\xff"),
        ("_w", b"\xff"),
        ("----", b"\xfb\xef\xbe"),
    ],
)
def test_b64decode_accepts_canonical_forms(text: str, expected: bytes) -> None:
    assert strict.b64decode(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Unpadded URL-safe text that happens to use no '-' or '_': still URL-safe base64, which the
        # docstring says may be unpadded. urlsafe_b64encode(b"A").rstrip(b"=") is "QQ".
        ("QQ", b"A"),
        ("QUI", b"AB"),
        ("aGVsbG8gd29ybGQ", b"hello world"),
    ],
)
def test_b64decode_accepts_unpadded_urlsafe_without_urlsafe_only_characters(
    text: str, expected: bytes
) -> None:
    assert strict.b64decode(text) == expected


# -- base64: refusals ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        # mixed alphabets
        ("+-8=", "not base64"),
        ("/_8=", "not base64"),
        ("a+b_", "not base64"),
        # characters outside both alphabets
        ("QQ==\n", "not base64"),
        (" QQ==", "not base64"),
        ("QQ ==", "not base64"),
        ("Q.Q=", "not base64"),
        ("QQ==QQ==", "not base64"),
        ("=QQ=", "not base64"),
        ("QQ===", "not base64"),
        ("Q===", "not base64"),
        ("QQ=A", "not base64"),
        # non-ASCII (Unicode lookalikes)
        ("QQ＝＝", "non-ASCII"),
        ("ＱＱ==", "non-ASCII"),
        # standard alphabet must be padded
        ("+/8", "must be padded"),
        ("QQ=", "padding is wrong"),
        ("+w=", "must be padded"),
        # URL-safe: impossible lengths and wrong padding
        ("-_8-_", "length is impossible"),
        ("-w=", "padding is wrong"),
        ("-_8==", "padding is wrong"),
        # non-canonical: unused trailing bits set
        ("QR==", "not canonical"),
        ("QUJ=", "not canonical"),
        ("_x==", "not canonical"),
        ("-_9", "not canonical"),
        ("_x", "not canonical"),
    ],
)
def test_b64decode_refuses(text: str, message: str) -> None:
    with pytest.raises(StrictDecodeError, match=message):
        strict.b64decode(text)


def test_b64decode_refuses_five_character_unpadded_text() -> None:
    # Length 1 mod 4 can never be base64; it is refused whichever branch sees it.
    with pytest.raises(StrictDecodeError):
        strict.b64decode("QUJDR")


def test_strict_decode_error_is_a_value_error() -> None:
    assert issubclass(StrictDecodeError, ValueError)


# -- base64: properties ----------------------------------------------------------------------------
@given(st.binary(max_size=300))
def test_b64_standard_padded_round_trips(data: bytes) -> None:
    assert strict.b64decode(base64.b64encode(data).decode("ascii")) == data


@given(st.binary(max_size=300))
def test_b64_urlsafe_padded_round_trips(data: bytes) -> None:
    assert strict.b64decode(base64.urlsafe_b64encode(data).decode("ascii")) == data


@given(st.binary(max_size=300))
def test_b64_urlsafe_unpadded_round_trips(data: bytes) -> None:
    text = base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")
    assert strict.b64decode(text) == data


@given(st.binary(max_size=300))
def test_b64_standard_unpadded_round_trips_or_is_refused_as_unpadded(data: bytes) -> None:
    # Standard base64 must be padded; unpadded text using '+' or '/' is refused, while text in the
    # shared alphabet is valid URL-safe unpadded base64 and must decode to the same bytes.
    text = base64.b64encode(data).decode("ascii").rstrip("=")
    if len(data) % 3 and ("+" in text or "/" in text):
        with pytest.raises(StrictDecodeError, match="must be padded"):
            strict.b64decode(text)
    else:
        assert strict.b64decode(text) == data


@given(st.binary(min_size=1, max_size=60), st.sampled_from(["+", "/", "-", "_", "="]))
def test_b64_one_spelling_per_alphabet(data: bytes, junk: str) -> None:
    # Appending any base64 character to a canonical padded spelling never decodes to the same bytes.
    text = base64.b64encode(data).decode("ascii") + junk
    try:
        decoded = strict.b64decode(text)
    except StrictDecodeError:
        return
    assert decoded != data


# -- JSON: accepted --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"{}", {}),
        (b"[]", []),
        (b'{"a": [1, 2.5, "x", true, false, null]}', {"a": [1, 2.5, "x", True, False, None]}),
        (b' \n{"a": 1}\n ', {"a": 1}),
        (str(MAX_SAFE_INTEGER).encode(), MAX_SAFE_INTEGER),
        (str(-MAX_SAFE_INTEGER).encode(), -MAX_SAFE_INTEGER),
        (b"-0", 0),
        (b"1e308", 1e308),
        (b"-1.5E+10", -1.5e10),
        ('"Xã Tân Lập"'.encode(), "Xã Tân Lập"),
        (b'"\\u00e3"', "ã"),
        (b'{"a": {"a": 1}}', {"a": {"a": 1}}),  # the same key at different levels is fine
    ],
)
def test_loads_accepts(data: bytes, expected: object) -> None:
    result = strict.loads(data)
    assert result == expected
    assert type(result) is type(expected)


def test_loads_accepts_reasonable_nesting() -> None:
    value = strict.loads(b"[" * 100 + b"]" * 100)
    depth = 0
    while value:
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
        depth += 1
    assert value == [] and depth == 99


def test_loads_keeps_integers_as_int_and_floats_as_float() -> None:
    doc = strict.loads(b'{"i": 1, "f": 1.0, "e": 1e2}')
    assert type(doc["i"]) is int
    assert type(doc["f"]) is float
    assert type(doc["e"]) is float


# -- JSON: refusals --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "message"),
    [
        # duplicate keys, at any depth
        (b'{"a": 1, "a": 1}', "duplicate key 'a'"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"x": {"b": 1, "b": 2}}', "duplicate key 'b'"),
        (b'[{"k": null, "k": null}]', "duplicate key 'k'"),
        (b'{"\\u0061": 1, "a": 2}', "duplicate key 'a'"),  # same key, different spelling
        # non-finite constants
        (b"NaN", "NaN is not JSON"),
        (b"Infinity", "Infinity is not JSON"),
        (b"-Infinity", "-Infinity is not JSON"),
        (b'{"volume": NaN}', "NaN is not JSON"),
        (b"[1, Infinity]", "Infinity is not JSON"),
        (b"[-Infinity]", "-Infinity is not JSON"),
        # integers beyond +-(2^53 - 1)
        (str(MAX_SAFE_INTEGER + 1).encode(), "integer beyond"),
        (str(-(MAX_SAFE_INTEGER + 1)).encode(), "integer beyond"),
        (b'{"version": 18446744073709551616}', "integer beyond"),
        (b"-99999999999999999999", "integer beyond"),
        # huge exponents overflow to infinity
        (b"1e400", "out of range"),
        (b"-1e400", "out of range"),
        (b"1.0E+400", "out of range"),
        (b"[9" + b"9" * 400 + b".0]", "out of range"),
        # an integer literal beyond Python's digit limit
        (b"1" * 5000, "not JSON"),
        # encoding
        (b"\xff", "not UTF-8"),
        (b'"\xc0\xaf"', "not UTF-8"),  # overlong
        (b'"\xed\xa0\x80"', "not UTF-8"),  # encoded surrogate
        (b'{"a": "\xe1\xba"}', "not UTF-8"),  # truncated sequence
        ("\ufeff{}".encode(), "byte-order mark"),
        ('\ufeff{"a": 1}'.encode(), "byte-order mark"),
        # not JSON at all
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"{'a': 1}", "not JSON"),
        (b"[1,]", "not JSON"),
        (b'{"a": 1,}', "not JSON"),
        (b"{} {}", "not JSON"),
        (b'"tab\there"', "not JSON"),  # raw control character in a string
        (b"01", "not JSON"),
        # nesting
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
    ],
)
def test_loads_refuses(data: bytes, message: str) -> None:
    with pytest.raises(StrictDecodeError, match=message):
        strict.loads(data)


# -- JSON: properties ------------------------------------------------------------------------------
_safe_ints = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
_finite_floats = st.floats(allow_nan=False, allow_infinity=False)
_json_values = st.recursive(
    st.none() | st.booleans() | _safe_ints | _finite_floats | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


def _same(a: object, b: object) -> bool:
    """Structural equality that also tells 1 from 1.0 and True from 1."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        assert isinstance(b, float)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


@given(_json_values)
def test_json_round_trips_ascii(value: object) -> None:
    data = json.dumps(value, allow_nan=False).encode("ascii")
    assert _same(strict.loads(data), value)


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | _safe_ints
        | _finite_floats
        | st.text(st.characters(exclude_categories=["Cs"])),
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=10), children, max_size=5)
        ),
        max_leaves=30,
    )
)
def test_json_round_trips_utf8(value: object) -> None:
    data = json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert _same(strict.loads(data), value)


@given(st.integers(min_value=0, max_value=2**200), st.booleans())
def test_json_refuses_every_unsafe_integer(excess: int, negative: bool) -> None:
    value = MAX_SAFE_INTEGER + 1 + excess
    if negative:
        value = -value
    with pytest.raises(StrictDecodeError, match="integer beyond"):
        strict.loads(json.dumps({"n": value}).encode())


@given(st.dictionaries(st.text(max_size=5), _safe_ints, min_size=1, max_size=5))
def test_json_refuses_any_repeated_key(doc: dict[str, int]) -> None:
    key = next(iter(doc))
    text = json.dumps(doc)
    repeated = text[:-1] + ", " + json.dumps(key) + ": 0}"
    with pytest.raises(StrictDecodeError, match="duplicate key"):
        strict.loads(repeated.encode())


@pytest.mark.parametrize(
    "text", [b'"\\ud800"', b'{"a": ["x\\udc00"]}', b'{"\\udfff": 1}', b'"\\ude00\\ud83d"']
)
def test_json_refuses_lone_surrogates(text: bytes) -> None:
    with pytest.raises(StrictDecodeError, match="surrogate"):
        strict.loads(text)


def test_json_keeps_escaped_surrogate_pairs() -> None:
    assert strict.loads(b'"\\ud83d\\ude00"') == "\U0001f600"


@pytest.mark.parametrize("depth", [1, 400, 900])
def test_a_lone_surrogate_deep_in_nesting_is_refused_not_a_recursion_error(depth: int) -> None:
    # Found by the parser fuzzing (issue 13): the surrogate check walked the document
    # recursively and raised RecursionError at a depth the json module accepts, out of
    # parse_envelope and so out of verify, which must never raise.
    data = ("[" * depth + '"\\ud800"' + "]" * depth).encode()
    with pytest.raises(StrictDecodeError, match="surrogate"):
        strict.loads(data)
    assert strict.loads(("[" * depth + '"\\u00e9"' + "]" * depth).encode()) is not None
