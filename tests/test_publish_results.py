"""scripts/publish_results.py: finished sweep runs are copied (results JSON only) and listed with wall times."""

import csv
import json
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "publish_results.py"
TASKS = ("bizsre_reliability", "bizsre_generality_en", "bizsre_generality_zh", "bizsre_locality_en",
         "bizsre_locality_zh", "bizsre_portability_en", "bizsre_portability_zh")


def _run(tmp_path, name, tasks, seconds):
    folder = tmp_path / "sweep" / name / "model__x"
    folder.mkdir(parents=True)
    method, lang = name.split("_")
    data = {"results": {t: {"f1,none": 0.5, "em,none": 0.0} for t in tasks}, "total_evaluation_time_seconds": str(seconds),
            "config": {"model": "edited-hf", "model_args": f"method={method},edit_lang={lang},protocol=paper"},
            "n-samples": {"bizsre_reliability": {"original": 1037, "effective": 1037}}}
    (folder / "results_2026-12-01T00-00-00.json").write_text(json.dumps(data))
    (folder / "samples_bizsre_reliability_2026-12-01T00-00-00.jsonl").write_text("{}\n")
    (folder.parent / "lm_eval.log").write_text(f"# lm_eval --model edited-hf --model_args method={method}\nlog\n")


def _publish(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, args)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    return stop.value.code


def test_finished_runs_are_published_and_unfinished_ones_skipped(tmp_path, monkeypatch, capsys):
    _run(tmp_path, "rome_en", TASKS, 61.6)
    _run(tmp_path, "ft_zh", TASKS[:3], 10)  # killed half-way: not all tasks
    assert _publish(monkeypatch, tmp_path / "sweep", tmp_path / "out") == 0
    assert "not finished: ft_zh" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "out").iterdir()] and not (tmp_path / "out" / "ft_zh").exists()
    assert [p.name for p in (tmp_path / "out" / "rome_en").iterdir()] == ["results_2026-12-01T00-00-00.json"]
    (row,) = csv.DictReader((tmp_path / "out" / "runs.csv").open())
    assert (row["method"], row["edit_lang"], row["protocol"], row["cases"], row["wall_s"]) == ("rome", "en", "paper", "1037", "62")
    assert row["command"] == "lm_eval --model edited-hf --model_args method=rome"


def test_a_missing_sweep_folder_is_an_error(tmp_path, monkeypatch, capsys):
    assert _publish(monkeypatch, tmp_path / "nothing", tmp_path / "out") == 2
    assert "is not a folder" in capsys.readouterr().err


def test_rows_of_runs_published_earlier_are_kept(tmp_path, monkeypatch, capsys):
    _run(tmp_path, "rome_en", TASKS, 61.6)
    assert _publish(monkeypatch, tmp_path / "sweep", tmp_path / "out") == 0
    # another machine, another sweep folder: rome_zh now, and rome_en again with a new wall time
    (tmp_path / "sweep").rename(tmp_path / "first")
    _run(tmp_path, "rome_zh", TASKS, 30)
    assert _publish(monkeypatch, tmp_path / "sweep", tmp_path / "out") == 0
    rows = {row["run"]: row["wall_s"] for row in csv.DictReader((tmp_path / "out" / "runs.csv").open())}
    assert rows == {"rome_en": "62", "rome_zh": "30"}
    _run(tmp_path, "rome_en", TASKS, 99)
    assert _publish(monkeypatch, tmp_path / "sweep", tmp_path / "out") == 0
    rows = {row["run"]: row["wall_s"] for row in csv.DictReader((tmp_path / "out" / "runs.csv").open())}
    assert rows == {"rome_en": "99", "rome_zh": "30"}
