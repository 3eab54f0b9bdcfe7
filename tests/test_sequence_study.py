"""`bizsre sequence-study`: one sequential run answers every smaller point on the way; the points it
scores from the checkpoint answers equal those of a run that stops there."""

from __future__ import annotations

import csv
import shutil

import pytest

from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.experiments.sequence_study import SequenceOptions, parse_points, run_study, sweep_options
from tests.test_scale_study import InProcess, bundled_tasks_only, environment  # noqa: F401  - fixtures


def _rows(path):
    with path.open(encoding="utf-8") as handle:
        return {(r["method"], r["edits"], r["split"], r["lang"]): (float(r["f1"]), float(r["em"])) for r in csv.DictReader(handle)}


def test_checkpointed_points_equal_runs_that_stop_there(tiny_gpt2, tmp_path, bundled_tasks_only):  # noqa: F811
    def study(name, points):
        options = SequenceOptions(output=tmp_path / name, points=points, methods=["ft"], edit_langs=["en"], pretrained=str(tiny_gpt2))
        runner = InProcess()
        outcome = run_study(options, runner=runner, show_progress=False, echo=lambda m: None)
        assert not outcome.failed and len(runner.calls) == 1
        return options.output, _rows(options.output / "sequence.csv")

    output, long = study("long", [1, 3])
    _, short = study("short", [1])
    at_one = {key: value for key, value in long.items() if key[1] == "1"}
    assert at_one and at_one == {key: value for key, value in short.items() if key[2] != "reliability_immediate"}
    assert {key[1] for key in long} == {"1", "3"}
    assert any(key[2] == "reliability_immediate" for key in long)
    assert (output / "sequence_en.png").is_file() and "## Edit in en" in (output / "sequence.md").read_text()
    # Run again without the lm_eval run folders: the curve file says the run is done; the summary is rebuilt.
    shutil.rmtree(output / "runs")
    (output / "sequence.csv").unlink()
    runner = InProcess()
    options = SequenceOptions(output=output, points=[1, 3], methods=["ft"], edit_langs=["en"], pretrained=str(tiny_gpt2))
    assert run_study(options, runner=runner, show_progress=False, echo=lambda m: None).skipped == ["ft_en"]
    assert runner.calls == [] and _rows(output / "sequence.csv") == long
    # Curves from another point list are not mixed in.
    with pytest.raises(ConfigurationError, match="curves made with other settings"):
        run_study(SequenceOptions(output=output, points=[1, 4], methods=["ft"], edit_langs=["en"], pretrained=str(tiny_gpt2)),
                  runner=InProcess(), show_progress=False, echo=lambda m: None)


def test_points_and_sweep_options(tmp_path):
    assert parse_points("200,1, 10") == [1, 10, 200]
    with pytest.raises(ConfigurationError, match="positive number of edits"):
        parse_points("1,x")
    sweep = sweep_options(SequenceOptions(output=tmp_path, points=[1, 10, 50]))
    assert sweep.limit == 50 and sweep.extra_model_args == {"edit_mode": "sequential", "sequence_checkpoints": "1/10"}
    assert not sweep.answer_store and sweep.checkpoint_answers


def test_hparams_of_one_method_reach_only_its_runs(tmp_path):
    """--hparams for one of several methods: every run is started, each with its own method's file only."""
    hparams = tmp_path / "ft.yaml"
    hparams.write_text("layers: [1]\n")
    commands = []

    def failing_runner(command, log, progress):
        commands.append(command)
        return 1  # nothing runs; only the commands matter here

    options = SequenceOptions(output=tmp_path / "study", points=[1, 2], methods=["ft", "rome"], edit_langs=["en"],
                              hparams={"ft": str(hparams)})
    outcome = run_study(options, runner=failing_runner, show_progress=False, echo=lambda m: None)
    assert [name for name, _ in outcome.failed] == ["ft_en", "rome_en"]
    ft_args, rome_args = (next(arg for arg in command if arg.startswith("method=")) for command in commands)
    assert f"hparams={hparams}" in ft_args and "hparams=" not in rome_args


def test_overview_line_per_run_from_its_rows():
    """The overview quotes each run's own rows: reliability at every N, immediate, and the last point's
    generality/locality in the edit language first."""
    from bizsre_tasks.report.sequence_curves import overview

    def row(method, edit_lang, edits, split, lang, f1):
        return {"method": method, "edit_lang": edit_lang, "edits": edits, "split": split, "lang": lang, "f1": f1, "em": 0.0}

    rows = [row("rome", "zh", 1, "reliability", "zh", 100.0), row("rome", "zh", 5, "reliability", "zh", 40.0),
            row("rome", "zh", 5, "reliability_immediate", "zh", 90.0), row("rome", "zh", 5, "generality", "en", 11.0),
            row("rome", "zh", 5, "generality", "zh", 22.0), row("rome", "zh", 5, "locality", "en", 33.0),
            row("rome", "zh", 5, "locality", "zh", 44.0), row("ft", "en", 1, "reliability", "en", 70.0)]
    lines = overview(rows)
    assert lines[0].startswith("| Run | reliability N=1 | 5 | immediate | generality@5 | locality@5 |")
    assert lines[2] == "| FT, edit en | 70.0 |  |  |  /  |  /  |"
    assert lines[3] == "| ROME, edit zh | 100.0 | 40.0 | 90.0 | 22.0 / 11.0 | 44.0 / 33.0 |"
