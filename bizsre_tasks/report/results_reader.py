"""Reads lm-eval's own output files: `results_<date>.json` and `samples_<task>_<date>.jsonl`.

Nothing here depends on how the run was started (`bizsre sweep`, `bizsre run` or plain `lm_eval`):
the method and edit language come from the results' `config.model_args` (`method=...,edit_lang=...`;
a model other than `edited-hf`, e.g. `--model hf`, is the unedited model, method `none`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bizsre_tasks.errors import BizsreError

# lm-eval names its files with `datetime.now().isoformat()` with ':' replaced by '-'. With
# `--output_path x.json` the results file is `x_<date>.json` instead of `results_<date>.json`.
DATE_ID = r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d(?:\.\d+)?"
RESULTS_NAME = re.compile(rf"^(?!samples_)(?P<stem>.+)_(?P<date>{DATE_ID})\.json$")
TASK_NAME = re.compile(r"^bizsre_(?:(?P<reliability>reliability)|(?P<split>generality|locality|portability)_(?P<lang>[A-Za-z0-9_-]+))$")
SPLITS = ("generality", "locality", "portability")
DEFAULT_BACKBONE = "gemma3-270m"
DEFAULT_EDIT_LANG = "en"
# A sweep run folder holds this log; one without results is an unfinished or failed run.
RUN_LOG_NAME = "lm_eval.log"


class ResultsFileError(BizsreError):
    """A results or samples file that is missing, truncated or not in lm-eval's format."""


@dataclass(frozen=True)
class Score:
    """One task's mean F1 and EM as fractions (0..1)."""

    f1: float
    em: float


@dataclass
class RunResult:
    path: Path
    date_id: str
    backbone: str
    method: str
    edit_lang: str
    protocol: str
    cases: int | None
    scores: dict[str, Score]  # "reliability", "generality_en", "locality_zh", ...
    model_args: dict[str, str] = field(default_factory=dict)
    limit: float | None = None
    task_names: dict[str, str] = field(default_factory=dict)  # metric key -> lm-eval task name
    # edit_mode=sequential: reliability right after each case's own edit (f1_immediate / em_immediate)
    immediate: Score | None = None

    @property
    def edit_mode(self) -> str:
        """`single`, `sequential`, or `batch of N` (the wrapper's edit_mode; the plain hf model: single)."""
        mode = self.model_args.get("edit_mode") or "single"
        if mode == "batch":
            return f"batch of {self.model_args.get('edits_per_batch', '?')}"
        return mode

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(key.split("_", 1)[1] for key in self.scores if key != "reliability"))

    def samples_file(self, metric_key: str) -> Path:
        task = self.task_names.get(metric_key, f"bizsre_{metric_key}")
        return self.path.parent / f"samples_{task}_{self.date_id}.jsonl"


def parse_model_args(value: Any) -> dict[str, str]:
    """lm-eval 0.4.13 stores model_args as a dict; older versions as the `k=v,k=v` string."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    args = {}
    for part in str(value or "").split(","):
        if "=" in part:
            key, val = part.split("=", 1)
            args[key.strip()] = val.strip()
    return args


def backbone_label(pretrained: str | None) -> str:
    if pretrained in (None, "", "None", "default", DEFAULT_BACKBONE):
        return DEFAULT_BACKBONE
    text = str(pretrained).rstrip("/")
    # A local folder is named by its last component; a hub id is kept whole (org/name).
    return Path(text).name if text.startswith(("/", ".", "~")) else text


def _metric(task_results: dict, name: str) -> float | None:
    for key in (f"{name},none", name):
        if isinstance(task_results.get(key), (int, float)):
            return float(task_results[key])
    for key, value in task_results.items():
        if key.startswith(f"{name},") and "_stderr" not in key and isinstance(value, (int, float)):
            return float(value)
    return None


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsFileError(f"results file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsFileError(f"results file {path} cannot be read ({exc})") from None
    if not text.strip():
        raise ResultsFileError(f"results file {path} is empty (an interrupted run?)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsFileError(
            f"results file {path} is truncated or not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "re-run that evaluation"
        ) from None


def _edit_lang(model_args: dict[str, str], data: dict) -> str:
    if model_args.get("edit_lang"):
        return model_args["edit_lang"]
    metadata = (data.get("configs") or {}).get("bizsre_reliability", {}).get("metadata") or {}
    return str(metadata.get("edit_lang") or DEFAULT_EDIT_LANG)


def read_results(path: Path, backbone: str | None = None) -> RunResult | None:
    """The Bi-ZsRE scores of one results file; None when it holds no Bi-ZsRE task."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ResultsFileError(f"results file {path} has no 'results' mapping; is it an lm-eval results file?")
    scores: dict[str, Score] = {}
    task_names: dict[str, str] = {}
    immediate = None
    for task, values in data["results"].items():
        match = TASK_NAME.match(task)
        if not match or not isinstance(values, dict):
            continue
        key = "reliability" if match["reliability"] else f"{match['split']}_{match['lang']}"
        f1, em = _metric(values, "f1"), _metric(values, "em")
        if f1 is None or em is None:
            raise ResultsFileError(f"results file {path}: task {task} has no f1/em values")
        scores[key] = Score(f1, em)
        task_names[key] = task
        if key == "reliability":
            f1_now, em_now = _metric(values, "f1_immediate"), _metric(values, "em_immediate")
            immediate = Score(f1_now, em_now) if f1_now is not None and em_now is not None else None
    if not scores:
        return None
    config = data.get("config") or {}
    model_args = parse_model_args(config.get("model_args"))
    edited = config.get("model") == "edited-hf"
    n_samples = (data.get("n-samples") or {}).get(task_names.get("reliability", ""), {})
    match = RESULTS_NAME.match(path.name)
    return RunResult(
        path=path,
        date_id=match["date"] if match else "",
        backbone=backbone or backbone_label(model_args.get("pretrained")),
        method=(model_args.get("method") or "none").lower() if edited else "none",
        edit_lang=_edit_lang(model_args, data),
        protocol=model_args.get("protocol") or "generate",
        cases=n_samples.get("effective"),
        scores=scores,
        model_args=model_args,
        limit=config.get("limit"),
        task_names=task_names,
        # outside sequential mode the immediate answer is the answer itself: nothing to add
        immediate=immediate if model_args.get("edit_mode") == "sequential" else None,
    )


def _in_hidden_folder(folder: Path, root: Path) -> bool:
    # Hidden folders (a sweep's `.incomplete/`) hold set-aside runs, not results.
    return any(part.startswith(".") for part in folder.relative_to(root).parts)


def find_results_files(root: Path) -> list[Path]:
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.exists():
        raise ResultsFileError(f"{root} not found")
    return sorted(p for p in root.rglob("*.json") if RESULTS_NAME.match(p.name) and not _in_hidden_folder(p.parent, root))


def unfinished_run_folders(root: Path) -> list[Path]:
    """Folders that should hold a results file but do not: samples without results, or a sweep
    run folder (with its lm_eval.log) without any results file."""
    root = Path(root)
    if root.is_file():
        return []
    missing = []
    for folder in sorted({p.parent for p in root.rglob("samples_*.jsonl")} | {p.parent for p in root.rglob(RUN_LOG_NAME)}):
        if not _in_hidden_folder(folder, root) and not any(RESULTS_NAME.match(p.name) for p in folder.rglob("*.json")):
            missing.append(folder)
    return missing


def load_runs(roots: list[Path], skip_incomplete: bool = False, warn=print) -> list[RunResult]:
    """Every Bi-ZsRE run under `roots`; when a run was repeated (same backbone, protocol, edit mode,
    method, edit language) the newest results file wins."""
    files: list[Path] = []
    for root in roots:
        for folder in unfinished_run_folders(root):
            message = f"{folder} has no lm-eval results file (the run failed or did not finish)"
            if not skip_incomplete:
                raise ResultsFileError(f"{message}; re-run it (`bizsre sweep` resumes) or pass --skip-incomplete")
            warn(f"warning: {message}; skipped")
        files.extend(find_results_files(root))
    if not files:
        raise ResultsFileError(f"no lm-eval results files (results_*.json) found under {', '.join(map(str, roots))}")
    latest: dict[tuple, RunResult] = {}
    for path in files:
        run = read_results(path)
        if run is None:
            warn(f"note: {path} holds no Bi-ZsRE task; ignored")
            continue
        key = (run.backbone, run.protocol, run.edit_mode, run.method, run.edit_lang)
        if key in latest:
            older, newer = sorted((latest[key], run), key=lambda r: r.date_id)
            warn(f"note: {newer.path} repeats the run in {older.path}; using the newer one")
            run = newer
        latest[key] = run
    return list(latest.values())


def read_samples(path: Path) -> list[dict]:
    """One lm-eval samples file (JSON lines)."""
    if not path.is_file():
        raise ResultsFileError(f"samples file {path} not found; run lm_eval with --log_samples to drill down into cases")
    samples = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                samples.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ResultsFileError(f"samples file {path}, line {number}: truncated or invalid JSON ({exc.msg})") from None
    return samples
