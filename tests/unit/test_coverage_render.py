"""Coverage renderers: the terminal table (colour only when asked), CSV, and the HTML report.

The scene lies in the past (Monday 2026-11-16, Vietnam time) so that the real CLI, which judges
against the real clock, sees every occurrence over: three stations in two communes, one province
bulletin at 06:00. 08230-01 played it; 08230-02 failed with a hostile reason; 08231-01 said
nothing and sent no heartbeat.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from agent.core.targets import StationId
from province.coverage import CoverageReport, CoverageRow, build_report
from province.coverage_render import render_csv, render_html, render_text
from province.registry import Registry
from tests.unit.test_coverage import Reports, key, publish, slot

VN = timezone(timedelta(hours=7))
A1, A2 = StationId.parse("25/08230/08230-01"), StationId.parse("25/08230/08230-02")
B1 = StationId.parse("25/08231/08231-01")
DAY = datetime(2026, 11, 16, tzinfo=VN)
WINDOW = (DAY, DAY + timedelta(days=1))
NOW = DAY + timedelta(days=2)
HOSTILE = '<script>alert("x")</script>\x1b[2J"><img src=x onerror=alert(1)>'
ROOT = Path(__file__).resolve().parents[2]


def make_scene(home: Path) -> Path:
    """A province home with a registry holding the scene; returns the registry path."""
    from agent.core import dsse

    path = home / "registry.db"
    with Registry(path) as registry:
        registry.set_meta("province", "25")
        for station in (A1, A2, B1):
            registry.add_station(station, b"cert", dsse.public_raw(key(station)).hex())
        media = {
            "news": {"url": "https://media.example.vn/25/news.mp3", "sha256": "ab" * 32,
                     "bytes": 1000, "duration_s": 600.0, "title": "Bản tin sáng",
                     "category": "news"},
        }  # fmt: skip
        publish(registry, media=media, slots=[slot("morning", "06:00")])
        reports = Reports(registry)
        six = DAY.replace(hour=6)
        reports.asrun(A1, "25@25", "morning", six, "complete")
        reports.asrun(A2, "25@25", "morning", six, "failed", reason=HOSTILE)
        reports.heartbeats(A1, DAY.replace(hour=5), DAY.replace(hour=7), 60)
        reports.heartbeats(A2, DAY.replace(hour=5), DAY.replace(hour=7), 60)
    return path


@pytest.fixture
def report(tmp_path: Path) -> CoverageReport:
    with Registry(make_scene(tmp_path)) as registry:
        return build_report(registry, *WINDOW, NOW)


class Parsed(HTMLParser):
    """Every start tag (with its attributes) and all the text, as a browser would see them."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def classes(self, tag: str) -> list[str]:
        return [a.get("class") or "" for t, a in self.tags if t == tag]


def check_html(document: str) -> Parsed:
    parsed = Parsed(document)
    names = [t for t, _ in parsed.tags]
    # The hostile reason is text, never markup: no script, no image, no event handler.
    assert "script" not in names and "img" not in names
    assert not any(k.startswith("on") for _, attrs in parsed.tags for k in attrs)
    assert not any(
        (attrs.get(k) or "").startswith(("http:", "https:", "//"))
        for _, attrs in parsed.tags
        for k in ("src", "href")
    )  # no external assets
    text = "".join(parsed.text)
    assert '<script>alert("x")</script>\ufffd[2J"><img src=x onerror=alert(1)>' in text
    assert "\x1b" not in document
    # The charts: coverage per commune, availability lines and heatmap, as inline SVG.
    svgs = parsed.classes("svg")
    assert {"chart coverage-chart", "chart availability-chart", "chart availability-heatmap"} <= (
        set(svgs)
    )
    return parsed


def test_html_report_is_one_safe_document_with_its_charts(report: CoverageReport) -> None:
    document = render_html(report)
    assert document.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in document
    parsed = check_html(document)
    text = "".join(parsed.text)
    for commune in ("25/08230", "25/08231"):
        assert commune in text
    assert "Bản tin sáng" in text  # Vietnamese as it is, not as entities
    # One bar segment per status present: 08230 complete + failed, 08231 no report.
    segments = [c for c in parsed.classes("rect") if c.startswith("seg-")]
    assert sorted(segments) == ["seg-complete", "seg-failed", "seg-no_report"]
    # The communes below 100% with why, and the station that said nothing named as offline.
    assert "station offline" in text and "Communes below 100%" in text
    assert "33.3%" in text  # 1 of 3 expected: the KPI
    # Availability: a line per commune.
    assert len(parsed.classes("polyline")) >= 2


def test_terminal_text_is_coloured_only_when_asked(report: CoverageReport) -> None:
    plain = render_text(report, color=False)
    assert "\x1b" not in plain
    assert "communes below 100%" in plain and "station offline" in plain
    coloured = render_text(report, color=True)
    assert re.search("\x1b\\[31m *50\\.0%\x1b\\[0m", coloured)  # 08230: 1 of 2, red
    # Every escape in it is one of ours; the station's ESC was replaced before rendering.
    assert coloured.count("\x1b[") == sum(
        coloured.count(code) for code in ("\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[0m")
    )
    # Colour goes around padded cells: without the codes the text is the plain one.
    for code in ("\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[0m"):
        coloured = coloured.replace(code, "")
    assert coloured == plain


def test_csv_cells_never_start_a_formula(report: CoverageReport) -> None:
    row = report.rows[0]
    fields = {f: getattr(row, f) for f in CoverageRow.__slots__}  # type: ignore[attr-defined]
    fields["title"] = '=HYPERLINK("http://x")'
    evil = CoverageRow(**fields)
    (_, cells) = csv.reader(io.StringIO(render_csv([evil])))
    assert cells[4] == '\'=HYPERLINK("http://x")'
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "province.cli", *args],
        capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
    )  # fmt: skip


def test_cli_writes_the_html_and_the_csv(tmp_path: Path) -> None:
    make_scene(tmp_path / "home")
    out = tmp_path / "report" / "coverage.html"
    window = ["--from", WINDOW[0].isoformat(), "--to", WINDOW[1].isoformat()]
    done = run_cli("coverage", "--home", str(tmp_path / "home"), *window, "--html", str(out),
                   "--csv")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote the HTML report to {out}" in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("day,commune,stream,slot,title,")
    assert [ln.split(",")[1] for ln in lines[1:]] == ["25/08230", "25/08231"]
    assert lines[1].endswith(',0.5000,"failed: <script>alert(""x"")</script>\ufffd[2J""><img '
                             'src=x onerror=alert(1)> ×1"')  # fmt: skip
    check_html(out.read_text(encoding="utf-8"))

    # Piped, the default table has no colour; it ends with the availability per station.
    done = run_cli("coverage", "--home", str(tmp_path / "home"), *window)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert "communes below 100%" in done.stdout
    total = next(ln for ln in done.stdout.splitlines() if ln.startswith("TOTAL"))
    assert total.split()[-9:] == ["3", "1", "0", "0", "1", "0", "1", "0", "33.3%"]
    assert "25/08231/08231-01" in done.stdout.split("availability")[-1]


def test_report_now_cuts_availability_not_coverage(tmp_path: Path) -> None:
    with Registry(make_scene(tmp_path)) as registry:
        early = build_report(registry, *WINDOW, DAY.replace(hour=6, minute=5))
    (commune_a, commune_b) = early.communes
    assert (commune_a.pending, commune_b.pending) == (0 + 0, 1)  # 08230 both reported already
    assert early.available.judged[1] == DAY.replace(hour=6, minute=5).astimezone(UTC)
