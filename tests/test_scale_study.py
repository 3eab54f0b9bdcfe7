"""`bizsre scale-study`: a real (tiny) study — training, lm_eval, point files, plot — then resume, then option errors.

The trainers and lm_eval run in this process (the same command lines the study gives its child
processes, through `bizsre_tasks.cli.main`), so the test takes seconds rather than minutes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from bizsre_tasks import cli
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.experiments.scale_study import (
    ScaleOptions,
    checkpoint_dir,
    parse_sizes,
    plan_points,
    point_file,
    run_study,
)
from tests.tiny_models import SAMPLE

FIELDS = ("subject", "src", "rephrase", "alt", "loc", "loc_ans")
TINY_TRAINING = {
    "serac": ["--val-size", "4", "--steps", "2", "--batch-size", "4", "--proj-dim", "8", "--device", "cpu", "--quiet"],
    "mend": ["--steps", "2", "--batch-size", "2", "--rank", "8", "--train-vocab", "64", "--quiet"],
}


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BIZSRE_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("BIZSRE_TRAIN_FILE", "BIZSRE_TEST_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def bundled_tasks_only(monkeypatch):
    """lm_eval indexes its ~14,000 built-in task files for every run (about 10 s); these runs need only ours."""
    from lm_eval.tasks import TaskManager

    original = TaskManager.__init__

    def init(self, *args, include_defaults=True, **kwargs):
        original(self, *args, include_defaults=False, **kwargs)

    monkeypatch.setattr(TaskManager, "__init__", init)


@pytest.fixture
def train_file(tmp_path) -> Path:
    cases = json.loads(SAMPLE.read_text(encoding="utf-8"))
    path = tmp_path / "train_en.json"
    path.write_text(json.dumps([{k: c["en"][k] for k in FIELDS} for c in cases], ensure_ascii=False), encoding="utf-8")
    return path


class InProcess:
    """The study's child commands (`python -m bizsre_tasks.cli ...`) run in this process; calls are recorded."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], log: Path, on_progress) -> int:
        assert argv[:3] == [sys.executable, "-m", "bizsre_tasks.cli"]
        self.calls.append(argv[3:])
        on_progress(0.0)
        return cli.main(argv[3:])


def study(tmp_path: Path, model: Path, train_file: Path, **overrides) -> ScaleOptions:
    values = dict(output=tmp_path / "study", sizes=[4, 8], methods=["serac", "mend", "ike"], edit_langs=["en"],
                  train_files={"en": str(train_file)}, limit=2, pretrained=str(model))
    values.update(overrides)
    values["train_args"] = {m: args for m, args in TINY_TRAINING.items() if m in values["methods"]}
    return ScaleOptions(**values)


def test_study_writes_points_and_plot_then_resumes(tiny_gemma, train_file, tmp_path, bundled_tasks_only):
    options = study(tmp_path, tiny_gemma, train_file)
    runner = InProcess()
    outcome = run_study(options, runner=runner, show_progress=False, echo=lambda m: None)
    assert not outcome.failed, outcome.failed
    assert [c[:2] for c in runner.calls].count(["train", "serac"]) == 2 and [c[0] for c in runner.calls].count("run") == 6

    out = options.output
    names = sorted(p.name for p in (out / "points").glob("*.json"))
    assert names == sorted(f"{m}_en_{n}.json" for m in ("serac", "mend", "ike") for n in (4, 8))
    point = json.loads((out / "points" / "mend_en_8.json").read_text(encoding="utf-8"))
    assert (point["method"], point["edit_lang"], point["train_size"], point["cases"]) == ("mend", "en", 8, 2)
    assert set(point["scores"]) == {"en", "zh"} and set(point["scores"]["zh"]) == {"generality", "locality", "portability"}
    assert set(point["scores"]["en"]["reliability"]) == {"f1", "em"}
    assert point["training"]["checkpoint"] == str(checkpoint_dir(options, plan_points(options)[-2]))
    assert point["training"]["seconds"] >= 0 and Path(point["evaluation"]["results_file"]).is_file()
    assert point["settings"]["limit"] == 2 and point["settings"]["protocol"] == "teacher_forced"
    # IKE's pool is the first N records (hparam pool_size), visible in the harness's own results file.
    assert yaml.safe_load((out / "hparams" / "ike_4.yaml").read_text()) == {"pool_size": 4}
    ike = json.loads((out / "points" / "ike_en_4.json").read_text(encoding="utf-8"))
    assert "ike_4.yaml" in json.loads(Path(ike["evaluation"]["results_file"]).read_text())["config"]["model_args"]["hparams"]

    assert (out / "training_scale.png").stat().st_size > 10_000
    rows = (out / "summary.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 7 and rows[0].startswith("method,edit_lang,train_size,cases,reliability_f1,reliability_em")
    assert "| SERAC | 8 |" in (out / "summary.md").read_text(encoding="utf-8")

    # Second invocation: every point is finished, nothing runs; the summary is rebuilt.
    again = InProcess()
    outcome = run_study(options, runner=again, show_progress=False, echo=lambda m: None)
    assert again.calls == [] and len(outcome.skipped) == 6 and not outcome.finished

    # A lost point file: its checkpoint and finished lm_eval run are reused, not redone.
    weights = checkpoint_dir(options, plan_points(options)[0]) / "weights.safetensors"
    before = weights.stat().st_mtime_ns
    point_file(options, plan_points(options)[0]).unlink()
    third = InProcess()
    outcome = run_study(options, runner=third, show_progress=False, echo=lambda m: None)
    assert [p.name for p in outcome.finished] == ["serac_en_4"]
    assert [c[0] for c in third.calls] == ["train"] and weights.stat().st_mtime_ns == before


def test_points_from_other_settings_stop_the_study(tiny_gemma, train_file, tmp_path, bundled_tasks_only):
    options = study(tmp_path, tiny_gemma, train_file, methods=["ike"], sizes=[4])
    assert not run_study(options, runner=InProcess(), show_progress=False, echo=lambda m: None).failed
    with pytest.raises(ConfigurationError, match="other settings"):
        run_study(study(tmp_path, tiny_gemma, train_file, methods=["ike"], sizes=[4, 8], limit=3),
                  runner=InProcess(), show_progress=False, echo=lambda m: None)


def test_sizes_parse():
    assert parse_sizes("100, 500,1K,3k,5000") == [100, 500, 1000, 3000, 5000]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sizes", "100,0"], "at least 1 training example"),
        (["--sizes", "100,lots"], "'lots' is not a whole number"),
        (["--sizes", "4,50"], "--sizes 50: more than the 20 records"),
        (["--methods", "serac,rome"], "unknown or untrainable method"),
        (["--edit-langs", "fr"], "'fr' is not one of the bundled task languages"),
        (["--train-args", "mend=--out elsewhere"], "--out is set by the study"),
        (["--aligned-file", "ike_en=x.tsv"], "--aligned-file names ike_en"),
    ],
)
def test_bad_options_are_clear_errors(extra, message, train_file, tmp_path, capsys):
    argv = ["scale-study", "--output", str(tmp_path / "study"), "--sizes", "4", "--edit-langs", "en",
            "--train-file-en", str(train_file), *extra]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def test_missing_training_file_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["scale-study", "--output", str(tmp_path / "s"), "--edit-langs", "zh"]) == 2
    assert "no training file for edit language 'zh'" in capsys.readouterr().err


@pytest.mark.slow
def test_command_line_with_child_processes(tiny_gemma, train_file, tmp_path, capsys):
    """`bizsre scale-study` as users run it: trainer and lm_eval as child processes (about a minute)."""
    out = tmp_path / "study"
    argv = ["scale-study", "--output", str(out), "--sizes", "4", "--methods", "mend,ike", "--edit-langs", "en",
            "--train-file-en", str(train_file), "--limit", "2", "--pretrained", str(tiny_gemma), "--no-progress",
            "--train-args", "mend=" + " ".join(TINY_TRAINING["mend"])]
    assert cli.main(argv) == 0, capsys.readouterr()
    assert sorted(p.name for p in (out / "points").iterdir()) == ["ike_en_4.json", "mend_en_4.json"]
    assert (out / "training_scale.png").is_file() and (out / "logs" / "train_mend_en_4.log").is_file()
    assert "2 point(s) finished" in capsys.readouterr().out
