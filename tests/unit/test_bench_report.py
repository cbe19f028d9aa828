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


# docs/scale.md: the measured figures and those derived from them ------------------------------


def collector_ingest(**overrides: Any) -> dict[str, Any]:
    return {
        "benchmark": "collector_ingest",
        "command": ".venv/bin/python -m bench.collector_ingest",
        "quick": False,
        "n": 1000,
        "msgs_per_s": 1000.0,
        "baseline_msgs_per_s": 4000.0,
        "stored_exactly_once": True,
        "detail": {"stations": 10, "burst": {"sent": 1000, "lost": 250}},
        "machine": MACHINE,
        **overrides,
    }


def telemetry_bytes(**overrides: Any) -> dict[str, Any]:
    # 24 reconnects of 1 heartbeat each, 96 heartbeats, pings that store nothing, one playlist
    # update of 10 events: 24 + 96 + 0 + 10 = 130 reports, + 24 births = 154 messages a day.
    return {
        "benchmark": "telemetry_bytes",
        "command": ".venv/bin/python -m bench.telemetry_bytes --quick",
        "quick": True,
        "kb_per_day": 200.0,
        "breakdown": {
            "reconnect": {"count_per_day": 24.0},
            "heartbeat": {"count_per_day": 96.0},
            "ping": {"count_per_day": 720.0},
            "playlist_update": {"count_per_day": 1.0},
        },
        "units": {
            "reconnect": {"n": 2, "reports_stored_each": [{"heartbeat": 1}, {"heartbeat": 1}]},
            "heartbeat": {"n": 4, "reports_stored_each": [{"heartbeat": 4}]},
            "ping": {"n": 3, "reports_stored_each": [{}]},
            "playlist_update": {"n": 1, "reports_stored_each": [{"event": 10}]},
        },
        "machine": MACHINE,
        **overrides,
    }


def emergency_fanout() -> dict[str, Any]:
    def rounds(n_emergency_cores: float) -> list[dict[str, Any]]:
        return [
            {"message": "emergency", "broker_cores": n_emergency_cores, "window_s": 0.5},
            {"message": "bare", "broker_cores": 0.2, "window_s": 0.05},
            {"message": "emergency", "broker_cores": n_emergency_cores, "window_s": 0.5},
            {"message": "bare", "broker_cores": 0.4, "window_s": 0.05},
        ]

    size = {"first_frame": {"p50_ms": 30.0, "p99_ms": 60.0}, "bare_delivery": {"p99_ms": 10.0}}
    return {
        "benchmark": "emergency_fanout",
        "command": ".venv/bin/python -m bench.emergency_fanout",
        "detail": {
            "sizes": {
                "100": {**size, "rounds": rounds(0.1)},
                "1000": {**size, "rounds": rounds(0.08)},
            }
        },
        "machine": MACHINE,
    }


def scale_rows(text: str, section: str) -> dict[str, list[str]]:
    """The rows of the generated block's ``section`` table, by their first cell."""
    inside = text.split(report.SCALE_BEGIN, 1)[1].split(report.END, 1)[0]
    body = inside.split(f"### {section}", 1)[1].split("###", 1)[0]
    rows = {}
    for line in body.splitlines():
        if line.startswith("| ") and "---" not in line and not line.startswith("| Figure"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def run_scale(tmp_path: Path, *results: dict[str, Any]) -> str:
    for result in results:
        write(tmp_path / "results", str(result["benchmark"]), result)
    assert run_report(tmp_path)[0] == 0
    return (tmp_path / "docs" / "scale.md").read_text()


def test_messages_a_day_are_counts_times_reports_stored_per_exchange_plus_births() -> None:
    per_day = report.telemetry_messages_per_day(telemetry_bytes())
    assert per_day is not None
    assert per_day["reports"] == 130
    assert per_day["births"] == 24
    assert per_day["messages"] == 154


def test_without_a_breakdown_with_counts_messages_a_day_are_not_invented(tmp_path: Path) -> None:
    bare = telemetry_bytes()
    del bare["breakdown"]
    assert report.telemetry_messages_per_day(bare) is None
    text = run_scale(tmp_path, collector_ingest(), bare)
    measured = scale_rows(text, "Measured")
    assert "no breakdown with counts" in measured["messages per station per day"][0]
    derived = scale_rows(text, "Derived")
    row = derived["stations one collector keeps up with, steady rate"]
    assert row[0].startswith("cannot be derived")


def test_derived_figures_follow_their_formulas(tmp_path: Path) -> None:
    text = run_scale(tmp_path, collector_ingest(), telemetry_bytes(), emergency_fanout())
    derived = scale_rows(text, "Derived")
    # 1000 msgs/s x 86,400 / 154 messages a day
    keeps_up = derived["stations one collector keeps up with, steady rate"]
    assert keeps_up[0] == f"{1000 * 86400 / 154:,.0f}"
    assert "86,400 / 154" in keeps_up[1]
    assert keeps_up[2]  # its assumption is stated
    # 10,000 stations x 130 reports a day x 24/24 / 1000 msgs/s = 1,300 s
    catch_up = derived["catch-up after a 24 h collector outage, 10,000 stations"]
    assert catch_up[0] == "1,300 s (21.7 min)"
    # N=1000 (the largest): 2 emergency rounds x 0.08 cores x 0.5 s / (2 x 1000) = 0.04 ms
    cpu = derived["mosquitto CPU per station, one emergency message at N=1000"]
    assert cpu[0] == "0.04 ms"
    assert derived["stations one broker core reaches with an emergency within 1 s"][0] == "25,000"
    # bare: (0.2 x 0.05 + 0.4 x 0.05) / (2 x 1000) = 0.015 ms
    assert derived["mosquitto CPU per station, one bare message at N=1000"][0] == "0.015 ms"
    measured = scale_rows(text, "Measured")
    assert measured["N=1000: mosquitto's CPU during the rounds, in cores (mean of rounds; "
                    "the machine's 2 cores were busy with the stations)"][0] == (
        "emergency 0.08, bare 0.30"
    )  # fmt: skip


def test_catch_up_and_capacity_helpers() -> None:
    assert report.stations_per_collector(100.0, 864.0) == 10_000
    assert report.catch_up_s(1_000, 12.0, 240.0, 50.0) == 2_400


def test_a_missing_result_is_said_to_be_missing_not_guessed(tmp_path: Path) -> None:
    text = run_scale(tmp_path, telemetry_bytes())
    measured = scale_rows(text, "Measured")
    row = measured["one collector: reports stored per second"]
    assert row[0].startswith("not measured: run `.venv/bin/python -m bench.collector_ingest`")
    assert "collector_ingest.json` missing" in row[1]
    assert "emergency fan-out to N stations on one mosquitto" in measured
    derived = scale_rows(text, "Derived")
    for key, cells in derived.items():
        if "collector" in key or "broker" in key:
            assert cells[0].startswith("cannot be derived"), key


def test_a_quick_coverage_run_is_flagged_and_only_projected(tmp_path: Path) -> None:
    coverage = {
        "benchmark": "coverage_scale",
        "command": ".venv/bin/python -m bench.coverage_scale --quick",
        "quick": True,
        "sqlite_seconds": 0.1,
        "postgresql_seconds": None,
        "missing": {"postgresql_seconds": "PostgreSQL could not start"},
        "detail": {"days": 3, "stations": 100, "station_occurrences": 1200},
        "machine": MACHINE,
    }
    text = run_scale(tmp_path, coverage)
    measured = scale_rows(text, "Measured")
    sqlite = next(v for k, v in measured.items() if k.startswith("coverage") and "SQLite" in k)
    assert sqlite == ["0.1", sqlite[1]] and "**quick**" in sqlite[1]
    pg = next(v for k, v in measured.items() if k.startswith("coverage") and "PostgreSQL" in k)
    assert pg[0] == "not measured (PostgreSQL could not start)"
    derived = scale_rows(text, "Derived")
    projected = derived["coverage report, 30 days x 1,000 stations, SQLite (projection, not a "
                        "measurement)"]  # fmt: skip
    assert projected[0] == "10.0 s"  # 0.1 s x 120,000 / 1,200
    assert derived["coverage report, 30 days x 1,000 stations, PostgreSQL"][0].startswith(
        "cannot be derived"
    )


def test_the_scale_block_keeps_the_prose_around_it(tmp_path: Path) -> None:
    doc = tmp_path / "docs" / "scale.md"
    doc.parent.mkdir(parents=True)
    doc.write_text(f"# Scale\n\nbefore\n\n{report.SCALE_BEGIN}\nold\n{report.END}\n\nafter\n")
    text = run_scale(tmp_path, collector_ingest())
    assert text.startswith("# Scale\n\nbefore\n\n" + report.SCALE_BEGIN)
    assert text.endswith(report.END + "\n\nafter\n")
    assert "\nold\n" not in text


def test_check_renders_both_documents_and_writes_neither(tmp_path: Path) -> None:
    write(tmp_path / "results", "collector_ingest", collector_ingest())
    doc = tmp_path / "docs" / "benchmarks.md"
    code = report.main(["--results", str(tmp_path / "results"), "--doc", str(doc), "--check"])
    assert code == 0
    assert not doc.exists() and not (tmp_path / "docs" / "scale.md").exists()


def test_the_reliability_block_shows_the_soak_or_says_it_is_missing() -> None:
    from bench.report import render_reliability

    soak = {
        "benchmark": "reliability", "command": "LOA_SOAK_KILLS=2 pytest", "seed": 7,
        "elapsed_s": 3.0, "kills": 2, "kills_by_point": {"play-ended": 1, "cache-written": 1},
        "reports": {"asrun": {"produced": 4, "stored": 4, "lost": 0, "unsent": 0}},
        "restarts": 2, "occurrences": 4, "asruns_per_occurrence": {"1": 4},
        "outcomes": {"complete": 3, "partial": 1}, "started": 4, "started_missed": 0,
        "duplicates": 5, "machine": {},
    }  # fmt: skip
    block = render_reliability([soak])
    assert "| `cache-written` | 1 |" in block and "| **all** | 2 |" in block
    assert "| asrun | 4 | 4 | 0 | 0 |" in block
    assert "reported missed: 0 (target 0)" in block
    assert "seed 7" in block
    assert "Not measured: run `LOA_SOAK_KILLS=100" in render_reliability([])


def scenario(part: str, name: str, counts: dict[str, Any], bar: dict[str, int]) -> dict[str, Any]:
    misses = {k: counts.get(k) for k, v in bar.items() if counts.get(k) != v}
    return {
        "benchmark": f"reliability_{part}_{name}", "command": f"pytest -k {name}",
        "elapsed_s": 1.5, "figures": [], "machine": {},
        "reliability": {"part": part, "scenario": name, "how": f"how {name}",
                        "counts": counts, "bar": bar, "misses": misses},
    }  # fmt: skip


def test_the_reliability_block_sums_the_bar_and_lists_every_part_in_order() -> None:
    from bench.report import render_reliability

    scenarios = [
            scenario("fuzz", "strict json", {"examples": 400, "crashes": 0}, {"crashes": 0}),
            scenario(
                "link", "broker killed",
                {"reports_produced": 9, "reports_stored": 9, "reports_lost": 0,
                 "duplicates_counted": 0, "rejections": {"bad-signature": 2}},
                {"reports_lost": 0, "duplicates_counted": 0},
            ),
            scenario(
                "attacks", "flood",
                {"accepted_unsigned": 0, "crashes": 1, "rejections": {"bad-signature": 3}},
                {"accepted_unsigned": 0, "crashes": 0},
            ),
    ]  # fmt: skip
    block = render_reliability(scenarios)
    assert "| reports lost | 0 | 0 | 1 |" in block
    assert "| agent crashes | 0 | 1 | 2 |" in block
    assert "| envelopes accepted without a valid signature | 0 | 0 | 1 |" in block
    assert "3 scenarios measured; 1 did not meet their bar: flood (crashes 1)." in block
    # Parts in the documented order, whatever order the files came in; the soak last.
    heads = [line for line in block.splitlines() if line.startswith("### ")]
    assert heads == [
        "### Broker, link and collectors",
        "### Hostile input over MQTT",
        "### Every parser under hypothesis",
        "### Crash-point soak",
    ]
    assert "reports produced 9, stored 9, lost 0, duplicates counted 0" in block
    assert "not met: crashes 1" in block and "met (lost 0, duplicates counted 0)" in block
    assert "`bad-signature` 3." in block and "`bad-signature` 2." in block
    assert "examples 400" in block


def test_reliability_scenarios_are_not_benchmark_rows() -> None:
    table = report.render([scenario("fuzz", "strict json", {"crashes": 0}, {"crashes": 0})])
    assert "reliability_fuzz" not in table
    assert "Not measured: run `make reliability`" in report.render_reliability([])
