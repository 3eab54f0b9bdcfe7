"""`bizsre sequence-study`: scores against the number of sequential edits (issue 15).

One lm_eval run per (method, edit language) in edit_mode=sequential over the first max(N) cases, with
the wrapper's `sequence_checkpoints` answering, after the k-th edit, the post-edit questions of the
first k cases for every smaller N (`bizsre_tasks.wrapper.sequence_checkpoints`). Edits 1..k of the long
run are exactly those of a run limited to k cases, so one run gives every point of the curve.

- the runs go through the sweep machinery into OUTPUT/runs/<method>_<lang>/ (lm-eval's own results and
  samples files; a finished run is skipped next time, an unfinished one is redone: a sequence cannot
  resume mid-way);
- the point N = max(N) is the run's own results; smaller points are scored from the checkpoint answers
  with the tasks' own `process_results` (the unedited answers a locality score needs come from the
  run's samples);
- OUTPUT/curves/<method>_<lang>.json holds a finished run's curve (every point's scores, the settings,
  the wall time); a run with a curve file is done and skipped next time, even without its run folder, so
  the curve files alone (small, fit to commit) carry a study across machines;
- OUTPUT/sequence.csv, sequence.md and one figure per edit language are rebuilt from the curve files at
  the end.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.experiments.sweep import (
    EXPECTED_TASKS,
    PlannedRun,
    Runner,
    SweepOptions,
    finished_result,
    plan_runs,
    run_sweep,
)
from bizsre_tasks.experiments.sweep import validate as validate_sweep
from bizsre_tasks.report.results_reader import RunResult, read_samples
from bizsre_tasks.tasks import answer_lines, data_loading, run_state, task_docs
from bizsre_tasks.tasks.task_docs import PROTOCOLS
from bizsre_tasks.tasks.task_generation import BUNDLED_LANGUAGES
from bizsre_tasks.wrapper import sequence_checkpoints

DEFAULT_METHODS = ("ft", "rome", "memit", "alphaedit", "ike")
DEFAULT_POINTS = (1, 10, 50, 100, 200)
CHECKPOINT_FILE = "checkpoint_answers.jsonl"
CURVE_FORMAT = "bizsre-sequence-curve/1"


@dataclass
class SequenceOptions:
    output: Path
    points: list[int] = field(default_factory=lambda: list(DEFAULT_POINTS))
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    edit_langs: list[str] = field(default_factory=lambda: list(BUNDLED_LANGUAGES))
    test_file: str | None = None
    train_files: dict[str, str] = field(default_factory=dict)
    hparams: dict[str, str] = field(default_factory=dict)
    pretrained: str | None = None
    protocol: str = "teacher_forced"
    batch_size: str | None = None
    device: str | None = None


def parse_points(text: str) -> list[int]:
    """`1,10,50` -> [1, 10, 50]."""
    points = set()
    for part in text.split(","):
        if not part.strip():
            continue
        if not part.strip().isdigit() or int(part) < 1:
            raise ConfigurationError(f"--points: '{part.strip()}' is not a positive number of edits (e.g. 1,10,50,100,200)")
        points.add(int(part))
    if not points:
        raise ConfigurationError("--points: give at least one number of edits, e.g. 1,10,50,100,200")
    return sorted(points)


def sweep_options(options: SequenceOptions) -> SweepOptions:
    """The study's runs: sequential over the first max(N) cases, answering the smaller N on the way."""
    if options.protocol not in PROTOCOLS:
        raise ConfigurationError(f"--protocol: unknown protocol '{options.protocol}'; choose one of: {', '.join(PROTOCOLS)}")
    last = max(options.points)
    extra = {"edit_mode": "sequential"}
    earlier = [k for k in options.points if k < last]
    if earlier:
        extra["sequence_checkpoints"] = "/".join(map(str, earlier))
    return SweepOptions(
        output=options.output / "runs", methods=list(options.methods), edit_langs=list(options.edit_langs),
        pretrained=options.pretrained, limit=last, protocol=options.protocol, test_file=options.test_file,
        train_files=dict(options.train_files), hparams=dict(options.hparams), extra_model_args=extra,
        batch_size=options.batch_size, device=options.device,
        answer_store=False,  # a sequence is redone whole, and a stored run would write no checkpoint answers
        checkpoint_answers=CHECKPOINT_FILE if earlier else None,
    )


# --- scoring a finished run --------------------------------------------------------------------------


def _mean(rows: list[dict[str, float]], name: str) -> float:
    return sum(row[name] for row in rows) / len(rows)


def _rescored(samples: list[dict], answers: dict[int, str], task: str, protocol: str) -> list[dict[str, float]]:
    """The task's own scores of the checkpoint answers (doc_id -> answer); a locality doc keeps its
    unedited answer from the run."""
    scores = []
    for sample in samples:
        doc_id = sample["doc_id"]
        if doc_id not in answers:
            continue
        answer = answers[doc_id]
        if protocol in answer_lines.GENERATED_PROTOCOLS:  # as the task's filter does
            answer = answer_lines.first_nonempty_line(answer)
        doc = sample["doc"]
        if doc["split"] == "locality":
            unedited = sample["filtered_resps"][0][0]
            scores.append(task_docs.process_results(doc, [[unedited, answer]]))
        else:
            scores.append(task_docs.process_results(doc, [[answer]]))
    return scores


def curve_rows(result: RunResult, checkpoint_file: Path | None) -> list[dict]:
    """One row per (edits, split, language): F1/EM in percent over the cases edited so far."""
    run_state.record_wrapper_protocol(result.protocol)  # the answers were the wrapper's, as in the run
    last = int(result.limit) if result.limit else result.cases
    rows = []
    for key, score in result.scores.items():
        rows.append(_row(result, last, key, 100 * score.f1, 100 * score.em, result.cases))
    immediate = _immediate(result)
    if immediate:
        rows.append(_row(result, last, "reliability_immediate", *immediate, result.cases))
    if checkpoint_file is None or not checkpoint_file.is_file():
        return rows
    checkpoints = sequence_checkpoints.read_checkpoint_answers(checkpoint_file)
    samples = {key: read_samples(result.samples_file(key)) for key in EXPECTED_TASKS}
    for edits, answers in sorted(checkpoints.items()):
        for key in EXPECTED_TASKS:
            task = result.task_names.get(key, f"bizsre_{key}")
            mine = {doc_id: answer for (name, doc_id), answer in answers.items() if name == task}
            scored = _rescored(samples[key], mine, task, result.protocol)
            if scored:
                rows.append(_row(result, edits, key, 100 * _mean(scored, "f1"), 100 * _mean(scored, "em"), len(scored)))
    return rows


def _immediate(result: RunResult) -> tuple[float, float] | None:
    if result.immediate is None:
        return None
    return 100 * result.immediate.f1, 100 * result.immediate.em


def _evaluation_seconds(result: RunResult) -> float | None:
    value = json.loads(result.path.read_text(encoding="utf-8")).get("total_evaluation_time_seconds")
    return float(value) if value not in (None, "") else None


def _row(result: RunResult, edits: int, key: str, f1: float, em: float, cases: int | None) -> dict:
    if key.startswith("reliability"):
        split, lang = key, result.edit_lang
    else:
        split, lang = key.split("_", 1)
    return {"method": result.method, "edit_lang": result.edit_lang, "edits": edits, "split": split, "lang": lang,
            "f1": round(f1, 2), "em": round(em, 2), "cases": cases}


# --- curve files: one per finished run, what the summary is built from --------------------------------


def settings(options: SequenceOptions) -> dict:
    """What makes two runs' curves comparable; every curve file of one study folder must agree on it."""
    test_file = options.test_file or os.environ.get(data_loading.TEST_FILE_ENV)
    return {"pretrained": options.pretrained or None, "protocol": options.protocol, "points": sorted(options.points),
            "test_file": str(Path(test_file).expanduser().resolve()) if test_file else None}


def curve_file(options: SequenceOptions, run: PlannedRun) -> Path:
    return options.output / "curves" / f"{run.name}.json"


def write_curve(path: Path, run: PlannedRun, options: SequenceOptions, result: RunResult, rows: list[dict], wall_seconds: float | None) -> None:
    data = {"format": CURVE_FORMAT, "run": run.name, "method": run.method, "edit_lang": run.edit_lang,
            "settings": settings(options), "results_file": str(result.path.resolve()),
            "wall_seconds": None if wall_seconds is None else round(wall_seconds, 1), "rows": rows,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    staging.replace(path)  # whole or absent: its presence means the run is finished


def read_curve(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == CURVE_FORMAT and "rows" in data else None


def check_settings(options: SequenceOptions) -> None:
    """Curves made with another model, protocol, point list or test file may not be mixed into one study."""
    wanted = settings(options)
    conflicts = []
    for path in sorted((options.output / "curves").glob("*.json")):
        data = read_curve(path)
        if data is None:
            continue
        differ = [f"{k}={data['settings'].get(k)!r} (this run: {wanted[k]!r})" for k in wanted if data["settings"].get(k) != wanted[k]]
        if differ:
            conflicts.append(f"{path.name}: " + ", ".join(differ))
    if conflicts:
        raise ConfigurationError(f"{options.output} holds curves made with other settings:\n  " + "\n  ".join(conflicts)
                                 + "\nuse another --output folder, or delete those curve files")


# --- the study ---------------------------------------------------------------------------------------


@dataclass
class SequenceOutcome:
    skipped: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def run_study(options: SequenceOptions, runner: Runner | None = None, show_progress: bool = True, echo=print) -> SequenceOutcome:
    """Each (method, edit language) not yet in OUTPUT/curves/ is run (or, when its lm_eval run is already
    finished in OUTPUT/runs/, only scored); the summary is rebuilt from every curve file."""
    from bizsre_tasks.report.sequence_curves import write_summary

    if not options.points:
        raise ConfigurationError("--points: give at least one number of edits")
    sweep = sweep_options(options)
    validate_sweep(sweep)
    check_settings(options)
    outcome = SequenceOutcome()
    for run in plan_runs(sweep):
        path = curve_file(options, run)
        if read_curve(path) is not None:
            outcome.skipped.append(run.name)
            continue
        # one run at a time, with only its own method's hparams (the sweep refuses hparams of absent methods)
        own_hparams = {method: path for method, path in sweep.hparams.items() if method == run.method}
        one = replace(sweep, methods=[run.method], edit_langs=[run.edit_lang], hparams=own_hparams)
        started = time.monotonic()
        result = run_sweep(one, runner=runner, show_progress=show_progress, echo=echo)
        if result.failed:
            outcome.failed += [(r.name, reason) for r, reason in result.failed]
            continue
        finished = finished_result(run)
        rows = curve_rows(finished, run.folder / CHECKPOINT_FILE)
        # A run finished by an earlier invocation: lm-eval's own evaluation time.
        wall = time.monotonic() - started if result.finished else _evaluation_seconds(finished)
        write_curve(path, run, options, finished, rows, wall)
        outcome.finished.append(run.name)
        echo(f"curve {run.name} written to {path}")
    rows = [row for path in sorted((options.output / "curves").glob("*.json")) if (data := read_curve(path)) for row in data["rows"]]
    outcome.files = write_summary(options.output, rows, warn=echo)
    return outcome
