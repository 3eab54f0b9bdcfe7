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
- OUTPUT/sequence.csv, sequence.md and one figure per edit language are rebuilt at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.experiments.sweep import (
    EXPECTED_TASKS,
    Runner,
    SweepOptions,
    finished_result,
    plan_runs,
    run_sweep,
)
from bizsre_tasks.report.results_reader import RunResult, read_samples
from bizsre_tasks.tasks import answer_lines, run_state, task_docs
from bizsre_tasks.tasks.task_docs import PROTOCOLS
from bizsre_tasks.tasks.task_generation import BUNDLED_LANGUAGES
from bizsre_tasks.wrapper import sequence_checkpoints

DEFAULT_METHODS = ("ft", "rome", "memit", "alphaedit", "ike")
DEFAULT_POINTS = (1, 10, 50, 100, 200)
CHECKPOINT_FILE = "checkpoint_answers.jsonl"


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
    import json

    data = json.loads(result.path.read_text(encoding="utf-8"))
    values = data["results"].get(result.task_names.get("reliability", "bizsre_reliability"), {})
    if "f1_immediate,none" not in values:
        return None
    return 100 * values["f1_immediate,none"], 100 * values["em_immediate,none"]


def _row(result: RunResult, edits: int, key: str, f1: float, em: float, cases: int | None) -> dict:
    if key.startswith("reliability"):
        split, lang = key, result.edit_lang
    else:
        split, lang = key.split("_", 1)
    return {"method": result.method, "edit_lang": result.edit_lang, "edits": edits, "split": split, "lang": lang,
            "f1": round(f1, 2), "em": round(em, 2), "cases": cases}


# --- the study ---------------------------------------------------------------------------------------


@dataclass
class SequenceOutcome:
    skipped: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def run_study(options: SequenceOptions, runner: Runner | None = None, show_progress: bool = True, echo=print) -> SequenceOutcome:
    from bizsre_tasks.report.sequence_curves import write_summary

    if not options.points:
        raise ConfigurationError("--points: give at least one number of edits")
    sweep = sweep_options(options)
    started = time.monotonic()
    result = run_sweep(sweep, runner=runner, show_progress=show_progress, echo=echo)
    outcome = SequenceOutcome(skipped=[r.name for r in result.skipped], finished=[r.name for r in result.finished],
                              failed=[(r.name, reason) for r, reason in result.failed])
    outcome.seconds["study"] = round(time.monotonic() - started, 1)
    for run in plan_runs(sweep):
        finished = finished_result(run)
        if finished is not None:
            outcome.rows += curve_rows(finished, run.folder / CHECKPOINT_FILE)
    outcome.files = write_summary(options.output, outcome.rows)
    return outcome
