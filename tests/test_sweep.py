"""`bizsre sweep`: planning, commands, resume, failures (with a mocked runner), the log runner,
and one real sweep + report on a tiny model (slow)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bizsre_tasks import cli
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.experiments import sweep_runner
from bizsre_tasks.experiments.sweep import SweepOptions, command, plan_runs, run_sweep
from bizsre_tasks.tasks.task_generation import BUNDLED_DIR
from tests.test_report import TASKS, flat_cases, write_run


def options(tmp_path: Path, **overrides) -> SweepOptions:
    values = {"output": tmp_path / "sweep", "methods": ["none"], "edit_langs": ["en", "zh"], "limit": 2}
    values.update(overrides)
    return SweepOptions(**values)


def model_args_of(argv: list[str]) -> dict[str, str]:
    text = argv[argv.index("--model_args") + 1]
    return dict(part.split("=", 1) for part in text.split(","))


class FakeRunner:
    """Stands in for the lm_eval child: writes a complete run (or fails) and records the calls."""

    def __init__(self, fail: tuple[str, ...] = ()):
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: list[str], log: Path, on_progress) -> int:
        self.calls.append(argv)
        assert log.is_file()
        args = model_args_of(argv)
        folder = Path(argv[argv.index("--output_path") + 1])
        if f"{args['method']}_{args['edit_lang']}" in self.fail:
            return 1
        on_progress(0.5)
        write_run(folder, args["method"], args["edit_lang"], flat_cases(0.5), model_args=args,
                  limit=float(argv[argv.index("--limit") + 1]))
        return 0


def finished(folder: Path, edit_lang: str, limit: float = 2.0, **args) -> None:
    model_args = {"method": "none", "edit_lang": edit_lang, "protocol": "teacher_forced", **args}
    write_run(folder, "none", edit_lang, flat_cases(0.3), model_args=model_args, limit=limit)


def test_command_line(tmp_path: Path) -> None:
    train = tmp_path / "train_en.tsv"
    train.write_text("q\ta\n", encoding="utf-8")
    opts = options(tmp_path, methods=["none"], edit_langs=["en"], train_files={"en": str(train)},
                   extra_model_args={"seed": "7"}, batch_size="4")
    (run,) = plan_runs(opts)
    argv = command(run, opts)
    assert argv[:4] == [sys.executable, "-m", "bizsre_tasks.cli", "run"]
    assert argv[argv.index("--include_path") + 1] == str(BUNDLED_DIR)
    assert argv[argv.index("--tasks") + 1] == "bizsre" and argv[argv.index("--model") + 1] == "edited-hf"
    assert "--log_samples" in argv and argv[argv.index("--output_path") + 1] == str(tmp_path / "sweep" / "none_en")
    assert argv[argv.index("--limit") + 1] == "2" and argv[argv.index("--batch_size") + 1] == "4"
    args = model_args_of(argv)
    assert args["method"] == "none" and args["edit_lang"] == "en" and args["protocol"] == "teacher_forced"
    assert args["train_file"] == str(train.resolve()) and args["seed"] == "7"
    assert args["answer_store"] == str((tmp_path / "sweep" / ".answers" / "none_en").resolve())
    opts.answer_store = False
    assert "answer_store" not in model_args_of(command(run, opts))


def test_per_run_checkpoint_and_per_method_hparams(tmp_path: Path) -> None:
    ckpt, yaml_file = tmp_path / "mend-en", tmp_path / "rome.yaml"
    ckpt.mkdir()
    yaml_file.write_text("layer: 5\n", encoding="utf-8")
    opts = options(tmp_path, methods=["mend", "rome"], checkpoints={"mend_en": str(ckpt)}, hparams={"rome": str(yaml_file)})
    by_name = {run.name: model_args_of(command(run, opts)) for run in plan_runs(opts)}
    assert by_name["mend_en"]["checkpoint"] == str(ckpt.resolve()) and "checkpoint" not in by_name["mend_zh"]
    assert by_name["rome_zh"]["hparams"] == str(yaml_file.resolve()) and "hparams" not in by_name["mend_en"]
    with pytest.raises(ConfigurationError, match="--checkpoint names run"):
        run_sweep(options(tmp_path, checkpoints={"mend_fr": str(ckpt)}), runner=FakeRunner(), show_progress=False, echo=lambda m: None)


def test_resume_skips_finished_runs(tmp_path: Path) -> None:
    opts = options(tmp_path)
    finished(opts.output / "none_en", "en")
    runner = FakeRunner()
    outcome = run_sweep(opts, runner=runner, show_progress=False, echo=lambda m: None)
    assert [model_args_of(c)["edit_lang"] for c in runner.calls] == ["zh"]
    assert [r.name for r in outcome.skipped] == ["none_en"] and [r.name for r in outcome.finished] == ["none_zh"]
    # Everything is done now: a second sweep runs nothing.
    again = FakeRunner()
    outcome = run_sweep(opts, runner=again, show_progress=False, echo=lambda m: None)
    assert again.calls == [] and len(outcome.skipped) == 2


def test_unfinished_run_is_redone_and_set_aside(tmp_path: Path) -> None:
    opts = options(tmp_path, edit_langs=["en"])
    path = write_run(opts.output / "none_en", "none", "en", flat_cases(0.3))
    path.write_text(path.read_text(encoding="utf-8")[:100], encoding="utf-8")  # truncated
    runner = FakeRunner()
    outcome = run_sweep(opts, runner=runner, show_progress=False, echo=lambda m: None)
    assert len(runner.calls) == 1 and [r.name for r in outcome.finished] == ["none_en"]
    aside = list((opts.output / ".incomplete").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("none_en-")
    # The report reads the new run and ignores the set-aside one.
    from bizsre_tasks.report.results_reader import load_runs

    (run,) = load_runs([opts.output], warn=lambda m: None)
    assert run.scores["reliability"].f1 == pytest.approx(0.5)


def test_a_reverse_sweep_works_from_the_other_end_on_the_same_stores(tmp_path: Path) -> None:
    forward = options(tmp_path, methods=["none", "rome"])
    reverse = options(tmp_path, methods=["none", "rome"], case_order="reverse")
    assert [run.name for run in plan_runs(reverse)] == ["rome_zh", "rome_en", "none_zh", "none_en"]
    (run,) = [run for run in plan_runs(reverse) if run.name == "rome_zh"]
    args = model_args_of(command(run, reverse))
    assert args["case_order"] == "reverse" and "case_order" not in model_args_of(command(plan_runs(forward)[0], forward))
    assert args["answer_store"] == model_args_of(command(plan_runs(forward)[-1], forward))["answer_store"]
    assert run.folder == tmp_path / "sweep" / ".reverse" / "rome_zh"

    # Runs the forward sweep finished are skipped; the reverse sweep's own results stay out of the report's way.
    write_run(forward.output / "rome_zh", "rome", "zh", flat_cases(0.3), model_args={"method": "rome", "edit_lang": "zh", "protocol": "teacher_forced"}, limit=2.0)
    runner = FakeRunner()
    outcome = run_sweep(reverse, runner=runner, show_progress=False, echo=lambda m: None)
    assert [r.name for r in outcome.skipped] == ["rome_zh"]
    assert [f"{model_args_of(c)['method']}_{model_args_of(c)['edit_lang']}" for c in runner.calls] == ["rome_en", "none_zh", "none_en"]
    assert (tmp_path / "sweep" / ".reverse" / "none_en").is_dir() and not (tmp_path / "sweep" / "none_en").exists()


def test_run_with_missing_tasks_is_not_finished(tmp_path: Path) -> None:
    opts = options(tmp_path, edit_langs=["en"])
    write_run(opts.output / "none_en", "none", "en", flat_cases(0.3), tasks=TASKS[:4],
              model_args={"method": "none", "edit_lang": "en", "protocol": "teacher_forced"})
    runner = FakeRunner()
    run_sweep(opts, runner=runner, show_progress=False, echo=lambda m: None)
    assert len(runner.calls) == 1


def test_failures_continue_and_are_reported(tmp_path: Path, monkeypatch, capsys) -> None:
    runner = FakeRunner(fail=("none_en",))
    monkeypatch.setattr(sweep_runner, "run_logged", runner)
    monkeypatch.setitem(cli.SUBCOMMANDS, "sweep", ("bizsre_tasks.commands.sweep", "sweep"))
    code = cli.main(["sweep", "--methods", "none", "--edit-langs", "en,zh", "--limit", "2",
                     "--output", str(tmp_path / "sweep"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1 and len(runner.calls) == 2
    assert "1 run(s) finished, 0 already done, 1 failed" in out and "failed: none_en (exit status 1)" in out
    assert (tmp_path / "sweep" / "none_en" / "lm_eval.log").read_text(encoding="utf-8").startswith("# lm_eval --model edited-hf")


def test_finished_run_with_other_settings_stops_before_running(tmp_path: Path) -> None:
    opts = options(tmp_path, limit=5)
    finished(opts.output / "none_en", "en", limit=2.0)
    runner = FakeRunner()
    with pytest.raises(ConfigurationError, match="limit=2.0 \\(this sweep: 5\\)"):
        run_sweep(opts, runner=runner, show_progress=False, echo=lambda m: None)
    assert runner.calls == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"methods": ["nosuch"]}, "unknown method 'nosuch'"),
        ({"edit_langs": ["fr"]}, "edit language 'fr'"),
        ({"extra_model_args": {"method": "rome"}}, "may not set method"),
        ({"test_file": "/no/such/file.json"}, "test file /no/such/file.json not found"),
        ({"hparams": {"rome": "/x.yaml"}}, "not in --methods"),
        ({"extra_model_args": {"case_order": "reverse"}}, "may not set case_order"),
        ({"case_order": "sideways"}, "unknown case order 'sideways'"),
        ({"case_order": "reverse", "answer_store": False}, "cannot run with --no-answer-store"),
    ],
)
def test_invalid_options(tmp_path: Path, overrides, message) -> None:
    with pytest.raises(ConfigurationError, match=message):
        run_sweep(options(tmp_path, **overrides), runner=FakeRunner(), show_progress=False, echo=lambda m: None)


def test_run_logged_reports_case_progress(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "for i in range(4):\n"
        "    sys.stderr.write(f'\\redited-hf rome (edit_lang=en): {25*i}%|##| {i}/3 [00:01<00:02, 1.0case/s]')\n"
        "    sys.stderr.flush(); time.sleep(0.05)\n"
        "print('done'); sys.exit(3)\n"
    )
    seen = []
    log = tmp_path / "lm_eval.log"
    code = sweep_runner.run_logged([sys.executable, "-c", script], log, seen.append)
    assert code == 3
    # Chunks may arrive together under load: only the last value and the order are certain.
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    assert "done" in log.read_text(encoding="utf-8")


@pytest.mark.slow
def test_real_sweep_and_report_on_tiny_model(tiny_gemma: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """A real lm_eval child process (method none, tiny model, bundled sample, 2 cases), then the report."""
    monkeypatch.delenv("BIZSRE_TEST_FILE", raising=False)
    for name, module in (("sweep", "bizsre_tasks.commands.sweep"), ("report", "bizsre_tasks.commands.report")):
        monkeypatch.setitem(cli.SUBCOMMANDS, name, (module, name))
    out = tmp_path / "sweep"
    code = cli.main(["sweep", "--pretrained", str(tiny_gemma), "--methods", "none", "--edit-langs", "zh",
                     "--limit", "2", "--output", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr()
    assert cli.main(["report", str(out), "--cases"]) == 0
    rows = (out / "report" / "table2.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"{tiny_gemma.name},teacher_forced,single,zh,No edit,")
    assert (out / "report" / "cases.md").is_file()
    assert (out / "report" / f"radar_{tiny_gemma.name}_teacher_forced.png").is_file()


def test_key_value_options_keep_plugin_class_names() -> None:
    from bizsre_tasks.commands.sweep import key_value_pairs

    pairs = key_value_pairs(["ROME=a.yaml", "my_pkg.methods:FancyEdit=b.yaml"], "--hparams", "METHOD=YAML")
    assert pairs == {"rome": "a.yaml", "my_pkg.methods:FancyEdit": "b.yaml"}
    with pytest.raises(ConfigurationError, match="--hparams expects METHOD=YAML"):
        key_value_pairs(["rome"], "--hparams", "METHOD=YAML")
