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


def _bar(start, end, elapsed):
    """An edited-hf progress log whose answers went from `start` to `end` cases in `elapsed` (tqdm's text)."""
    return "".join(f"edited-hf ft: 5%| | {k}/9333 [{elapsed}<1:00, 1.0answer/s, cases {k}/1037]" for k in (start, end))


def test_a_resumed_run_adds_the_wall_time_of_its_earlier_processes(tmp_path, monkeypatch, capsys):
    _run(tmp_path, "ft_en", TASKS, 600.4)
    sweep = tmp_path / "sweep"
    (sweep / "ft_en" / "lm_eval.log").write_text("# lm_eval --model edited-hf\n" + _bar(540, 1037, "09:50"))
    for stamp, start, end, elapsed in (("20261204-172039", 0, 500, "1:02:03"), ("20261204-175902", 500, 540, "05:00")):
        aside = sweep / ".incomplete" / f"ft_en-{stamp}"
        aside.mkdir(parents=True)
        (aside / "lm_eval.log").write_text("# lm_eval\n" + _bar(start, end, elapsed))
    other = sweep / ".incomplete" / "ft_en_x-20261204-175902"  # another run's leftovers are not counted
    other.mkdir()
    (other / "lm_eval.log").write_text(_bar(0, 9, "10:00:00"))
    assert _publish(monkeypatch, sweep, tmp_path / "out") == 0
    assert "ft_en: 3 lm_eval processes, wall time covers 1037 of 1037 cases" in capsys.readouterr().out
    (row,) = csv.DictReader((tmp_path / "out" / "runs.csv").open())
    assert (row["wall_s"], row["segments"], row["wall_cases"]) == (str(round(600.4 + 3723 + 300)), "3", "1037")


def test_answers_from_a_store_without_logs_are_not_counted_as_timed(tmp_path, monkeypatch, capsys):
    _run(tmp_path, "ft_en", TASKS, 100)
    (tmp_path / "sweep" / "ft_en" / "lm_eval.log").write_text("# lm_eval\n" + _bar(501, 1037, "01:40"))
    assert _publish(monkeypatch, tmp_path / "sweep", tmp_path / "out") == 0
    assert "wall time covers 536 of 1037 cases" in capsys.readouterr().out
    (row,) = csv.DictReader((tmp_path / "out" / "runs.csv").open())
    assert (row["wall_s"], row["segments"], row["wall_cases"]) == ("100", "1", "536")


def test_set_aside_attempts_whose_answers_were_not_kept_are_not_counted(tmp_path, monkeypatch, capsys):
    _run(tmp_path, "ft_en", TASKS, 100)
    sweep = tmp_path / "sweep"
    (sweep / "ft_en" / "lm_eval.log").write_text("# lm_eval\n" + _bar(40, 1037, "01:40"))
    for stamp, start, end, elapsed in (("20261201-000000", 0, 30, "50:00"),  # an older attempt, its store discarded
                                       ("20261204-000000", 0, 40, "10:00")):
        aside = sweep / ".incomplete" / f"ft_en-{stamp}"
        aside.mkdir(parents=True)
        (aside / "lm_eval.log").write_text("# lm_eval\n" + _bar(start, end, elapsed))
    assert _publish(monkeypatch, sweep, tmp_path / "out") == 0
    (row,) = csv.DictReader((tmp_path / "out" / "runs.csv").open())
    assert (row["wall_s"], row["segments"], row["wall_cases"]) == ("700", "2", "1037")


def test_the_other_ends_processes_add_their_time(tmp_path, monkeypatch, capsys):
    _run(tmp_path, "memit_zh", TASKS, 100)
    sweep = tmp_path / "sweep"
    # Forward: 0 -> 500, set aside; the last process found 500 + the reverse sweep's 80 cases in the store.
    (sweep / "memit_zh" / "lm_eval.log").write_text("# lm_eval\n" + _bar(580, 1037, "01:40"))
    (sweep / ".incomplete" / "memit_zh-20261206-000000").mkdir(parents=True)
    (sweep / ".incomplete" / "memit_zh-20261206-000000" / "lm_eval.log").write_text("# lm_eval\n" + _bar(0, 500, "30:00"))
    reverse = sweep / ".reverse"
    (reverse / "memit_zh").mkdir(parents=True)
    (reverse / "memit_zh" / "lm_eval.log").write_text("# lm_eval\n" + _bar(700, 1037, "10:00"))
    (reverse / ".incomplete" / "memit_zh-20261206-010000").mkdir(parents=True)
    (reverse / ".incomplete" / "memit_zh-20261206-010000" / "lm_eval.log").write_text("# lm_eval\n" + _bar(400, 650, "20:00"))
    (reverse / ".incomplete" / "memit_en-20261206-010000").mkdir(parents=True)  # another run's: not counted
    (reverse / ".incomplete" / "memit_en-20261206-010000" / "lm_eval.log").write_text(_bar(0, 9, "10:00:00"))
    assert _publish(monkeypatch, sweep, tmp_path / "out") == 0
    assert "memit_zh: 4 lm_eval processes (2 from the other end), wall time covers 1037 of 1037" in capsys.readouterr().out
    (row,) = csv.DictReader((tmp_path / "out" / "runs.csv").open())
    assert (row["wall_s"], row["segments"], row["wall_cases"]) == (str(100 + 1800 + 600 + 1200), "4", "1037")
