"""The technician's language: gettext catalogues for ``loa-provision``, Vietnamese and English.

Source strings are English and marked with ``_()``; ``provisioning/locale/vi.po`` is the
Vietnamese catalogue, edited as any gettext catalogue is (``xgettext`` finds the strings,
``msgmerge`` updates the file). The ``.po`` file is compiled into the standard ``.mo`` form in
memory when the CLI starts (``compile_po``) and handed to ``gettext.GNUTranslations``, so there
is no build step and no binary file in the repository that could fall behind its source.

The language comes from ``--lang``, else from the environment the way gettext reads it
(``LANGUAGE``, ``LC_ALL``, ``LC_MESSAGES``, ``LANG``): ``vi...`` gives Vietnamese, anything else
English.
"""

from __future__ import annotations

import ast
import gettext
import io
import os
import struct
from collections.abc import Mapping
from importlib import resources

LANGUAGES = ("vi", "en")
_translations: gettext.NullTranslations = gettext.NullTranslations()
_language = "en"


def current_language() -> str:
    return _language


def choose_language(flag: str | None, env: Mapping[str, str] | None = None) -> str:
    if flag:
        return flag
    env = os.environ if env is None else env
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(name)
        if value:
            return "vi" if value.split(":")[0].lower().startswith("vi") else "en"
    return "en"


def parse_po(text: str) -> dict[str, str]:
    """msgid -> msgstr of a ``.po`` file (plain entries; fuzzy and untranslated ones are left
    out, as msgfmt does). The header entry (empty msgid) is kept: gettext reads the charset
    from it."""
    entries: dict[str, str] = {}
    current: tuple[list[str], list[str], bool] | None = None  # msgid, msgstr, fuzzy
    target: list[str] | None = None
    next_fuzzy = False

    def flush() -> None:
        if current is not None:
            msgid, msgstr, fuzzy = current
            if msgstr and "".join(msgstr) and not fuzzy:
                entries["".join(msgid)] = "".join(msgstr)

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#,"):
            next_fuzzy = "fuzzy" in line
        elif not line or line.startswith("#"):
            continue
        elif line.startswith("msgid "):
            flush()
            current = ([_unquote(line[6:], number)], [], next_fuzzy)
            target, next_fuzzy = current[0], False
        elif line.startswith("msgstr ") and current is not None:
            current[1].append(_unquote(line[7:], number))
            target = current[1]
        elif line.startswith('"') and target is not None:
            target.append(_unquote(line, number))
        else:
            raise ValueError(f"line {number}: cannot read {raw!r}")
    flush()
    return entries


def _unquote(token: str, number: int) -> str:
    token = token.strip()
    if not (token.startswith('"') and token.endswith('"')):
        raise ValueError(f"line {number}: expected a quoted string, got {token!r}")
    value = ast.literal_eval(token)  # the C escapes a .po file uses are Python's too
    if not isinstance(value, str):
        raise ValueError(f"line {number}: not a string")
    return value


def compile_po(entries: Mapping[str, str]) -> bytes:
    """The GNU ``.mo`` bytes of ``entries`` (little-endian, no hash table), as msgfmt writes."""
    keys = sorted(entries)
    ids = [k.encode("utf-8") for k in keys]
    strs = [entries[k].encode("utf-8") for k in keys]
    count = len(keys)
    header = 7 * 4
    ids_table = header
    strs_table = ids_table + count * 8
    data_start = strs_table + count * 8
    offsets: list[tuple[int, int]] = []
    data = b""
    for blob in ids + strs:
        offsets.append((len(blob), data_start + len(data)))
        data += blob + b"\0"
    out = struct.pack("<7I", 0x950412DE, 0, count, ids_table, strs_table, 0, data_start)
    for length, offset in offsets:
        out += struct.pack("<2I", length, offset)
    return out + data


def catalogue_text(language: str) -> str | None:
    """The ``.po`` source of ``language``; None for the source language (English)."""
    if language == "en":
        return None
    return (
        resources.files(__name__.rpartition(".")[0])
        .joinpath(f"locale/{language}.po")
        .read_text("utf-8")
    )


def install(language: str) -> None:
    """Make ``_`` translate into ``language`` from now on."""
    global _translations, _language
    _language = language
    text = catalogue_text(language)
    if text is None:
        _translations = gettext.NullTranslations()
        return
    _translations = gettext.GNUTranslations(io.BytesIO(compile_po(parse_po(text))))


def _(message: str) -> str:
    return _translations.gettext(message)
