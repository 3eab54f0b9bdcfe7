#!/usr/bin/env python
"""Print the results/README.md table rows for a folder of published runs, read from their lm-eval results JSONs.

A folder is what scripts/publish_results.py writes: one `<method>_<edit_lang>/results_*.json` per finished run
and a `runs.csv` with each run's wall time. The rows are the README's layout (F1 / EM in %, one decimal); paste
the ones for new runs into the README. tests/test_results_tables.py checks that every README row still matches.

    python scripts/results_table.py results/gemma3-270m/paper
    python scripts/results_table.py results/gemma3-270m/generate --cases
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from bizsre_tasks.experiments.sweep import EXPECTED_TASKS
from bizsre_tasks.report.results_reader import find_results_files, read_results

# The README tables' score columns: the sweep's seven tasks, in its order (results_reader's score keys).
COLUMNS = EXPECTED_TASKS


def run_scores(run_dir: Path) -> dict[str, str]:
    """Each column's "F1 / EM" cell for the one results JSON in `run_dir`."""
    found = find_results_files(run_dir)
    if len(found) != 1:
        raise SystemExit(f"{run_dir}: expected one lm-eval results JSON, found {len(found)}")
    run = read_results(found[0])
    missing = [key for key in COLUMNS if run is None or key not in run.scores]
    if missing:
        raise SystemExit(f"{found[0]}: no scores for {', '.join(missing)}")
    return {key: f"{run.scores[key].f1 * 100:.1f} / {run.scores[key].em * 100:.1f}" for key in COLUMNS}


def table_rows(folder: Path, with_cases: bool = False) -> dict[tuple[str, str], str]:
    """Every run in `folder` as its README row, keyed by (edit language, method)."""
    with open(folder / "runs.csv", newline="", encoding="utf-8") as handle:
        runs = {row["run"]: row for row in csv.DictReader(handle)}
    rows = {}
    for name, run in sorted(runs.items()):
        cells = run_scores(folder / name)
        fields = [run["edit_lang"], run["method"]] + [cells[key] for key in COLUMNS]
        if with_cases:
            fields.append(run["cases"])
        fields.append(f"{float(run['wall_s']):.0f}")
        rows[(run["edit_lang"], run["method"])] = "| " + " | ".join(fields) + " |"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a published folder, e.g. results/gemma3-270m/paper")
    parser.add_argument("--cases", action="store_true", help="add the cases column (the generate table has it)")
    args = parser.parse_args()
    for row in table_rows(args.folder, args.cases).values():
        print(row)


if __name__ == "__main__":
    main()
