"""Published numbers (a TSV: backbone, edit_lang, method, metric, f1, em in percent) as RunResults."""

from __future__ import annotations

import csv
from pathlib import Path

from bizsre_tasks.report.results_reader import ResultsFileError, RunResult, Score

DEFAULT_REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "paper_results.tsv"
COLUMNS = ("backbone", "edit_lang", "method", "metric", "f1", "em")
# The paper's numbers come from its code's evaluation, which `protocol=paper` reproduces (reference/README.md).
REFERENCE_PROTOCOL = "paper"


def load_reference(path: Path | None = None) -> dict[str, list[RunResult]]:
    """Backbone -> one RunResult per (edit language, method), in file order."""
    path = Path(path or DEFAULT_REFERENCE)
    if not path.is_file():
        raise ResultsFileError(f"reference file {path} not found")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    if not rows or tuple(cell.strip() for cell in rows[0]) != COLUMNS:
        raise ResultsFileError(f"reference file {path}: the first line must be the header {' '.join(COLUMNS)} (tab-separated)")
    runs: dict[tuple[str, str, str], RunResult] = {}
    for number, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(COLUMNS):
            raise ResultsFileError(f"reference file {path}, line {number}: expected {len(COLUMNS)} tab-separated columns, got {len(row)}")
        backbone, edit_lang, method, metric, f1, em = (cell.strip() for cell in row)
        try:
            score = Score(float(f1) / 100, float(em) / 100)
        except ValueError:
            raise ResultsFileError(f"reference file {path}, line {number}: f1/em must be numbers, got {f1!r}, {em!r}") from None
        key = (backbone, edit_lang, method.lower())
        if key not in runs:
            runs[key] = RunResult(path, "", backbone, method.lower(), edit_lang, REFERENCE_PROTOCOL, None, {})
        runs[key].scores[metric] = score
    by_backbone: dict[str, list[RunResult]] = {}
    for run in runs.values():
        by_backbone.setdefault(run.backbone, []).append(run)
    return by_backbone
