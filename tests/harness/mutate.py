"""Hypothesis strategies shared by the parser fuzz tests: arbitrary JSON values and byte- and
text-level mutations of a valid input (issue 13, part "fuzz").

Owns nothing of the product; only how inputs are bent. Mutations are the cheap ones that find
parser bugs in practice: flip a bit, insert a few bytes (often a structural character), delete
a run, replace a byte, duplicate a run; a few at a time, so most outputs stay near the valid
input and reach the parser's deeper checks.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

STRUCTURAL = [b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"\\u", b"=", b"\n", b"\x00"]

# JSON values that strict JSON (PROTOCOL.md section 3) accepts, so they round-trip: integers
# within +-2^53, finite floats, text without lone surrogates. The wild values come from the byte
# mutations.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn, data: bytes, max_edits: int = 4) -> bytes:
    """``data`` with 1..max_edits byte-level edits."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, max_edits))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "replace", "duplicate"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            out[at:at] = draw(st.sampled_from(STRUCTURAL) | st.binary(min_size=1, max_size=6))
        elif op == "delete" and out:
            del out[at : at + draw(st.integers(1, 8))]
        elif op == "duplicate" and out:
            out[at:at] = out[at : at + draw(st.integers(1, 16))]
        elif out:
            out[at] = draw(st.integers(0, 255))
    return bytes(out)


@st.composite
def mutated_text(draw: st.DrawFn, text: str, max_edits: int = 4) -> str:
    """``text`` with 1..max_edits character-level edits (stays a str, any code point)."""
    out = list(text)
    for _ in range(draw(st.integers(1, max_edits))):
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        piece = draw(st.text(max_size=4) | st.sampled_from(list("[]{}=\"'.,#\n\\:-+TZ0129")))
        if op == "insert":
            out[at:at] = list(piece)
        elif op == "delete" and out:
            del out[at : at + draw(st.integers(1, 6))]
        elif out:
            out[at : at + 1] = list(piece)
    return "".join(out)


@st.composite
def mutated_doc(draw: st.DrawFn, doc: Any) -> Any:
    """A JSON document with one member or item replaced, removed, or added."""
    import copy

    out = copy.deepcopy(doc)
    places: list[tuple[Any, Any]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key in list(value):
                places.append((value, key))
                walk(value[key])
        elif isinstance(value, list):
            for index in range(len(value)):
                places.append((value, index))
                walk(value[index])

    walk(out)
    if not places:
        return draw(JSON)
    parent, key = draw(st.sampled_from(places))
    op = draw(st.sampled_from(["replace", "remove", "add"]))
    if op == "replace":
        parent[key] = draw(JSON)
    elif op == "remove":
        del parent[key]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=10))] = draw(JSON)
    else:
        parent.insert(key, draw(JSON))
    return out
