"""The benchmark report: result files in, the generated table in docs/benchmarks.md out, and
nothing outside its markers touched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.common import percentile, summary

MACHINE = {
    "cpu_count": 2,
    "cpu_model": "Test CPU",
    "python": "3.11.7",
    "date": "2026-11-22T10:00:00+00:00",
    "git": {"commit": "abc1234", "modified": ["agent/player.py"]},
}


def start_accuracy(**overrides: Any) -> dict[str, Any]:
    return {
        "benchmark": "start_accuracy",
        "command": ".venv/bin/python -m bench.start_accuracy",
        "n": 50,
        "p50_ms": 0.48,
        "p99_ms": 1.04,
        "baseline_p50_ms": 80.37,
        "baseline_p99_ms": 93.05,
        "figures": ["p50_ms", "p99_ms"],
        "baselines": {"p50_ms": "baseline_p50_ms", "p99_ms": "baseline_p99_ms"},
        "labels": {"p50_ms": "p50 start error, pre-roll", "baseline_p50_ms": "no pre-roll"},
        "machine": MACHINE,
        **overrides,
    }


def memory() -> dict[str, Any]:
    return {
        "benchmark": "memory_60min",
        "command": ".venv/bin/python -m bench.memory_60min",
        "idle_rss_mb": 43.4,
        "peak_rss_mb": 43.8,
        "baselines": {"peak_rss_mb": "idle_rss_mb"},
        "unit": "MiB",
        "machine": MACHINE,
    }


def write(directory: Path, name: str, data: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(data))


def run_report(tmp_path: Path, doc_text: str | None = None) -> tuple[int, str]:
    doc = tmp_path / "docs" / "benchmarks.md"
    if doc_text is not None:
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(doc_text)
    code = report.main(["--results", str(tmp_path / "results"), "--doc", str(doc)])
    return code, doc.read_text() if doc.exists() else ""


def table_rows(text: str) -> list[list[str]]:
    inside = text.split(report.BEGIN, 1)[1].split(report.END, 1)[0]
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in inside.splitlines()
        if line.startswith("| ") and not line.startswith("| Benchmark") and "---" not in line
    ]


def test_every_figure_becomes_a_row_with_its_same_run_baseline_and_command(
    tmp_path: Path,
) -> None:
    write(tmp_path / "results", "start_accuracy", start_accuracy())
    write(tmp_path / "results", "memory_60min", memory())
    code, text = run_report(tmp_path)
    assert code == 0
    rows = table_rows(text)
    # Files in name order; within one, the figures in the order the file gives.
    assert [row[:2] for row in rows] == [
        ["memory_60min", "peak_rss_mb"],
        ["start_accuracy", "p50 start error, pre-roll"],
        ["start_accuracy", "p99_ms"],
    ]
    memory_row, p50_row, p99_row = rows
    assert memory_row[2:4] == ["43.8 MiB", "43.4 MiB"]
    assert p50_row[2:5] == ["0.48 ms", "80.4 ms (no pre-roll)", "50"]
    assert p99_row[2:4] == ["1.04 ms", "93.0 ms"]
    assert p50_row[5] == "`.venv/bin/python -m bench.start_accuracy`"
    assert "2 CPUs, Test CPU, Python 3.11.7, 2026-11-22T10:00:00+00:00" in text
    assert "commit abc1234 with uncommitted changes to agent/player.py" in text


def test_a_figure_not_measured_says_why(tmp_path: Path) -> None:
    missing = {"p50_ms": "the player has no PlayRequest.start_at"}
    write(tmp_path / "results", "start_accuracy", start_accuracy(p50_ms=None, missing=missing))
    _, text = run_report(tmp_path)
    p50_row = table_rows(text)[0]
    assert p50_row[2] == "not measured (the player has no PlayRequest.start_at)"
    assert p50_row[3] == "80.4 ms (no pre-roll)"


def test_without_a_figure_list_every_number_but_baselines_is_shown(tmp_path: Path) -> None:
    data = {"benchmark": "x", "command": "make x", "n": 3, "p99_ms": 12.5,
            "baseline_p99_ms": 30.0, "ok": True, "note": "text"}  # fmt: skip
    write(tmp_path / "results", "x", data)
    _, text = run_report(tmp_path)
    assert table_rows(text) == [["x", "p99_ms", "12.5 ms", "30.0 ms", "3", "`make x`"]]


def test_text_outside_the_markers_is_kept_and_the_table_replaced(tmp_path: Path) -> None:
    write(tmp_path / "results", "start_accuracy", start_accuracy())
    prose = "# Benchmarks\n\nHow we measure.\n\n"
    old = f"{report.BEGIN}\n| stale | table |\n{report.END}\n"
    code, text = run_report(tmp_path, prose + old + "\n## Afterword\nkept\n")
    assert code == 0
    assert text.startswith(prose + report.BEGIN + "\n")
    assert text.endswith(report.END + "\n\n## Afterword\nkept\n")
    assert "stale" not in text
    # Generating again from the same results changes nothing.
    assert run_report(tmp_path)[1] == text


def test_a_document_without_markers_gets_the_table_at_its_end(tmp_path: Path) -> None:
    write(tmp_path / "results", "memory_60min", memory())
    _, text = run_report(tmp_path, "# Benchmarks\n\nProse.\n")
    assert text.startswith("# Benchmarks\n\nProse.\n\n" + report.BEGIN)
    assert text.rstrip().endswith(report.END)


def test_a_missing_document_is_created(tmp_path: Path) -> None:
    write(tmp_path / "results", "memory_60min", memory())
    code, text = run_report(tmp_path)
    assert code == 0
    assert text.startswith("# Benchmarks\n\n" + report.BEGIN)


@pytest.mark.parametrize(
    "doc_text",
    [f"{report.BEGIN}\nno end\n", f"no begin\n{report.END}\n", f"{report.END}\n{report.BEGIN}\n"],
)
def test_damaged_markers_are_refused_and_the_document_left_alone(
    tmp_path: Path, doc_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "results", "memory_60min", memory())
    code, text = run_report(tmp_path, doc_text)
    assert code == 1
    assert text == doc_text
    assert "markers are damaged" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not readable JSON"), ("[1, 2]", "JSON object"), ('{"n": 1}', "command")],
)
def test_a_bad_result_file_is_named_and_nothing_written(
    tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "broken.json").write_text(content)
    code, text = run_report(tmp_path)
    assert code == 1
    assert text == ""
    err = capsys.readouterr().err
    assert "broken.json" in err and message in err


def test_no_results_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "results").mkdir()
    assert run_report(tmp_path)[0] == 1
    assert "run the benchmarks first" in capsys.readouterr().err


def test_percentiles_interpolate_between_closest_ranks() -> None:
    values = [float(v) for v in range(1, 51)]  # 1..50
    assert percentile(values, 50) == 25.5
    assert percentile(values, 99) == pytest.approx(49.51)
    assert percentile([7.0], 99) == 7.0
    assert summary([3.0, 1.0, 2.0]) == {
        "n": 3, "p50_ms": 2.0, "p99_ms": 2.98, "min_ms": 1.0, "max_ms": 3.0, "mean_ms": 2.0,
    }  # fmt: skip
