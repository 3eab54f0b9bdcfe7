"""Tables in the layout of the paper's Table 2, and the cross-lingual gap, as Markdown and CSV.

Table 2 layout: one row per edit language x method; columns reliability (in the edit language),
then generality / locality / portability in English, then the same in Chinese (further languages
follow in the same pattern). Cells are `F1 / EM` in percent with one decimal.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from bizsre_tasks.languages import PAIR
from bizsre_tasks.report.results_reader import SPLITS, RunResult, Score

# The paper's row order, with the unedited baseline first.
METHOD_ORDER = ("none", "ft", "serac", "ike", "mend", "kn", "rome", "memit", "alphaedit")
# Names as the methods' papers write them; any other method is shown upper-cased (ROME, MEMIT, ...).
METHOD_LABELS = {"none": "No edit", "alphaedit": "AlphaEdit"}
# Bi-ZsRE's pair first, as the paper orders its columns; other languages follow alphabetically.
LANGUAGE_ORDER = PAIR
MISSING = "–"


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method.upper())


def ordered(items, preferred) -> list:
    items = list(dict.fromkeys(items))
    return sorted(items, key=lambda item: (preferred.index(item) if item in preferred else len(preferred), item))


def languages_of(runs: list[RunResult]) -> list[str]:
    return ordered([lang for run in runs for lang in run.languages], LANGUAGE_ORDER)


def sort_runs(runs: list[RunResult]) -> list[RunResult]:
    langs = ordered([run.edit_lang for run in runs], LANGUAGE_ORDER)
    methods = ordered([run.method for run in runs], METHOD_ORDER)
    return sorted(runs, key=lambda run: (langs.index(run.edit_lang), methods.index(run.method)))


def metric_columns(languages: list[str]) -> list[str]:
    return ["reliability"] + [f"{split}_{lang}" for lang in languages for split in SPLITS]


def metric_label(metric: str) -> str:
    if metric == "reliability":
        return "Reliability"
    split, lang = metric.split("_", 1)
    return f"{lang} {split.capitalize()}"


def percent(value: float) -> str:
    # Rounding to 6 places first drops float noise (0.2046 * 100 = 20.459999...).
    return f"{round(100 * value, 6):.1f}"


def cell(score: Score | None) -> str:
    return MISSING if score is None else f"{percent(score.f1)} / {percent(score.em)}"


def results_table(runs: list[RunResult], languages: list[str]) -> Table:
    columns = metric_columns(languages)
    header = ["Edit", "Method", *map(metric_label, columns), "Cases"]
    rows = [
        [run.edit_lang, method_label(run.method), *(cell(run.scores.get(c)) for c in columns), str(run.cases or MISSING)]
        for run in sort_runs(runs)
    ]
    return Table(header, rows)


def forgetting_table(runs: list[RunResult]) -> Table:
    """edit_mode=sequential: reliability after the whole sequence beside the score right after each case's
    own edit; the difference is what later edits undid."""
    header = ["Edit", "Method", "Reliability after all edits", "Reliability right after its edit", "F1 lost (points)"]
    rows = []
    for run in sort_runs([r for r in runs if r.immediate is not None]):
        final = run.scores.get("reliability")
        lost = f"{round(100 * (run.immediate.f1 - final.f1), 6):+.1f}" if final is not None else MISSING
        rows.append([run.edit_lang, method_label(run.method), cell(final), cell(run.immediate), lost])
    return Table(header, rows)


def comparison_table(ours: list[RunResult], reference: list[RunResult], languages: list[str]) -> Table:
    """Each metric twice, ours then the published value; rows for every (edit language, method) in either."""
    columns = metric_columns(languages)
    header = ["Edit", "Method"] + [f"{metric_label(c)} {who}" for c in columns for who in ("ours", "paper")]
    mine = {(r.edit_lang, r.method): r for r in ours}
    published = {(r.edit_lang, r.method): r for r in reference}
    keys = {(r.edit_lang, r.method): r for r in [*reference, *ours]}
    rows = []
    for run in sort_runs(list(keys.values())):
        key = (run.edit_lang, run.method)
        row = [run.edit_lang, method_label(run.method)]
        for column in columns:
            for source in (mine, published):
                row.append(cell(source[key].scores.get(column)) if key in source else MISSING)
        rows.append(row)
    return Table(header, rows)


def generality_gaps(run: RunResult) -> dict[str, float]:
    """Direction "en→zh" -> generality F1 in the edit language minus in the other language."""
    same = run.scores.get(f"generality_{run.edit_lang}")
    if same is None:
        return {}
    return {
        f"{run.edit_lang}→{lang}": same.f1 - run.scores[f"generality_{lang}"].f1
        for lang in run.languages
        if lang != run.edit_lang and f"generality_{lang}" in run.scores
    }


def gap_directions(runs: list[RunResult]) -> list[str]:
    preferred = [f"{a}→{b}" for a in LANGUAGE_ORDER for b in LANGUAGE_ORDER]
    return ordered([d for run in runs for d in generality_gaps(run)], preferred)


def gap_table(runs: list[RunResult], reference: dict[str, list[RunResult]] | None = None, directions: list[str] | None = None) -> Table:
    """Rows: methods; columns: one per direction (ours), then per published backbone and direction.
    Values: points of generality F1, same language minus other language (positive = the edit
    transfers less to the other language)."""
    sources = [("ours", runs)] + [(backbone, refs) for backbone, refs in (reference or {}).items()]
    gaps = {}  # (source, method) -> {direction: gap}
    for name, source_runs in sources:
        for run in source_runs:
            gaps.setdefault((name, run.method), {}).update(generality_gaps(run))
    directions = directions or gap_directions(runs)
    methods = ordered([method for _, method in gaps], METHOD_ORDER)
    header = ["Method"] + [f"{d} {name}" if name != "ours" else d for name, _ in sources for d in directions]
    rows = []
    for method in methods:
        row = [method_label(method)]
        for name, _ in sources:
            values = gaps.get((name, method), {})
            row += [f"{round(100 * values[d], 6):+.1f}" if d in values else MISSING for d in directions]
        rows.append(row)
    return Table(header, rows)


def to_markdown(table: Table) -> str:
    lines = ["| " + " | ".join(table.header) + " |", "|" + "|".join("---" for _ in table.header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, tables: list[tuple[dict[str, str], Table]]) -> None:
    """Several tables of the same shape in one CSV, each row prefixed with its `labels` columns."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        header = None
        for labels, table in tables:
            if header is None:
                header = [*labels, *table.header]
                writer.writerow(header)
            assert header == [*labels, *table.header], "tables written to one CSV must share their columns"
            writer.writerows([*labels.values(), *row] for row in table.rows)
