"""`bizsre scale-study`: how SERAC, MEND and IKE scale with training data (the paper's Figure 3).

For every point (method, edit language, training size N):
- SERAC, MEND: `bizsre train METHOD --train-size N` writes OUTPUT/checkpoints/<method>_<lang>_<N>/
  (a child process; the trainer itself reuses a finished checkpoint and resumes an unfinished one);
- IKE: nothing to train, its demonstration pool is the first N records (hparam `pool_size`, written
  into OUTPUT/hparams/ike_<N>.yaml);
- the point is evaluated by the sweep machinery (`bizsre_tasks.experiments.sweep`: one lm_eval child with
  --log_samples) into OUTPUT/runs/size_<N>/<method>_<lang>/, so its numbers are lm-eval's own files;
- OUTPUT/points/<method>_<lang>_<N>.json gets the F1/EM per language, the training time and the
  checkpoint. A point with that file is finished and skipped next time.
The summary (CSV, Markdown) and the plot are rebuilt from the point files at the end of every run.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bizsre_tasks.editing.checkpoints import read_manifest
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.experiments.sweep import (
    Runner,
    SweepOptions,
    finished_result,
    plan_runs,
    run_sweep,
)
from bizsre_tasks.tasks import data_loading
from bizsre_tasks.tasks.task_docs import PROTOCOLS
from bizsre_tasks.tasks.task_generation import BUNDLED_LANGUAGES
from bizsre_tasks.training import TRAINERS

SCALE_METHODS = ("serac", "mend", "ike")
TRAINED_METHODS = tuple(TRAINERS)
DEFAULT_SIZES = (100, 500, 1000, 3000, 5000)
POINT_FORMAT = "bizsre-scale-point/1"
# The trainer options the study sets itself, per point.
RESERVED_TRAIN_OPTIONS = ("--out", "--train-file", "--train-size", "--edit-lang", "--pretrained", "--aligned-file")
# Seconds a trainer spent on the work itself, by manifest metric (SERAC: encoding + head; MEND:
# precompute + hypernetwork), so a reused checkpoint still reports what it cost to train.
TRAINING_SECONDS_KEYS = ("encode_seconds", "train_seconds", "precompute_seconds")
# Methods that learn from training data without a trainer: their "training size" is this hyperparameter
# (IKE: its demonstration pool is the first N training records), written into the hparams file of each point.
SIZE_HPARAM = {"ike": "pool_size"}


@dataclass
class ScaleOptions:
    output: Path
    sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SIZES))
    methods: list[str] = field(default_factory=lambda: list(SCALE_METHODS))
    edit_langs: list[str] = field(default_factory=lambda: list(BUNDLED_LANGUAGES))
    train_files: dict[str, str] = field(default_factory=dict)  # edit language -> file ($BIZSRE_TRAIN_FILE otherwise)
    aligned_files: dict[str, str] = field(default_factory=dict)  # "<method>_<lang>" -> trainer --aligned-file
    train_args: dict[str, list[str]] = field(default_factory=dict)  # method -> more trainer options
    hparams: dict[str, str] = field(default_factory=dict)  # method -> YAML used at evaluation
    test_file: str | None = None
    limit: int | None = None
    pretrained: str | None = None
    protocol: str = "teacher_forced"
    batch_size: str | None = None
    device: str | None = None
    answer_store: bool = True


@dataclass(frozen=True)
class Point:
    method: str
    edit_lang: str
    size: int

    @property
    def name(self) -> str:
        return f"{self.method}_{self.edit_lang}_{self.size}"


# --- parsing and checking options ------------------------------------------------------------------


def parse_size(text: str) -> int:
    """`500`, `1K`, `1k` or `1000` -> 1000; anything else (or < 1) is a ConfigurationError."""
    value = text.strip().lower()
    scale = 1000 if value.endswith("k") else 1
    try:
        size = int(value[:-1] if scale > 1 else value) * scale
    except ValueError:
        raise ConfigurationError(f"--sizes: '{text}' is not a whole number of training examples (e.g. 100,500,1K)") from None
    if size < 1:
        raise ConfigurationError(f"--sizes: {text} must be at least 1 training example")
    return size


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({parse_size(part) for part in text.split(",") if part.strip()})
    if not sizes:
        raise ConfigurationError("--sizes: give at least one training size, e.g. 100,500,1000")
    return sizes


def plan_points(options: ScaleOptions) -> list[Point]:
    """Small sizes first, so a partial study already spans the methods."""
    return [Point(m, lang, size) for size in options.sizes for lang in options.edit_langs for m in options.methods]


def train_file_for(lang: str, options: ScaleOptions) -> Path:
    chosen = options.train_files.get(lang) or os.environ.get(data_loading.TRAIN_FILE_ENV)
    if not chosen:
        raise ConfigurationError(
            f"no training file for edit language '{lang}': pass --train-file {lang}=FILE (or set ${data_loading.TRAIN_FILE_ENV})"
        )
    return Path(chosen).expanduser().resolve()


def settings(options: ScaleOptions, lang: str | None = None) -> dict:
    """What makes two points comparable (with `lang`: also that language's training file); every
    point file of one output folder must agree on it."""
    test_file = options.test_file or os.environ.get(data_loading.TEST_FILE_ENV)
    values = {
        "pretrained": options.pretrained or None,
        "protocol": options.protocol,
        "limit": options.limit,
        "test_file": str(Path(test_file).expanduser().resolve()) if test_file else None,
    }
    if lang is not None:
        values["train_file"] = str(train_file_for(lang, options))
    return values


def validate(options: ScaleOptions) -> None:
    """Everything checked before the first (hours-long) training starts."""
    unknown = [m for m in options.methods if m not in SCALE_METHODS]
    if unknown or not options.methods:
        raise ConfigurationError(
            f"--methods: unknown or untrainable method(s) {', '.join(unknown) or '(none given)'}; the scale study "
            f"covers {', '.join(SCALE_METHODS)} (the methods that learn from training data)"
        )
    if not options.sizes or any(not isinstance(s, int) or s < 1 for s in options.sizes):
        raise ConfigurationError(f"--sizes must be positive whole numbers, got {options.sizes}")
    if not options.edit_langs:
        raise ConfigurationError("--edit-langs: give at least one edit language")
    for lang in options.edit_langs:
        if lang not in BUNDLED_LANGUAGES:
            raise ConfigurationError(f"--edit-langs: '{lang}' is not one of the bundled task languages {', '.join(BUNDLED_LANGUAGES)}")
    if options.protocol not in PROTOCOLS:
        raise ConfigurationError(f"--protocol: unknown protocol '{options.protocol}'; choose one of: {', '.join(PROTOCOLS)}")
    _validate_train_files(options)
    _validate_method_options(options)


def _validate_train_files(options: ScaleOptions) -> None:
    for lang in options.edit_langs:
        path = train_file_for(lang, options)
        records = len(data_loading.load_train_records(path))  # also checks the schema now
        too_big = [s for s in options.sizes if s > records]
        if too_big:
            raise ConfigurationError(
                f"--sizes {','.join(map(str, too_big))}: more than the {records} records of the '{lang}' training file {path}"
            )


def _validate_method_options(options: ScaleOptions) -> None:
    names = {f"{m}_{lang}" for m in options.methods if m in TRAINED_METHODS for lang in options.edit_langs}
    extra = sorted(set(options.aligned_files) - names)
    if extra:
        raise ConfigurationError(f"--aligned-file names {', '.join(extra)}, not a trained method_lang of this study ({', '.join(sorted(names)) or 'none'})")
    for key, path in options.aligned_files.items():
        if not Path(path).expanduser().is_file():
            raise ConfigurationError(f"--aligned-file {key}: {path} not found")
    for method, argv in options.train_args.items():
        if method not in TRAINED_METHODS:
            raise ConfigurationError(f"--train-args: '{method}' has no trainer; give options for {' or '.join(TRAINED_METHODS)}")
        if method not in options.methods:
            raise ConfigurationError(f"--train-args names {method}, which is not in --methods ({','.join(options.methods)})")
        clash = [a for a in argv if a.split("=", 1)[0] in RESERVED_TRAIN_OPTIONS]
        if clash:
            raise ConfigurationError(f"--train-args {method}: {', '.join(clash)} is set by the study per point; use its own options")
    extra = sorted(set(options.hparams) - set(options.methods))
    if extra:
        raise ConfigurationError(f"--hparams names method(s) not in --methods: {', '.join(extra)}")


# --- where things go ---------------------------------------------------------------------------------


def point_file(options: ScaleOptions, point: Point) -> Path:
    return options.output / "points" / f"{point.name}.json"


def checkpoint_dir(options: ScaleOptions, point: Point) -> Path:
    return (options.output / "checkpoints" / point.name).resolve()


def training_log(options: ScaleOptions, point: Point) -> Path:
    return options.output / "logs" / f"train_{point.name}.log"


def aligned_file_for(point: Point, options: ScaleOptions) -> str | None:
    """--aligned-file METHOD_LANG, else, for a trainer that is aligned by default (SERAC), the other language's
    training file: Bi-ZsRE's training files are line-aligned translations, and SERAC needs them for
    cross-lingual positives."""
    chosen = options.aligned_files.get(f"{point.method}_{point.edit_lang}")
    trainer = TRAINERS.get(point.method)
    if chosen is None and trainer is not None and trainer.aligned_by_default:
        others = [lang for lang in options.train_files if lang != point.edit_lang]
        chosen = options.train_files[others[0]] if others else None
    return str(Path(chosen).expanduser().resolve()) if chosen else None


# --- the steps of one point --------------------------------------------------------------------------


def train_command(point: Point, options: ScaleOptions) -> list[str]:
    argv = [sys.executable, "-m", "bizsre_tasks.cli", "train", point.method, "--edit-lang", point.edit_lang,
            "--train-file", str(train_file_for(point.edit_lang, options)), "--train-size", str(point.size),
            "--out", str(checkpoint_dir(options, point))]
    if options.pretrained:
        argv += ["--pretrained", options.pretrained]
    aligned = aligned_file_for(point, options)
    if aligned:
        argv += ["--aligned-file", aligned]
    if options.device:
        argv += ["--device", options.device]
    return argv + list(options.train_args.get(point.method, []))


def size_hparams_file(point: Point, options: ScaleOptions) -> Path:
    """The "training" at size N of a method in SIZE_HPARAM (IKE): the user's hparams for it (if any) with its
    size hyperparameter (`pool_size: N`)."""
    import yaml

    values = {}
    if point.method in options.hparams:
        values = yaml.safe_load(Path(options.hparams[point.method]).expanduser().read_text(encoding="utf-8")) or {}
    values[SIZE_HPARAM[point.method]] = point.size
    path = options.output / "hparams" / f"{point.method}_{point.size}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=True), encoding="utf-8")
    return path


def sweep_options(point: Point, options: ScaleOptions) -> SweepOptions:
    """The point as a one-run sweep; each size has its own sweep folder (run folders are named by
    method and language only)."""
    hparams = dict(options.hparams)
    if point.method in SIZE_HPARAM:
        hparams[point.method] = str(size_hparams_file(point, options))
    checkpoints = {f"{point.method}_{point.edit_lang}": str(checkpoint_dir(options, point))} if point.method in TRAINED_METHODS else {}
    return SweepOptions(
        output=options.output / "runs" / f"size_{point.size}",
        methods=[point.method],
        edit_langs=[point.edit_lang],
        pretrained=options.pretrained,
        limit=options.limit,
        protocol=options.protocol,
        test_file=options.test_file,
        train_files={point.edit_lang: str(train_file_for(point.edit_lang, options))},
        hparams={m: path for m, path in hparams.items() if m == point.method},
        checkpoints=checkpoints,
        batch_size=options.batch_size,
        device=options.device,
        answer_store=options.answer_store,
    )


def training_summary(point: Point, options: ScaleOptions, wall_seconds: float | None) -> dict:
    if point.method not in TRAINED_METHODS:
        return {"seconds": 0.0, "wall_seconds": None, "checkpoint": None, "records": point.size,
                "note": f"no training: demonstration pool = first {point.size} records (hparam {SIZE_HPARAM[point.method]}), encoded at evaluation"}
    folder = checkpoint_dir(options, point)
    metrics = (read_manifest(folder) or {}).get("metrics", {})
    seconds = sum(float(metrics[key]) for key in TRAINING_SECONDS_KEYS if isinstance(metrics.get(key), (int, float)))
    return {"seconds": round(seconds, 1), "wall_seconds": None if wall_seconds is None else round(wall_seconds, 1),
            "checkpoint": str(folder), "records": point.size}


def scores_by_language(result) -> dict[str, dict[str, dict[str, float]]]:
    """{"en": {"reliability": {"f1", "em"}, "generality": ...}, "zh": {...}}: fractions 0..1, as lm-eval's."""
    by_lang: dict[str, dict[str, dict[str, float]]] = {}
    for key, score in result.scores.items():
        split, lang = ("reliability", result.edit_lang) if key == "reliability" else key.split("_", 1)
        by_lang.setdefault(lang, {})[split] = {"f1": score.f1, "em": score.em}
    return by_lang


def write_point(path: Path, point: Point, options: ScaleOptions, result, training: dict, eval_seconds: float | None) -> dict:
    data = {
        "format": POINT_FORMAT,
        "method": point.method,
        "edit_lang": point.edit_lang,
        "train_size": point.size,
        "settings": settings(options, point.edit_lang),
        "cases": result.cases,
        "scores": scores_by_language(result),
        "training": training,
        "evaluation": {"results_file": str(result.path.resolve()), "wall_seconds": None if eval_seconds is None else round(eval_seconds, 1)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    staging.replace(path)  # a point file is whole or absent, so its presence means finished
    return data


def read_point(path: Path) -> dict | None:
    """A finished point's data; None for a missing or unreadable (interrupted) file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == POINT_FORMAT and "scores" in data else None


def read_points(output: Path) -> list[dict]:
    return [data for path in sorted((output / "points").glob("*.json")) if (data := read_point(path))]


def check_settings(options: ScaleOptions) -> None:
    """Points made with another model, protocol, limit or data may not be mixed into one study."""
    conflicts = []
    for data in read_points(options.output):
        lang = data.get("edit_lang")
        wanted = settings(options, lang if lang in options.edit_langs else None)
        have = data.get("settings", {})
        differ = [key for key in wanted if have.get(key) != wanted[key]]
        if differ:
            conflicts.append(f"{data['method']}_{lang}_{data['train_size']}: "
                             + ", ".join(f"{k}={have.get(k)!r} (this run: {wanted[k]!r})" for k in differ))
    if conflicts:
        raise ConfigurationError(
            f"{options.output} holds points made with other settings:\n  " + "\n  ".join(conflicts)
            + "\nuse another --output folder, or delete those point files"
        )


# --- the study ---------------------------------------------------------------------------------------


@dataclass
class StudyOutcome:
    skipped: list[Point] = field(default_factory=list)
    finished: list[Point] = field(default_factory=list)
    failed: list[tuple[Point, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def train_point(point: Point, options: ScaleOptions, runner: Runner, progress: Callable[[float], None]) -> str | None:
    """Runs the trainer (which reuses a finished checkpoint of the same run); returns why it failed, or None."""
    argv = train_command(point, options)
    log = training_log(options, point)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"# {shlex.join(argv)}\n", encoding="utf-8")
    code = runner(argv, log, lambda fraction: progress(0.0))  # trainers report no case progress; this keeps the clock moving
    if code != 0 or read_manifest(checkpoint_dir(options, point)) is None:
        return f"training exited with status {code}; log: {log}"
    return None


def run_point(point: Point, options: ScaleOptions, runner: Runner, progress: Callable[[float], None]) -> str | None:
    """Train (if needed), evaluate and write the point file; returns why it failed, or None."""
    train_wall, share = None, 0.0  # share: the part of the point's bar step that training stands for
    if point.method in TRAINED_METHODS:
        started = time.monotonic()
        failure = train_point(point, options, runner, progress)
        if failure:
            return failure
        train_wall, share = time.monotonic() - started, 0.5
    progress(share)
    sweep = sweep_options(point, options)
    started = time.monotonic()
    outcome = run_sweep(sweep, runner=lambda argv, log, _: runner(argv, log, lambda f: progress(share + (1 - share) * f)),
                        show_progress=False, echo=lambda message: None)  # the study prints its own lines
    if outcome.failed:
        run, reason = outcome.failed[0]
        return f"evaluation failed ({reason}); log: {run.folder / 'lm_eval.log'}"
    eval_seconds = time.monotonic() - started if outcome.finished else None  # None: evaluated by an earlier invocation
    result = finished_result(plan_runs(sweep)[0])
    write_point(point_file(options, point), point, options, result, training_summary(point, options, train_wall), eval_seconds)
    return None


def run_study(options: ScaleOptions, runner: Runner | None = None, show_progress: bool = True, echo=print) -> StudyOutcome:
    from tqdm.auto import tqdm

    from bizsre_tasks.experiments.sweep_runner import run_logged
    from bizsre_tasks.report.training_scale import write_summary

    validate(options)
    check_settings(options)
    runner = runner or run_logged
    outcome = StudyOutcome()
    pending = []
    for point in plan_points(options):
        (outcome.skipped if read_point(point_file(options, point)) else pending).append(point)
    if pending and settings(options)["test_file"] is None:
        echo(f"note: no --test-file and no ${data_loading.TEST_FILE_ENV}: the points are evaluated on the bundled demo sample")
    if outcome.skipped:
        echo(f"{len(outcome.skipped)} point(s) already finished in {options.output / 'points'}: skipped")
    bar = tqdm(total=len(pending), unit="point", desc="scale study", disable=not (show_progress and pending),
               bar_format="{l_bar}{bar}| {n:.1f}/{total} points [{elapsed}<{remaining}{postfix}]")
    for index, point in enumerate(pending):
        bar.set_postfix_str(point.name)

        def progress(fraction: float, index=index) -> None:
            bar.n = index + min(max(fraction, 0.0), 1.0)
            bar.refresh()

        reason = run_point(point, options, runner, progress)
        if reason:
            outcome.failed.append((point, reason))
            tqdm.write(f"FAILED {point.name}: {reason}")
        else:
            outcome.finished.append(point)
            tqdm.write(f"point {point.name} written to {point_file(options, point)}")
        progress(1.0)
    bar.close()
    outcome.files = write_summary(options.output, read_points(options.output), warn=echo)
    return outcome
