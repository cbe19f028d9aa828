"""How ``loa-provision`` writes to a person: marks, colour and tables on a terminal, plain text
when piped (a technician's log, a support ticket) or when ``NO_COLOR`` is set.

Column widths count what a terminal shows: Vietnamese text is NFC-normalised first, and
combining marks take no column, so a table of Vietnamese lines stays aligned.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

OK, WARN, FAIL, INFO, SKIP = "ok", "warn", "fail", "info", "skip"
_MARKS = {OK: "✓", WARN: "!", FAIL: "✗", INFO: "·", SKIP: "-"}
_PLAIN = {OK: "[ OK ]", WARN: "[WARN]", FAIL: "[FAIL]", INFO: "[INFO]", SKIP: "[SKIP]"}
_COLOURS = {OK: "32", WARN: "33", FAIL: "31;1", INFO: "36", SKIP: "2"}


@dataclass
class Terminal:
    stream: TextIO
    colour: bool

    @classmethod
    def for_stream(cls, stream: TextIO | None = None) -> Terminal:
        stream = stream or sys.stdout
        tty = hasattr(stream, "isatty") and stream.isatty()
        colour = tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        return cls(stream, bool(colour))

    def paint(self, text: str, status: str) -> str:
        if not self.colour:
            return text
        return f"\033[{_COLOURS[status]}m{text}\033[0m"

    def mark(self, status: str) -> str:
        if not self.colour:
            return _PLAIN[status]
        return self.paint(_MARKS[status], status)

    def line(self, text: str = "") -> None:
        print(text, file=self.stream)

    def say(self, status: str, text: str) -> None:
        """One finding: its mark, then the text."""
        self.line(f"{self.mark(status)} {text}")

    def advise(self, label: str, text: str) -> None:
        """The fix under a finding, indented past the mark."""
        self.line(f"       {label} {text}")

    def heading(self, text: str) -> None:
        self.line(f"\033[1m{text}\033[0m" if self.colour else text)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        for text in table_lines(header, rows):
            self.line(text)


def width(text: str) -> int:
    """Terminal columns of ``text``: combining marks take none, wide (CJK) characters two."""
    total = 0
    for char in unicodedata.normalize("NFC", text):
        if unicodedata.combining(char):
            continue
        total += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return total


def pad(text: str, columns: int) -> str:
    return text + " " * max(0, columns - width(text))


def table_lines(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [width(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], width(cell))
    lines = ["  ".join(pad(h, w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(pad(c, w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines
