"""The demo's scenario, smaller, as a test: two stations in two communes, a province bulletin
and a commune announcement. It asserts on the coverage the province computes (table and HTML
report) and on the audio each simulated loudspeaker produced."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from province.demo import run_demo
from tests.harness.audio import analyse_pcm
from tests.unit.test_coverage_render import Parsed

pytestmark = pytest.mark.integration


def wav_pcm(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (48000, 2, 2)
        return wav.readframes(wav.getnframes())


def test_demo_scenario(tmp_path: Path) -> None:
    lines: list[str] = []
    stations = ("25/08230/08230-01", "25/08231/08231-01")
    result = run_demo(tmp_path / "demo", stations, say=lines.append, first_slot_in_s=8)

    outcomes = sorted((a["station"], a["slot"], a["outcome"]) for a in result.asruns)
    assert outcomes == [
        ("25/08230/08230-01", "ban-tin-sang", "complete"),
        ("25/08231/08231-01", "ban-tin-sang", "complete"),
        ("25/08231/08231-01", "thong-bao", "complete"),
    ]
    total = next(ln for ln in result.coverage_table.splitlines() if ln.startswith("TOTAL"))
    # expected, complete, untrusted, partial, failed, missed, no report, pending, coverage
    assert total.split()[-9:] == ["3", "3", "0", "0", "0", "0", "0", "0", "100.0%"]
    assert "every commune at 100%" in result.coverage_table

    # The HTML report: written, named last, one document naming every demo commune, with its
    # charts; every station was up while the demo ran.
    assert result.report is not None and result.report.is_file()
    assert lines[-1].endswith(str(result.report))
    report = Parsed(result.report.read_text(encoding="utf-8"))
    text = "".join(report.text)
    for station in stations:
        assert station.rsplit("/", 1)[0] in text
        assert station in text
    assert {"chart coverage-chart", "chart availability-chart"} <= {
        a.get("class") for tag, a in report.tags if tag == "svg"
    }
    assert "100.0%" in text

    # 08230-01 played the bulletin only: 2 s of 440 Hz.
    bulletin = analyse_pcm(wav_pcm(result.wavs["25/08230/08230-01"]))
    assert abs(bulletin.seconds - 2.0) < 0.1
    assert bulletin.freq_hz is not None and abs(bulletin.freq_hz - 440) < 5
    # 08231-01 played the bulletin, then its commune's announcement: 1.5 s of 880 Hz.
    both = wav_pcm(result.wavs["25/08231/08231-01"])
    first = analyse_pcm(both[: 2 * 48000 * 4])
    second = analyse_pcm(both[2 * 48000 * 4 :])
    assert abs(first.seconds - 2.0) < 0.1 and first.freq_hz and abs(first.freq_hz - 440) < 5
    assert abs(second.seconds - 1.5) < 0.1 and second.freq_hz and abs(second.freq_hz - 880) < 9
    # Both were normalised to the -16 LUFS target when cached: equally loud, not silence.
    assert first.dbfs is not None and second.dbfs is not None
    assert abs(first.dbfs - second.dbfs) < 1.0 and first.dbfs > -22

    assert any("Done in" in ln for ln in lines)
    availability = result.coverage_table.split("\navailability")[-1]
    for station in stations:
        row = next(ln for ln in availability.splitlines() if station in ln)
        up = float(row.split()[-1].rstrip("%"))
        assert up >= 90, row  # heartbeats every 5 s from the moment it started
    assert (result.logs / "collector.log").exists()
