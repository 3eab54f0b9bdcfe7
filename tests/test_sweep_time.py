"""scripts/sweep_time.py: the paper sweep's measured time as a kept section of BENCHMARKS.md."""

import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sweep_time.py"
CSV = """run,method,edit_lang,protocol,cases,wall_s,segments,wall_cases,command
ft_en,ft,en,paper,1037,6978,3,1037,lm_eval ...
none_en,none,en,paper,1037,1370,1,1037,lm_eval ...
"""


def _run(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, args)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    return stop.value.code


def test_the_section_lists_runs_totals_and_what_is_missing(tmp_path, monkeypatch):
    runs = tmp_path / "runs.csv"
    runs.write_text(CSV)
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# Benchmarks\n\nthe bench's own part\n")
    assert _run(monkeypatch, runs, "--expected", "none,ft", "--training", "serac_en=600", "--out", bench) == 0
    text = bench.read_text()
    assert text.startswith("# Benchmarks\n\nthe bench's own part")
    assert "| ft_en | 1037 | 3 | 6,978 | 6.73 |" in text and "| training: serac_en | | 1 | 600 | |" in text
    assert "Total so far: 8,948 s (2.49 h)" in text and "Not finished yet (2 of 4 runs): none_zh, ft_zh." in text
    runs.write_text(CSV.replace("1370", "1000"))  # run again: the section is replaced, not added
    assert _run(monkeypatch, runs, "--expected", "none,ft", "--out", bench) == 0
    assert bench.read_text().count("## Paper sweep") == 1 and "| none_en | 1037 | 1 | 1,000 | 0.96 |" in bench.read_text()


def test_with_every_run_the_total_is_the_whole_sweep(tmp_path, monkeypatch):
    runs = tmp_path / "runs.csv"
    runs.write_text(CSV)
    bench = tmp_path / "BENCHMARKS.md"
    assert _run(monkeypatch, runs, "--expected", "none,ft", "--edit-langs", "en", "--out", bench) == 0
    text = bench.read_text()
    assert "Total, the whole sweep: 8,348 s (2.32 h) of compute for 2 finished run(s)." in text
    assert "so far" not in text and "Not finished" not in text


def test_bad_training_time_is_refused(tmp_path, monkeypatch):
    runs = tmp_path / "runs.csv"
    runs.write_text(CSV)
    assert _run(monkeypatch, runs, "--training", "serac_en=soon", "--out", tmp_path / "B.md") == 2
