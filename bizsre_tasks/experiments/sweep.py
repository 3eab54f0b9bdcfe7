"""`bizsre sweep`: the harness once per (method, edit language), resumable.

Each run is its own `lm_eval` process (through `bizsre run`, i.e. lm_eval's command line with
edited-hf registered) writing into OUTPUT/<method>_<edit_lang>/, so a crash or an out-of-memory kill
in one run cannot take the others down, and every run leaves ordinary lm-eval results and samples
files that `bizsre report` (or anyone) can read. A run whose results file is complete is skipped,
so re-running the same command resumes an interrupted sweep.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.report.results_reader import (
    RUN_LOG_NAME,
    ResultsFileError,
    RunResult,
    find_results_files,
    read_results,
)
from bizsre_tasks.tasks.data_loading import TEST_FILE_ENV
from bizsre_tasks.tasks.task_docs import PROTOCOLS
from bizsre_tasks.tasks.task_generation import (
    BUNDLED_DIR,
    BUNDLED_LANGUAGES,
    PER_LANGUAGE_SPLITS,
)
from bizsre_tasks.wrapper.edit_modes import CASE_ORDERS

GROUP = "bizsre"
EXPECTED_TASKS = ("reliability", *(f"{split}_{lang}" for split in PER_LANGUAGE_SPLITS for lang in BUNDLED_LANGUAGES))
# `--hparams METHOD=paper`: a bundled preset (editing.registry.PRESETS; not imported here, it needs torch).
HPARAMS_PRESETS = ("paper",)
RESERVED_ARGS = ("method", "edit_lang", "protocol", "pretrained", "test_file", "train_file", "hparams", "checkpoint", "answer_store",
                 "checkpoint_answers", "case_order")
INCOMPLETE_DIR = ".incomplete"  # hidden, so `bizsre report` does not read set-aside runs
# Outside the run folders (which are set aside when unfinished), hidden from `bizsre report`.
ANSWERS_DIR = ".answers"
# `--case-order reverse`: a second sweep on the same folder, working from the last case of the last run back,
# sharing the answer stores; its own results and logs go here (hidden from `bizsre report`).
REVERSE_DIR = ".reverse"


@dataclass
class SweepOptions:
    output: Path
    methods: list[str]
    edit_langs: list[str]
    pretrained: str | None = None
    limit: int | None = None
    protocol: str = "teacher_forced"
    test_file: str | None = None
    train_files: dict[str, str] = field(default_factory=dict)  # edit language -> file
    hparams: dict[str, str] = field(default_factory=dict)  # method -> YAML
    checkpoints: dict[str, str] = field(default_factory=dict)  # "<method>_<edit_lang>" -> folder (SERAC, MEND)
    extra_model_args: dict[str, str] = field(default_factory=dict)
    batch_size: str | None = None
    device: str | None = None
    answer_store: bool = True  # edited-hf saves answers per case, so a killed run resumes mid-way
    checkpoint_answers: str | None = None  # edit_mode=sequential: file name, in each run folder, of the checkpoint answers
    case_order: str = "forward"  # reverse: runs last to first, each run's cases last to first (edited-hf case_order)


@dataclass(frozen=True)
class PlannedRun:
    method: str
    edit_lang: str
    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name


def parse_key_values(text: str | None, what: str) -> dict[str, str]:
    """`k=v,k=v` (model_args style) -> dict."""
    pairs = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ConfigurationError(f"{what}: '{part}' is not key=value")
        key, value = part.split("=", 1)
        pairs[key.strip()] = value.strip()
    return pairs


def _check_value(value: str, what: str) -> None:
    if "," in value:
        raise ConfigurationError(f"{what} '{value}' contains a comma, which lm_eval's --model_args cannot carry")


def validate(options: SweepOptions) -> None:
    """Every option checked before the first run starts, not hours later when its run comes up."""
    from bizsre_tasks.editing.registry import METHODS

    if not options.methods or not options.edit_langs:
        raise ConfigurationError("give at least one method (--methods) and one edit language (--edit-langs)")
    for method in options.methods:
        if method not in METHODS:
            raise ConfigurationError(f"unknown method '{method}'; choose from: {', '.join(METHODS)}")
        if importlib.util.find_spec(METHODS[method].split(":")[0]) is None:
            raise ConfigurationError(f"method '{method}' is not available in this version of bizsre-tasks")
    for lang in options.edit_langs:
        if lang not in BUNDLED_LANGUAGES:
            raise ConfigurationError(f"edit language '{lang}' is not one of the bundled task languages {', '.join(BUNDLED_LANGUAGES)}")
    if options.protocol not in PROTOCOLS:
        raise ConfigurationError(f"unknown protocol '{options.protocol}'; choose one of: {', '.join(PROTOCOLS)}")
    if options.case_order not in CASE_ORDERS:
        raise ConfigurationError(f"unknown case order '{options.case_order}'; choose one of: {', '.join(CASE_ORDERS)}")
    if options.case_order == "reverse" and not options.answer_store:
        raise ConfigurationError("--case-order reverse shares the forward sweep's answer stores; it cannot run with --no-answer-store")
    clash = sorted(set(options.extra_model_args) & set(RESERVED_ARGS))
    if clash:
        raise ConfigurationError(f"--extra-model-args may not set {', '.join(clash)}; the sweep sets those (use its own options)")
    _validate_files(options)


def _validate_files(options: SweepOptions) -> None:
    unknown = sorted(set(options.hparams) - set(options.methods))
    if unknown:
        raise ConfigurationError(f"--hparams names method(s) not in --methods: {', '.join(unknown)}")
    runs = {run.name for run in plan_runs(options)}
    unknown = sorted(set(options.checkpoints) - runs)
    if unknown:
        raise ConfigurationError(f"--checkpoint names run(s) not in this sweep: {', '.join(unknown)}; runs are {', '.join(sorted(runs))}")
    if options.pretrained:
        _check_value(options.pretrained, "pretrained")
    paths = [("test file", options.test_file), *((f"train file ({k})", v) for k, v in options.train_files.items()),
             *((f"hparams ({k})", v) for k, v in options.hparams.items() if v not in HPARAMS_PRESETS),
             *((f"checkpoint ({k})", v) for k, v in options.checkpoints.items())]
    for what, path in paths:
        if path is not None:
            _check_value(path, what)
            if not Path(path).expanduser().exists():
                raise ConfigurationError(f"{what} {path} not found")


def plan_runs(options: SweepOptions) -> list[PlannedRun]:
    reverse = options.case_order == "reverse"
    folder = options.output / REVERSE_DIR if reverse else options.output
    runs = [PlannedRun(m, lang, folder / f"{m}_{lang}") for m in options.methods for lang in options.edit_langs]
    return runs[::-1] if reverse else runs


def model_args(run: PlannedRun, options: SweepOptions) -> dict[str, str]:
    args = {"method": run.method, "edit_lang": run.edit_lang, "protocol": options.protocol}
    if options.pretrained:
        args["pretrained"] = options.pretrained
    # The test file is always named in model_args (also when it came from $BIZSRE_TEST_FILE), so
    # every results file says what it was computed on.
    test_file = options.test_file or os.environ.get(TEST_FILE_ENV)
    if test_file:
        args["test_file"] = str(Path(test_file).expanduser().resolve())
    if run.edit_lang in options.train_files:
        args["train_file"] = str(Path(options.train_files[run.edit_lang]).expanduser().resolve())
    if run.method in options.hparams:
        value = options.hparams[run.method]  # a preset name (`paper`) passes through as it is
        args["hparams"] = value if value in HPARAMS_PRESETS else str(Path(value).expanduser().resolve())
    if run.name in options.checkpoints:
        args["checkpoint"] = str(Path(options.checkpoints[run.name]).expanduser().resolve())
    if options.answer_store:
        # Keyed by weights, method, hparams, edit language, protocol and seed inside edited-hf, so
        # answers are never reused under another setting.
        args["answer_store"] = str((options.output / ANSWERS_DIR / run.name).resolve())
    if options.checkpoint_answers:
        args["checkpoint_answers"] = str((run.folder / options.checkpoint_answers).resolve())
    if options.case_order != "forward":
        args["case_order"] = options.case_order
    args.update(options.extra_model_args)
    return args


def lm_eval_arguments(run: PlannedRun, options: SweepOptions) -> list[str]:
    """lm_eval's own options for one run."""
    joined = ",".join(f"{k}={v}" for k, v in model_args(run, options).items())
    argv = ["--model", "edited-hf", "--model_args", joined, "--tasks", GROUP, "--include_path", str(BUNDLED_DIR),
            "--output_path", str(run.folder), "--log_samples"]
    if options.limit is not None:
        argv += ["--limit", str(options.limit)]
    if options.batch_size:
        argv += ["--batch_size", str(options.batch_size)]
    if options.device:
        argv += ["--device", options.device]
    return argv


def command(run: PlannedRun, options: SweepOptions) -> list[str]:
    # `python -m bizsre_tasks.cli run` is lm_eval's CLI with edited-hf registered even where
    # `bizsre prepare` did not install the start-up hook.
    return [sys.executable, "-m", "bizsre_tasks.cli", "run", *lm_eval_arguments(run, options)]


def shell_line(run: PlannedRun, options: SweepOptions) -> str:
    """The same run as a plain lm_eval command, for the log and for repeating it by hand."""
    return shlex.join(["lm_eval", *lm_eval_arguments(run, options)])


def finished_result(run: PlannedRun) -> RunResult | None:
    """The run's results when its folder holds a parseable results file with all seven tasks (and
    their samples files); None otherwise."""
    if not run.folder.is_dir():
        return None
    for path in reversed(find_results_files(run.folder)):
        try:
            result = read_results(path)
        except ResultsFileError:
            continue
        if result and all(task in result.scores for task in EXPECTED_TASKS) and all(
            result.samples_file(task).is_file() for task in EXPECTED_TASKS
        ):
            return result
    return None


def mismatch(result: RunResult, run: PlannedRun, options: SweepOptions) -> str | None:
    """Why a finished run is not the run this sweep asks for (different limit, model, protocol...)."""
    wanted = model_args(run, options)
    for key in ("method", "edit_lang", "protocol", "pretrained", "test_file", "edit_mode"):
        have = result.model_args.get(key, "none" if key == "method" else None)
        if key == "protocol":
            have = result.protocol
        if (wanted.get(key) or None) != (have or None):
            return f"{key}={have} (this sweep: {wanted.get(key)})"
    limit = None if result.limit is None else float(result.limit)
    if limit != (None if options.limit is None else float(options.limit)):
        return f"limit={result.limit} (this sweep: {options.limit})"
    return None


def set_aside(run: PlannedRun) -> Path | None:
    """Moves the leftovers of an unfinished run out of the way (kept, not deleted)."""
    if not run.folder.exists() or not any(run.folder.iterdir()):
        return None
    target = run.folder.parent / INCOMPLETE_DIR / f"{run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run.folder), str(target))
    return target


@dataclass
class SweepOutcome:
    skipped: list[PlannedRun] = field(default_factory=list)
    finished: list[PlannedRun] = field(default_factory=list)
    failed: list[tuple[PlannedRun, str]] = field(default_factory=list)


Runner = Callable[[list[str], Path, Callable[[float], None]], int]


def pending_runs(options: SweepOptions, outcome: SweepOutcome) -> list[PlannedRun]:
    """Runs still to do; finished ones go to `outcome.skipped`. A finished run made with other
    settings stops the sweep before anything runs, so results never mix silently."""
    pending, conflicts = [], []
    for run in plan_runs(options):
        result = finished_result(run)
        if result is None and options.case_order == "reverse":  # the forward sweep may have finished it
            result = finished_result(PlannedRun(run.method, run.edit_lang, options.output / run.name))
        if result is None:
            pending.append(run)
            continue
        reason = mismatch(result, run, options)
        if reason:
            conflicts.append(f"{run.folder}: {reason}")
        outcome.skipped.append(run)
    if conflicts:
        raise ConfigurationError(
            "the output folder holds finished runs made with other settings:\n  " + "\n  ".join(conflicts)
            + "\nuse another --output folder, or delete those run folders to redo them"
        )
    return pending


def run_sweep(options: SweepOptions, runner: Runner | None = None, show_progress: bool = True, echo=print) -> SweepOutcome:
    from tqdm.auto import tqdm

    from bizsre_tasks.experiments.sweep_runner import run_logged

    validate(options)
    runner = runner or run_logged
    outcome = SweepOutcome()
    pending = pending_runs(options, outcome)
    if pending and "test_file" not in model_args(pending[0], options):
        echo(f"note: no --test-file and no ${TEST_FILE_ENV}: the runs use the bundled demo sample")
    for run in outcome.skipped:
        echo(f"skip {run.name}: finished results in {run.folder}")
    desc = f"sweep ({len(outcome.skipped)} already done)" if outcome.skipped else "sweep"
    bar = tqdm(total=len(pending), unit="run", desc=desc, disable=not show_progress,
               bar_format="{l_bar}{bar}| {n:.1f}/{total} runs [{elapsed}<{remaining}{postfix}]")
    for index, run in enumerate(pending):
        moved = set_aside(run)
        if moved:
            tqdm.write(f"{run.name}: unfinished leftovers moved to {moved}")
        run.folder.mkdir(parents=True, exist_ok=True)
        log = run.folder / RUN_LOG_NAME
        log.write_text(f"# {shell_line(run, options)}\n", encoding="utf-8")
        bar.set_postfix_str(run.name)
        started = time.monotonic()

        def progress(fraction: float, index=index) -> None:
            bar.n = index + min(max(fraction, 0.0), 1.0)
            bar.refresh()

        code = runner(command(run, options), log, progress)
        took = _duration(time.monotonic() - started)
        result = finished_result(run) if code == 0 else None
        if result is None:
            reason = f"exit status {code}" if code else "no complete results file was written"
            outcome.failed.append((run, reason))
            tqdm.write(f"FAILED {run.name} after {took}: {reason}; log: {log}")
        else:
            outcome.finished.append(run)
            rel = result.scores["reliability"]
            tqdm.write(f"done {run.name} in {took}: reliability F1 {100 * rel.f1:.1f}, EM {100 * rel.em:.1f}")
        progress(1.0)
    bar.close()
    return outcome


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
