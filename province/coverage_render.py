"""Coverage reports for people: terminal tables, CSV, and one self-contained HTML file.

This module owns how a ``province.coverage.CoverageReport`` looks, nothing about what it says.
- Terminal: aligned tables; colour (coverage cells) only when the caller says the output is a
  terminal, so piped output stays plain text.
- CSV: one line per day, commune and bulletin, with the reasons; cells that a spreadsheet would
  take for a formula (leading ``= + - @``) get a leading apostrophe.
- HTML: one UTF-8 file, no scripts, no external assets: inline CSS and SVG charts (coverage per
  commune as stacked bars, availability over time as lines per commune and a heatmap per
  station), then the tables. Every string that came from the registry goes through
  ``html.escape``: station text is untrusted.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from agent.core.timefmt import format_rfc3339
from province.availability import Availability, CommuneAvailability, StationAvailability
from province.coverage import (
    DEFAULT_TZ,
    CommuneSummary,
    CoverageReport,
    CoverageRow,
    below_full,
    local_time,
    top_causes,
)

# -- terminal ------------------------------------------------------------------------------------

_COUNT_HEADERS = (
    "expected", "complete", "untrusted", "partial", "failed", "missed", "no report", "pending",
    "coverage",
)  # fmt: skip
_COUNT_FIELDS = (
    "expected", "complete", "untrusted", "partial", "failed", "missed", "no_report", "pending",
)  # fmt: skip
_GREEN, _YELLOW, _RED, _RESET = "\033[32m", "\033[33m", "\033[31m", "\033[0m"
WARN_BELOW = 0.9  # coverage or availability under this is red; under 100% yellow


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _counts(r: CoverageRow | CommuneSummary) -> list[str]:
    return [str(getattr(r, f)) for f in _COUNT_FIELDS] + [_percent(r.complete, r.expected)]


def _sums(rows: Sequence[CoverageRow] | Sequence[CommuneSummary]) -> list[str]:
    sums = [sum(getattr(r, f) for r in rows) for f in _COUNT_FIELDS]
    return [str(n) for n in sums] + [_percent(sums[1], sums[0])]


def _paint(cell: str, fraction: float | None) -> str:
    if fraction is None:
        return cell
    colour = _GREEN if fraction >= 1.0 else _YELLOW if fraction >= WARN_BELOW else _RED
    return f"{colour}{cell}{_RESET}"


def align_table(
    header: Sequence[str],
    body: Sequence[Sequence[str]],
    align: str,
    *,
    total: bool = True,
    paint: Sequence[float | None] | None = None,
    paint_column: int = -1,
) -> str:
    """Columns aligned as ``align`` says per column (``l`` or ``r``), a rule under the header
    (and above the last line when it is a total). ``paint``: per body line, the fraction that
    colours its ``paint_column`` cell (around the padded cell, so alignment holds)."""
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(line: Sequence[str], fraction: float | None = None) -> str:
        cells = [
            cell.ljust(w) if side == "l" else cell.rjust(w)
            for cell, w, side in zip(line, widths, align, strict=True)
        ]
        if fraction is not None:
            cells[paint_column] = _paint(cells[paint_column], fraction)
        return "  ".join(cells).rstrip()

    fractions = list(paint) if paint is not None else [None] * len(body)
    rule = "  ".join("-" * w for w in widths)
    lines = [render(header), rule]
    data = body[:-1] if total else body
    lines += [render(line, f) for line, f in zip(data, fractions, strict=False)]
    if total and body:
        lines += [rule] if data else []
        lines.append(render(body[-1], fractions[-1] if len(fractions) == len(body) else None))
    return "\n".join(lines) + "\n"


def bulletin(row: CoverageRow) -> str:
    return row.slot if row.title == row.slot else f"{row.title} [{row.slot}]"


def render_table(rows: Sequence[CoverageRow], tz: str = DEFAULT_TZ, *, color: bool = False) -> str:
    """The rows by local day, commune and time (local to ``tz``), as an aligned table ending
    with a total line."""
    zone = ZoneInfo(tz)
    header = ["day", "commune", "time", "bulletin", "stream", *_COUNT_HEADERS]
    body = [
        [
            r.day.isoformat(),
            r.commune,
            r.scheduled_at.astimezone(zone).strftime("%H:%M"),
            bulletin(r),
            r.stream,
            *_counts(r),
        ]
        for r in rows
    ]
    occurrences_word = "occurrence" if len(rows) == 1 else "occurrences"
    body.append(["TOTAL", f"{len(rows)} {occurrences_word}", "", "", "", *_sums(rows)])
    expected, complete = sum(r.expected for r in rows), sum(r.complete for r in rows)
    paint = [r.coverage if r.expected else None for r in rows]
    paint.append(complete / expected if expected else None)
    return align_table(header, body, "l" * 5 + "r" * 9, paint=paint if color else None)


def render_summary(summaries: Sequence[CommuneSummary], *, color: bool = False) -> str:
    """The per-commune summary as an aligned table, ending with a total line."""
    header = ["commune", "occurrences", *_COUNT_HEADERS]
    body = [[s.commune, str(s.occurrences), *_counts(s)] for s in summaries]
    body.append(["TOTAL", str(sum(s.occurrences for s in summaries)), *_sums(summaries)])
    expected, complete = sum(s.expected for s in summaries), sum(s.complete for s in summaries)
    paint = [s.coverage if s.expected else None for s in summaries]
    paint.append(complete / expected if expected else None)
    return align_table(header, body, "l" + "r" * 10, paint=paint if color else None)


def render_below(summaries: Sequence[CommuneSummary]) -> str:
    """The communes below 100%, worst first, with their top causes; one line when none."""
    short = below_full(summaries)
    if not short:
        return "every commune at 100%\n" if summaries else "no bulletins expected\n"
    header = ["commune", "coverage", "why (station-occurrences)"]
    body = [[s.commune, _percent(s.complete, s.expected), top_causes(s)] for s in short]
    return align_table(header, body, "lrl", total=False)


def render_details(rows: Sequence[CoverageRow], tz: str = DEFAULT_TZ) -> str:
    """Every expected station that did not play complete: where, when, what and why."""
    zone = ZoneInfo(tz)
    header = ["day", "time", "station", "bulletin", "status", "why"]
    body = [
        [
            r.day.isoformat(),
            r.scheduled_at.astimezone(zone).strftime("%H:%M"),
            s.station,
            bulletin(r),
            s.status.replace("_", " "),
            s.detail,
        ]
        for r in rows
        for s in r.shortfalls
    ]
    if not body:
        return "no station fell short\n"
    return align_table(header, body, "l" * len(header), total=False)


def render_availability(
    available: Availability, tz: str = DEFAULT_TZ, *, color: bool = False
) -> str:
    """Availability per station (grouped by commune, each commune's mean first)."""
    header = ["commune / station", "heartbeats", "interval", "last heartbeat", "connected", "up"]
    body: list[list[str]] = []
    paint: list[float | None] = []
    for commune in available.communes():
        body.append([commune.commune, "", "", "", "", _percent(commune.fraction, 1)])
        paint.append(commune.fraction)
        for s in _members(available, commune):
            interval = f"{s.interval_s:.0f} s" + ("" if s.interval_inferred else "?")
            last = local_time(s.last_heartbeat, tz) if s.last_heartbeat else "never"
            body.append(
                ["  " + s.station, str(s.heartbeats), interval, last,
                 _percent(s.connected_fraction, 1), _percent(s.fraction, 1)]
            )  # fmt: skip
            paint.append(s.fraction)
    if not body:
        return "no stations enrolled\n"
    return align_table(header, body, "lrrlrr", total=False, paint=paint if color else None)


def _members(available: Availability, commune: CommuneAvailability) -> list[StationAvailability]:
    return sorted(
        (s for s in available.stations.values() if s.commune == commune.commune),
        key=lambda s: s.station,
    )


def render_set_aside(report: CoverageReport) -> str:
    """The as-runs not counted and why (a revoked station's); nothing when there are none."""
    if not report.set_aside:
        return ""
    lines = [f"\nas-runs set aside: {report.set_aside_count}\n"]
    lines += [f"  {s.station}  ×{s.count}  {s.reason}: {s.detail}\n" for s in report.set_aside]
    return "".join(lines)


def render_text(report: CoverageReport, *, color: bool = False) -> str:
    """All of it for the terminal: rows, communes, below 100% with why, station details,
    availability."""
    tz = report.tz
    start, end = local_time(report.window_start, tz), local_time(report.window_end, tz)
    parts = [
        f"coverage of occurrences from {start} to {end}; days and times in {tz}\n",
        render_table(report.rows, tz, color=color),
        "\nper commune\n",
        render_summary(report.communes, color=color),
        "\ncommunes below 100%\n",
        render_below(report.communes),
        "\nstations that fell short\n",
        render_details(report.rows, tz),
        render_set_aside(report),
        "\navailability (heartbeats, births and Wills; '?' = interval assumed)\n",
        render_availability(report.available, tz, color=color),
    ]
    return "".join(parts)


# -- CSV -----------------------------------------------------------------------------------------

CSV_FIELDS = (
    "day", "commune", "stream", "slot", "title", "scheduled_at", "expected", "complete",
    "untrusted", "partial", "failed", "missed", "no_report", "pending", "coverage", "why",
)  # fmt: skip


def csv_cell(text: str) -> str:
    """A spreadsheet takes a cell starting with = + - @ (or a tab, CR) for a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _row_why(row: CoverageRow) -> str:
    counts: dict[str, int] = {}
    for s in row.shortfalls:
        counts[s.cause] = counts.get(s.cause, 0) + 1
    return "; ".join(f"{c} ×{n}" for c, n in sorted(counts.items(), key=lambda i: (-i[1], i[0])))


def render_csv(rows: Iterable[CoverageRow]) -> str:
    """One CSV line per row: ``day`` local, ``scheduled_at`` RFC 3339 UTC, ``coverage`` a
    fraction, ``why`` the causes of its shortfalls with their counts."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        writer.writerow(
            [r.day.isoformat(), r.commune, r.stream, csv_cell(r.slot), csv_cell(r.title),
             format_rfc3339(r.scheduled_at), r.expected, r.complete, r.untrusted, r.partial,
             r.failed, r.missed, r.no_report, r.pending, f"{r.coverage:.4f}",
             csv_cell(_row_why(r))]
        )  # fmt: skip
    return out.getvalue()


# -- HTML ----------------------------------------------------------------------------------------

_STATUS_STYLE = (  # status, colour, label (Vietnamese · English)
    ("complete", "#2e7d32", "Đầy đủ · complete"),
    ("untrusted", "#9ccc65", "Đồng hồ chưa tin cậy · clock untrusted"),
    ("partial", "#f9a825", "Một phần · partial"),
    ("failed", "#c62828", "Lỗi · failed"),
    ("missed", "#6a1b9a", "Bỏ lỡ · missed"),
    ("no_report", "#757575", "Không báo cáo · no report"),
    ("pending", "#cfd8dc", "Đang chờ · pending"),
)
_LINE_COLOURS = (
    "#1565c0", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#4e342e",
    "#558b2f", "#283593",
)  # fmt: skip
MAX_LINES = len(_LINE_COLOURS)  # commune lines on the availability chart (worst first)
MAX_HEAT_ROWS = 80  # station rows on the heatmap (least available first)

_CSS = """
body{font-family:"Noto Sans","Segoe UI",Roboto,Arial,sans-serif;margin:24px;color:#212121;
max-width:1100px}
h1{font-size:1.5em;margin-bottom:0}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
.sub{color:#616161;margin-top:4px}
.kpis{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.kpi{border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:140px}
.kpi b{display:block;font-size:1.6em}.kpi span{color:#616161;font-size:.85em}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
.good{color:#2e7d32}.warn{color:#ef6c00}.bad{color:#c62828;font-weight:bold}
svg text{font-family:inherit;font-size:11px;fill:#212121}
.note{color:#616161;font-size:.85em}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _grade(fraction: float) -> str:
    return "good" if fraction >= 1.0 else "warn" if fraction >= WARN_BELOW else "bad"


def _pct_cell(part: float, whole: float) -> str:
    if not whole:
        return '<td class="n">-</td>'
    return f'<td class="n {_grade(part / whole)}">{_e(_percent(part, whole))}</td>'


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int) -> str:
    """``rows`` hold cells already rendered as HTML (``<td>...``) or plain text to escape."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    lines = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if cell.startswith("<td"):
                cells.append(cell)
            else:
                cls = ' class="n"' if i >= numeric_from else ""
                cells.append(f"<td{cls}>{_e(cell)}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def coverage_chart(summaries: Sequence[CommuneSummary]) -> str:
    """One stacked bar per commune: its expected station-occurrences split by status."""
    label_w, bar_w, right_w, row_h, top = 120, 520, 70, 24, 8
    shown = [s for s in summaries if s.expected]
    height = top + row_h * max(len(shown), 1) + 8
    width = label_w + bar_w + right_w
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart coverage-chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="coverage per commune">'
    ]
    if not shown:
        parts.append(f'<text x="0" y="{top + 14}">no bulletins expected</text>')
    for i, s in enumerate(shown):
        y = top + i * row_h
        parts.append(f'<text x="0" y="{y + 15}">{_e(s.commune)}</text>')
        x = float(label_w)
        for status, colour, label in _STATUS_STYLE:
            count = getattr(s, status)
            if not count:
                continue
            w = bar_w * count / s.expected
            parts.append(
                f'<rect class="seg-{status}" x="{x:.1f}" y="{y + 3}" width="{w:.1f}" '
                f'height="{row_h - 6}" fill="{colour}"><title>{_e(s.commune)}: {_e(label)} '
                f"{count}/{s.expected}</title></rect>"
            )
            x += w
        parts.append(
            f'<text x="{label_w + bar_w + 6}" y="{y + 15}" class="{_grade(s.coverage)}">'
            f"{_e(_percent(s.complete, s.expected))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _legend() -> str:
    items = "".join(
        f'<span style="display:inline-block;margin-right:12px"><span style="display:inline-block;'
        f'width:10px;height:10px;background:{colour}"></span> {_e(label)}</span>'
        for _, colour, label in _STATUS_STYLE
    )
    return f'<div class="note">{items}</div>'


def _bucket_label(moment: datetime, bucket: timedelta, tz: str) -> str:
    local = moment.astimezone(ZoneInfo(tz))
    if bucket >= timedelta(days=1):
        return local.strftime("%d/%m")
    return local.strftime("%H:%M") if local.hour or local.minute else local.strftime("%d/%m")


def _x_labels(
    available: Availability, x0: float, step: float, y: float, tz: str, anchor: str = "start"
) -> list[str]:
    every = max(1, len(available.buckets) // 8)
    return [
        f'<text x="{x0 + i * step:.1f}" y="{y:.1f}" text-anchor="{anchor}">'
        f"{_e(_bucket_label(edge, available.bucket, tz))}</text>"
        for i, edge in enumerate(available.buckets)
        if i % every == 0
    ]


def availability_lines(available: Availability, tz: str) -> str:
    """Availability over time: one line per commune (the worst ``MAX_LINES``), 0-100%."""
    communes = sorted(available.communes(), key=lambda c: (c.fraction, c.commune))[:MAX_LINES]
    left, plot_w, plot_h, top, legend_h = 40, 640, 180, 10, 18 * len(communes) + 10
    width, height = left + plot_w + 20, top + plot_h + 24 + legend_h
    n = len(available.buckets)
    step = plot_w / max(n - 1, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart availability-chart" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="availability over time">'
    ]
    for pct in (0, 25, 50, 75, 100):
        y = top + plot_h * (1 - pct / 100)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e0e0e0"/>'
            f'<text x="0" y="{y + 4:.1f}">{pct}%</text>'
        )
    parts += _x_labels(available, left, step, top + plot_h + 16, tz, anchor="middle")
    for index, commune in enumerate(communes):
        colour = _LINE_COLOURS[index % len(_LINE_COLOURS)]
        for run in _runs(commune.buckets):
            points = " ".join(f"{left + i * step:.1f},{top + plot_h * (1 - v):.1f}" for i, v in run)
            if len(run) == 1:
                i, v = run[0]
                parts.append(
                    f'<circle cx="{left + i * step:.1f}" cy="{top + plot_h * (1 - v):.1f}" '
                    f'r="2.5" fill="{colour}"/>'
                )
            else:
                parts.append(
                    f'<polyline class="line" fill="none" stroke="{colour}" stroke-width="2" '
                    f'points="{points}"><title>{_e(commune.commune)}</title></polyline>'
                )
        y = top + plot_h + 30 + 18 * index
        parts.append(
            f'<rect x="{left}" y="{y - 9}" width="12" height="4" fill="{colour}"/>'
            f'<text x="{left + 18}" y="{y}">{_e(commune.commune)} '
            f"({_e(_percent(commune.fraction, 1))})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """Consecutive known values, so that a future (unknown) bucket breaks the line."""
    runs: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for i, v in enumerate(values):
        if v is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((i, v))
    if current:
        runs.append(current)
    return runs


def _heat_colour(fraction: float) -> str:
    """Red at 0, amber at half, green at 1 (HSL hue 0..120)."""
    return f"hsl({120 * fraction:.0f},65%,{45 + 10 * (1 - fraction):.0f}%)"


def availability_heatmap(available: Availability, tz: str) -> str:
    """One row per station (the least available ``MAX_HEAT_ROWS``), one cell per bucket."""
    stations = sorted(available.stations.values(), key=lambda s: (s.commune, s.station))
    if len(stations) > MAX_HEAT_ROWS:
        worst = sorted(stations, key=lambda s: (s.fraction, s.station))[:MAX_HEAT_ROWS]
        stations = sorted(worst, key=lambda s: (s.commune, s.station))
    label_w, row_h, top = 150, 14, 4
    n = len(available.buckets)
    cell_w = max(3.0, min(24.0, 600 / max(n, 1)))
    width = label_w + cell_w * n + 60
    height = top + row_h * max(len(stations), 1) + 22
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart availability-heatmap" '
        f'width="{width:.0f}" height="{height}" viewBox="0 0 {width:.0f} {height}" role="img" '
        'aria-label="availability per station over time">'
    ]
    for row, s in enumerate(stations):
        y = top + row * row_h
        parts.append(f'<text x="0" y="{y + 11}">{_e(s.station)}</text>')
        for i, (edge, value) in enumerate(zip(available.buckets, s.buckets, strict=True)):
            if value is None:
                continue
            when = local_time(edge, tz)
            parts.append(
                f'<rect x="{label_w + i * cell_w:.1f}" y="{y}" width="{cell_w - 0.5:.1f}" '
                f'height="{row_h - 1}" fill="{_heat_colour(value)}"><title>{_e(s.station)} '
                f"{_e(when)}: {_e(_percent(value, 1))}</title></rect>"
            )
        parts.append(
            f'<text x="{label_w + cell_w * n + 6:.1f}" y="{y + 11}">'
            f"{_e(_percent(s.fraction, 1))}</text>"
        )
    parts += _x_labels(available, label_w, cell_w, top + row_h * max(len(stations), 1) + 14, tz)
    parts.append("</svg>")
    return "".join(parts)


def _summary_rows(summaries: Sequence[CommuneSummary], with_day: bool) -> list[list[str]]:
    rows = []
    for s in summaries:
        head = [s.day.isoformat() if s.day else "", s.commune] if with_day else [s.commune]
        numbers = [str(getattr(s, f)) for f in _COUNT_FIELDS]
        rows.append([*head, str(s.occurrences), *numbers, _pct_cell(s.complete, s.expected)])
    return rows


def _below_table(short: Sequence[CommuneSummary]) -> str:
    if not short:
        return "<p>Tất cả các xã đạt 100% · every commune at 100%.</p>"
    rows = []
    for s in short:
        causes = "".join(f"<li>{_e(c.cause)} ×{c.count}</li>" for c in s.causes)
        stations = "<br>".join(_e(st) for st in sorted({st for c in s.causes for st in c.stations}))
        rows.append(
            [s.commune, _pct_cell(s.complete, s.expected), f"<td><ul>{causes}</ul></td>",
             f"<td>{stations}</td>"]
        )  # fmt: skip
    header = ["Xã · commune", "Tỷ lệ · coverage", "Nguyên nhân · why", "Cụm loa · stations"]
    return _table(header, rows, numeric_from=99)


def _details_table(rows: Sequence[CoverageRow], zone: ZoneInfo) -> str:
    lines = [
        [r.day.isoformat(), r.scheduled_at.astimezone(zone).strftime("%H:%M"), r.commune,
         s.station, bulletin(r), s.status.replace("_", " "), s.detail]
        for r in rows
        for s in r.shortfalls
    ]  # fmt: skip
    if not lines:
        return "<p>Không có · none.</p>"
    header = [
        "Ngày · day", "Giờ · time", "Xã · commune", "Cụm loa · station", "Bản tin · bulletin",
        "Kết quả · status", "Chi tiết · detail",
    ]  # fmt: skip
    return _table(header, lines, numeric_from=99)


_COUNT_HEADERS_HTML = (
    "dự kiến · expected", "đầy đủ · complete", "đồng hồ? · untrusted", "một phần · partial",
    "lỗi · failed", "bỏ lỡ · missed", "không báo cáo · no report", "đang chờ · pending",
    "tỷ lệ · coverage",
)  # fmt: skip


def _occurrences_table(rows: Sequence[CoverageRow], zone: ZoneInfo) -> str:
    lines = [
        [r.day.isoformat(), r.scheduled_at.astimezone(zone).strftime("%H:%M"), r.commune,
         bulletin(r), r.stream, *[str(getattr(r, f)) for f in _COUNT_FIELDS],
         _pct_cell(r.complete, r.expected)]
        for r in rows
    ]  # fmt: skip
    header = [
        "Ngày · day", "Giờ · time", "Xã · commune", "Bản tin · bulletin", "Luồng · stream",
        *_COUNT_HEADERS_HTML,
    ]  # fmt: skip
    return _table(header, lines, numeric_from=5)


def _days_table(days: Sequence[CommuneSummary]) -> str:
    header = ["Ngày · day", "Xã · commune", "Số bản tin · occurrences", *_COUNT_HEADERS_HTML]
    return _table(header, _summary_rows(days, with_day=True), numeric_from=2)


def _stations_table(available: Availability, tz: str) -> str:
    lines = []
    for commune in available.communes():
        for s in _members(available, commune):
            interval = f"{s.interval_s:.0f} s" + ("" if s.interval_inferred else " (assumed)")
            last = local_time(s.last_heartbeat, tz) if s.last_heartbeat else "never"
            lines.append(
                [s.commune, s.station, str(s.heartbeats), interval, last,
                 _pct_cell(s.connected_fraction, 1), _pct_cell(s.fraction, 1)]
            )  # fmt: skip
    header = [
        "Xã · commune", "Cụm loa · station", "heartbeats", "chu kỳ · interval",
        "heartbeat cuối · last heartbeat", "kết nối · connected", "hoạt động · up",
    ]  # fmt: skip
    return _table(header, lines, numeric_from=2)


_HOW = """<ul class="note">
<li>Expected: every active station inside a bulletin's target, from the newest published
version of each playlist, planned with the stations' own planner.</li>
<li>Coverage = complete / expected. A "complete" reported with an untrusted clock is counted
apart (untrusted), not as complete: when it played cannot be proved.</li>
<li>No as-run 5 minutes after a bulletin's media should have ended: "no report", or "station
offline since …" when its heartbeats and birth/Will messages say it was down at the start.</li>
<li>Availability: a heartbeat vouches for its station until the next is 50% overdue (interval
inferred from the heartbeats, else 300 s); a birth until the Will. Heartbeats still in a
station's outbox are not known yet.</li>
</ul>"""


def render_html(report: CoverageReport) -> str:
    """The whole report as one HTML document (UTF-8, no scripts, no external assets)."""
    tz, zone = report.tz, ZoneInfo(report.tz)
    rows, communes, available = report.rows, report.communes, report.available
    expected = sum(r.expected for r in rows)
    complete = sum(r.complete for r in rows)
    short = below_full(communes)
    ups = [s.fraction for s in available.stations.values()]
    province = _e(report.province or "?")
    window = f"{local_time(report.window_start, tz)} → {local_time(report.window_end, tz)}"
    kpis = [
        (_percent(complete, expected), "Tỷ lệ phát đầy đủ · coverage"),
        (f"{complete}/{expected}", "Lượt phát đầy đủ / dự kiến · complete / expected"),
        (str(sum(r.untrusted for r in rows)), "Đồng hồ chưa tin cậy · clock untrusted"),
        (f"{len(short)}/{len(communes)}", "Xã chưa đạt 100% · communes below 100%"),
        (_percent(sum(ups), len(ups)), "Tỷ lệ hoạt động · availability"),
    ]
    kpi_html = "".join(
        f'<div class="kpi"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for v, k in kpis
    )
    sections = [
        "<!DOCTYPE html>",
        '<html lang="vi">',
        '<head>\n<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Loa — Báo cáo phát bản tin tỉnh {province} · coverage report</title>",
        f"<style>{_CSS}</style>\n</head>\n<body>",
        f"<h1>Báo cáo phát bản tin · Coverage report — tỉnh {province}</h1>",
        f'<p class="sub">{_e(window)} ({_e(tz)}) · lập lúc · generated '
        f"{_e(local_time(report.now, tz))}</p>",
        f'<div class="kpis">{kpi_html}</div>',
        "<h2>Tỷ lệ phát theo xã · Coverage per commune</h2>",
        coverage_chart(communes),
        _legend(),
        "<h2>Xã chưa đạt 100% và nguyên nhân · Communes below 100%, and why</h2>",
        _below_table(short),
        "<h2>Tỷ lệ hoạt động theo thời gian · Availability over time</h2>",
        '<p class="note">Theo xã (trung bình các cụm loa) · per commune (mean of its stations), '
        f"{_e(_bucket_words(available.bucket))}</p>",
        availability_lines(available, tz),
        '<p class="note">Theo cụm loa · per station</p>',
        availability_heatmap(available, tz),
        "<h2>Theo ngày và xã · Per day and commune</h2>",
        _days_table(report.days),
        "<h2>Cụm loa chưa phát đầy đủ · Stations that fell short</h2>",
        _details_table(rows, zone),
        *_set_aside_html(report),
        "<h2>Chi tiết theo bản tin · Per bulletin</h2>",
        _occurrences_table(rows, zone),
        "<h2>Cụm loa · Stations</h2>",
        _stations_table(available, tz),
        "<h2>Cách tính · How this is counted</h2>",
        _HOW,
        "</body>\n</html>\n",
    ]
    return "\n".join(sections)


def _set_aside_html(report: CoverageReport) -> list[str]:
    if not report.set_aside:
        return []
    table = _table(
        ("Cụm loa · station", "Số bản ghi · as-runs", "Lý do · why"),
        ([s.station, str(s.count), f"{s.reason}: {s.detail}"] for s in report.set_aside),
        numeric_from=1,
    )
    return [
        f"<h2>Bản ghi không tính · As-runs set aside ({report.set_aside_count})</h2>",
        table,
    ]


def _bucket_words(bucket: timedelta) -> str:
    minutes = bucket.total_seconds() / 60
    if minutes < 60:
        return f"{minutes:g}-minute buckets"
    if minutes < 24 * 60:
        return f"{minutes / 60:g}-hour buckets"
    return f"{minutes / (24 * 60):g}-day buckets"
