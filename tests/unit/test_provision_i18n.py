"""``loa-provision`` in Vietnamese: every string marked with ``_()`` in ``provisioning/*.py`` has a
translation in ``provisioning/locale/vi.po`` with the same placeholders; the catalogue reads and
compiles the way msgfmt would and gettext takes it; the language comes from ``--lang`` or the
environment; and the installed command really speaks Vietnamese.

The marked strings are found with the ``ast`` module, not xgettext: xgettext 0.21 does not look
inside f-strings (``f"{_('What to do:')} ..."``), so a catalogue built only from its template
would miss them without anyone noticing.
"""

from __future__ import annotations

import ast
import gettext
import io
import os
import shutil
import string
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning import i18n
from provisioning.i18n import choose_language, compile_po, parse_po

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "provisioning"
CATALOGUE = PACKAGE / "locale" / "vi.po"
BIN = Path(sys.executable).parent
MISSING_CONFIG = "/nonexistent/station.toml"


def _is_marker(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_"


def _literal(call: ast.Call) -> str | None:
    """The one string literal ``_()`` is called with (implicit concatenation is already joined
    by the parser), else None."""
    if len(call.args) != 1 or call.keywords:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    return None


def _calls() -> Iterator[tuple[str, ast.Call]]:
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text("utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if _is_marker(node):
                assert isinstance(node, ast.Call)
                yield f"provisioning/{path.name}:{node.lineno}", node


def marked_strings() -> dict[str, list[str]]:
    """Every ``_("...")`` string of ``provisioning/*.py`` -> where it is used."""
    found: dict[str, list[str]] = {}
    for where, call in _calls():
        text = _literal(call)
        if text is not None:
            found.setdefault(text, []).append(where)
    return found


def catalogue() -> dict[str, str]:
    """msgid -> msgstr of vi.po, without the header entry."""
    entries = parse_po(CATALOGUE.read_text("utf-8"))
    entries.pop("", None)
    return entries


def placeholders(text: str) -> Counter[tuple[str, str, str]]:
    """The replacement fields of a ``str.format`` template: (name, conversion, format spec)."""
    return Counter(
        (name, conversion or "", spec or "")
        for _, name, spec, conversion in string.Formatter().parse(text)
        if name is not None
    )


@pytest.fixture
def restore_language() -> Iterator[None]:
    before = i18n.current_language()
    try:
        yield
    finally:
        i18n.install(before)


# -- the catalogue is complete and consistent ------------------------------------------------------
def test_the_marked_strings_are_found() -> None:
    strings = marked_strings()
    assert len(strings) > 100, "the AST scan found almost nothing: is provisioning/ there?"
    assert "What to do:" in strings  # inside an f-string: the case xgettext 0.21 misses
    assert "No configuration: {path} does not exist." in strings


def test_every_marker_is_called_with_one_string_literal() -> None:
    """``_(f"...")`` or ``_(variable)`` can never be found in the catalogue: always English."""
    wrong = [where for where, call in _calls() if _literal(call) is None]
    assert not wrong, "_() must take one string literal: " + ", ".join(wrong)


def test_every_marked_string_has_a_vietnamese_translation() -> None:
    translated = catalogue()
    missing = [
        f"{text!r} ({', '.join(where)})"
        for text, where in sorted(marked_strings().items())
        if not translated.get(text, "").strip()
    ]
    assert not missing, (
        f"{len(missing)} string(s) without a Vietnamese translation in {CATALOGUE.name}:\n"
        + "\n".join(missing)
    )


def test_every_translation_keeps_the_placeholders_of_its_source() -> None:
    wrong = []
    for msgid, msgstr in sorted(catalogue().items()):
        try:
            source, target = placeholders(msgid), placeholders(msgstr)
        except ValueError as exc:
            wrong.append(f"{msgid!r}: {exc}")
            continue
        if source != target:
            wrong.append(f"{msgid!r} -> {msgstr!r}: {sorted(source)} != {sorted(target)}")
    assert not wrong, "placeholders differ:\n" + "\n".join(wrong)


def test_every_translation_keeps_the_surrounding_whitespace() -> None:
    """A prompt ends with a space ("... to go on: "); losing it glues the answer to it."""

    def ends(text: str) -> tuple[bool, bool]:
        return text[:1].isspace(), text[-1:].isspace()

    wrong = [f"{i!r} -> {s!r}" for i, s in catalogue().items() if ends(i) != ends(s)]
    assert not wrong, "\n".join(wrong)


def test_the_header_names_the_language_charset_and_plural_forms() -> None:
    header = parse_po(CATALOGUE.read_text("utf-8"))[""]
    for field in (
        "Project-Id-Version: loa\n",
        "Language: vi\n",
        "MIME-Version: 1.0\n",
        "Content-Type: text/plain; charset=UTF-8\n",
        "Content-Transfer-Encoding: 8bit\n",
        "Plural-Forms: nplurals=1; plural=0;\n",
    ):
        assert field in header


def test_the_catalogue_ships_in_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert "locale/*.po" in project["tool"]["setuptools"]["package-data"]["provisioning"]
    assert i18n.catalogue_text("vi") == CATALOGUE.read_text("utf-8")
    assert i18n.catalogue_text("en") is None


# -- parse_po and compile_po -----------------------------------------------------------------------
def test_the_catalogue_compiles_and_gettext_translates_with_it() -> None:
    entries = parse_po(CATALOGUE.read_text("utf-8"))
    translations = gettext.GNUTranslations(io.BytesIO(compile_po(entries)))
    assert translations.info()["language"] == "vi"
    assert (translations.charset() or "").lower() == "utf-8"
    assert translations.gettext("Ready to go on air.") == "Sẵn sàng phát sóng."
    assert translations.gettext("What to do:") == "Cách xử lý:"
    assert translations.gettext("yes") == "có"
    assert translations.gettext("A string Loa never marked.") == "A string Loa never marked."
    for msgid, msgstr in entries.items():
        if msgid:
            assert translations.gettext(msgid) == msgstr


def test_compile_po_round_trips_through_gnu_translations() -> None:
    entries = {
        "": "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=1; plural=0;\n",
        "Station {station}": "Trạm {station}",
        "Nothing erased.": "Chưa xóa gì.",
    }
    translations = gettext.GNUTranslations(io.BytesIO(compile_po(entries)))
    assert translations.gettext("Station {station}") == "Trạm {station}"
    assert translations.gettext("Nothing erased.") == "Chưa xóa gì."
    assert translations.gettext("Station") == "Station"
    assert translations.gettext("") != ""  # the header, as gettext keeps it


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="msgfmt (gettext) not installed")
def test_the_catalogue_reads_as_msgfmt_reads_it(tmp_path: Path) -> None:
    """GNU msgfmt checks the file (syntax, header, python-brace-format) and compiles it; gettext
    gives the same translation for every string from its .mo as from ours."""
    mo = tmp_path / "vi.mo"
    subprocess.run(
        ["msgfmt", "--check", "-o", str(mo), str(CATALOGUE)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with mo.open("rb") as handle:
        theirs = gettext.GNUTranslations(handle)
    ours = gettext.GNUTranslations(io.BytesIO(compile_po(parse_po(CATALOGUE.read_text("utf-8")))))
    for msgid in [*catalogue(), *marked_strings()]:
        assert ours.gettext(msgid) == theirs.gettext(msgid), msgid


PO_SAMPLE = r"""# A translator's comment.
msgid ""
msgstr ""
"Project-Id-Version: loa\n"
"Content-Type: text/plain; charset=UTF-8\n"

#: provisioning/check.py:1
#, fuzzy, python-brace-format
msgid "Old {thing}"
msgstr "Cũ {thing}"

#, python-brace-format
msgid ""
"A long message "
"on {count} lines"
msgstr ""
"Một thông báo dài "
"trên {count} dòng"

msgid "Untranslated"
msgstr ""

msgid "Say \"yes\"\tnow"
msgstr "Nói \"có\"\tngay"

#~ msgid "Obsolete"
#~ msgstr "Lỗi thời"
"""


def test_parse_po_reads_multiline_entries_and_skips_fuzzy_and_untranslated_ones() -> None:
    entries = parse_po(PO_SAMPLE)
    assert entries == {
        "": "Project-Id-Version: loa\nContent-Type: text/plain; charset=UTF-8\n",
        "A long message on {count} lines": "Một thông báo dài trên {count} dòng",
        'Say "yes"\tnow': 'Nói "có"\tngay',
    }


def test_a_fuzzy_flag_covers_only_the_entry_after_it() -> None:
    entries = parse_po(
        '#, fuzzy\nmsgid "First"\nmsgstr "Thứ nhất"\n\nmsgid "Second"\nmsgstr "Thứ hai"\n'
    )
    assert entries == {"Second": "Thứ hai"}


def test_parse_po_names_the_line_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_po('msgid "A"\nmsgstr Not quoted\n')


# -- the language ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        ("vi", {"LANG": "en_US.UTF-8"}, "vi"),
        ("en", {"LANGUAGE": "vi", "LANG": "vi_VN.UTF-8"}, "en"),
        (None, {"LANGUAGE": "en:vi", "LC_ALL": "vi_VN.UTF-8"}, "en"),
        (None, {"LANGUAGE": "vi:en", "LC_ALL": "en_US.UTF-8"}, "vi"),
        (None, {"LC_ALL": "vi_VN.UTF-8", "LC_MESSAGES": "en_US.UTF-8"}, "vi"),
        (None, {"LC_ALL": "C.UTF-8", "LANG": "vi_VN.UTF-8"}, "en"),
        (None, {"LC_MESSAGES": "vi_VN.UTF-8", "LANG": "en_US.UTF-8"}, "vi"),
        (None, {"LC_MESSAGES": "en_GB.UTF-8", "LANG": "vi_VN.UTF-8"}, "en"),
        (None, {"LANGUAGE": "", "LC_ALL": "", "LANG": "vi_VN.UTF-8"}, "vi"),
        (None, {"LANG": "vi_VN.UTF-8"}, "vi"),
        (None, {"LANG": "vi"}, "vi"),
        (None, {"LANG": "C.UTF-8"}, "en"),
        (None, {"LANG": "C"}, "en"),
        (None, {}, "en"),
    ],
)
def test_choose_language(flag: str | None, env: dict[str, str], expected: str) -> None:
    assert choose_language(flag, env) == expected


def test_choose_language_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)
    assert choose_language(None) == "en"
    monkeypatch.setenv("LANG", "vi_VN.UTF-8")
    assert choose_language(None) == "vi"


@pytest.mark.usefixtures("restore_language")
def test_install_switches_the_marker() -> None:
    i18n.install("vi")
    assert i18n.current_language() == "vi"
    assert i18n._("Ready to go on air.") == "Sẵn sàng phát sóng."
    assert i18n._("Not a Loa string.") == "Not a Loa string."
    i18n.install("en")
    assert i18n.current_language() == "en"
    assert i18n._("Ready to go on air.") == "Ready to go on air."


# -- the installed command -------------------------------------------------------------------------
def _check_without_config(lang: str, locale: str) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES")
    }
    environment.update(LANG=locale, PYTHONIOENCODING="utf-8", NO_COLOR="1")
    environment.pop("LOA_CONFIG", None)
    return subprocess.run(
        [str(BIN / "loa-provision"), "--lang", lang, "check", "--config", MISSING_CONFIG],
        env=environment,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )


def test_loa_provision_speaks_vietnamese_with_lang_vi() -> None:
    vi = catalogue()
    english = "No configuration: {path} does not exist."
    assert vi[english] != english
    done = _check_without_config("vi", "C.UTF-8")  # the flag wins over the locale
    assert done.returncode == 1, done.stderr
    assert vi[english].format(path=MISSING_CONFIG) in done.stdout
    assert vi["What to do:"] in done.stdout
    assert vi["Not ready: {count} problem(s) to fix."].format(count=1) in done.stdout
    assert english.format(path=MISSING_CONFIG) not in done.stdout
    assert "What to do:" not in done.stdout


def test_loa_provision_speaks_english_with_lang_en() -> None:
    done = _check_without_config("en", "vi_VN.UTF-8")
    assert done.returncode == 1, done.stderr
    assert f"No configuration: {MISSING_CONFIG} does not exist." in done.stdout
    assert "What to do:" in done.stdout
    assert "Not ready: 1 problem(s) to fix." in done.stdout
    assert catalogue()["What to do:"] not in done.stdout
