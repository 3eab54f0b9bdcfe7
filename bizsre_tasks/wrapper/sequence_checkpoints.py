"""`sequence_checkpoints` / `checkpoint_answers`: intermediate answers of an edit_mode=sequential run.

A run of N sequential edits answers every question once, after the last edit. To see how scores move
as edits pile up (after 1, 10, 50, ... edits) without a separate run per point, the wrapper can also
answer, right after the k-th edit, the post-edit questions of the first k cases, and write those
answers as JSON lines to `checkpoint_answers`:

    {"after_edits": k, "task": "bizsre_generality_zh", "doc_id": 3, "answer": "..."}

Edits 1..k of a run with N cases are the same edits, in the same order, as those of a run limited to
k cases, so these answers are the ones that shorter run would give (`bizsre sequence-study` scores
them with the tasks' own scoring). A checkpoint at or past the last case is the run's own answers and
is not written twice.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bizsre_tasks.errors import ConfigurationError

# lm_eval splits --model_args at commas, so the list uses another separator.
SEPARATORS = re.compile(r"[/;+\s]+")


def parse_checkpoints(value: Any) -> tuple[int, ...]:
    """"1/10/50" -> (1, 10, 50); also a list or tuple of integers. Empty -> ()."""
    if value is None or value == "":
        return ()
    parts = list(value) if isinstance(value, (list, tuple)) else [p for p in SEPARATORS.split(str(value).strip()) if p]
    numbers = []
    for part in parts:
        text = str(part).strip()
        if not text.isdigit() or int(text) < 1:
            raise ConfigurationError(f"model_arg sequence_checkpoints must list positive integers separated by '/', e.g. 1/10/50; got {value!r}")
        numbers.append(int(text))
    return tuple(sorted(set(numbers)))


def check_options(edit_mode: str, checkpoints: tuple[int, ...], answers_path: str | None) -> None:
    if (checkpoints or answers_path) and edit_mode != "sequential":
        raise ConfigurationError("model_args sequence_checkpoints and checkpoint_answers need edit_mode=sequential")
    if checkpoints and not answers_path:
        raise ConfigurationError("model_arg sequence_checkpoints needs checkpoint_answers=PATH, the JSON-lines file the answers go to")
    if answers_path and not checkpoints:
        raise ConfigurationError("model_arg checkpoint_answers needs sequence_checkpoints, e.g. sequence_checkpoints=1/10/50")


class CheckpointWriter:
    """Appends one line per answer; the file is started afresh by each sequence, so it never mixes runs."""

    def __init__(self, path: str | Path, checkpoints: tuple[int, ...]):
        self.path = Path(path).expanduser()
        self.checkpoints = set(checkpoints)

    def due(self, edits_done: int, total_cases: int) -> bool:
        return edits_done in self.checkpoints and edits_done < total_cases

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")

    def write(self, edits_done: int, requests: list, indices: list[int], answers: list[str]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            for index, answer in zip(indices, answers):
                request = requests[index]
                metadata = getattr(request, "metadata", None) or (None,)
                line = {"after_edits": edits_done, "task": metadata[0], "doc_id": getattr(request, "doc_id", None), "answer": answer}
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")


def read_checkpoint_answers(path: str | Path) -> dict[int, dict[tuple[str, int], str]]:
    """after_edits -> {(task, doc_id): answer}; a line that is not such a record names the file and line."""
    points: dict[int, dict[tuple[str, int], str]] = {}
    path = Path(path)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = (str(record["task"]), int(record["doc_id"]))
            points.setdefault(int(record["after_edits"]), {})[key] = str(record["answer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(f"{path}, line {number}: not a checkpoint answer record ({exc})") from exc
    return points
