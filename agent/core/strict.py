"""Strict decoding of untrusted bytes: base64 and JSON exactly as PROTOCOL.md section 3 demands.

Lenient decoders are how signed-message systems get fooled (two parsers reading one document two
ways), so everything here refuses rather than guesses: duplicate keys, NaN and Infinity, integers
beyond +-2^53, non-canonical base64, mixed base64 alphabets, invalid UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1

_STD_B64 = re.compile(rb"\A[A-Za-z0-9+/]*={0,2}\Z")
_URL_B64 = re.compile(rb"\A[A-Za-z0-9_-]*={0,2}\Z")


class StrictDecodeError(ValueError):
    """The input is not in the one accepted form."""


def b64decode(text: str) -> bytes:
    """Decode standard or URL-safe base64 (not a mix), padded or, for URL-safe, unpadded.

    The encoding must be canonical (unused trailing bits zero), so one byte string has exactly
    one accepted spelling per alphabet.
    """
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise StrictDecodeError("base64 contains non-ASCII characters") from exc
    urlsafe = False
    # Text drawn only from the alphabets' common letters decodes the same either way; unpadded,
    # it can only be URL-safe base64 (standard base64 is always padded).
    if _STD_B64.match(raw) and len(raw) % 4 == 0:
        padded = raw
    elif _URL_B64.match(raw):
        unpadded = raw.rstrip(b"=")
        if len(unpadded) % 4 == 1:
            raise StrictDecodeError("base64 length is impossible")
        padded = unpadded + b"=" * (-len(unpadded) % 4)
        if raw not in (unpadded, padded):
            raise StrictDecodeError("base64 padding is wrong")
        urlsafe = True
    elif _STD_B64.match(raw):
        raise StrictDecodeError("standard base64 must be padded to a multiple of 4")
    else:
        raise StrictDecodeError("not base64 (standard or URL-safe alphabet)")
    try:
        data = base64.urlsafe_b64decode(padded) if urlsafe else base64.b64decode(padded)
    except binascii.Error as exc:
        raise StrictDecodeError(f"bad base64: {exc}") from exc
    again = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    if again != padded:
        raise StrictDecodeError("base64 is not canonical")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictDecodeError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise StrictDecodeError(f"{name} is not JSON")


def _bounded_int(text: str) -> int:
    value = int(text)
    if abs(value) > MAX_SAFE_INTEGER:
        raise StrictDecodeError("integer beyond +-2^53")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise StrictDecodeError("number out of range")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    # A walk with its own stack, not recursion: the json module accepts nesting almost as deep
    # as the interpreter's recursion limit, and a recursive walk of such a document raised
    # RecursionError out of the parser (the agent must never raise on bad input).
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any("\ud800" <= ch <= "\udfff" for ch in item):
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return False


def loads(data: bytes) -> Any:
    """Parse UTF-8 JSON strictly; raise StrictDecodeError on anything doubtful."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrictDecodeError("not UTF-8") from exc
    if text.startswith("\ufeff"):
        raise StrictDecodeError("byte-order mark")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except StrictDecodeError:
        raise
    except json.JSONDecodeError as exc:
        raise StrictDecodeError(f"not JSON: {exc.msg} at {exc.pos}") from exc
    except ValueError as exc:  # e.g. an integer literal longer than Python's digit limit
        raise StrictDecodeError(f"not JSON: {exc}") from exc
    except RecursionError as exc:
        raise StrictDecodeError("JSON nested too deeply") from exc
    # Only an escape can smuggle in a lone surrogate (I-JSON forbids them; they cannot be
    # encoded back to UTF-8), so the walk is skipped for the common text without escapes.
    if "\\u" in text and _has_lone_surrogate(value):
        raise StrictDecodeError("string holds a lone UTF-16 surrogate")
    return value
