#!/usr/bin/env python
"""Write the paper sweep's measured compute time into BENCHMARKS.md (a kept section, "paper-sweep").

Reads the `runs.csv` that scripts/publish_results.py writes (one row per finished run: wall seconds summed over
the run's lm_eval processes and the cases that time covers) and lists every run with its seconds per case, the
total of the finished runs, and the (method, edit language) pairs of the sweep that have no row yet. Training time
for SERAC and MEND is not in runs.csv; pass it with `--training NAME=SECONDS` (repeatable).

    python scripts/sweep_time.py results/gemma3-270m/paper/runs.csv --expected none,ft,ike,kn,rome,memit,serac,mend
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from bizsre_tasks.benchmark.report import replace_section
from bizsre_tasks.languages import PAIR

SECTION = "paper-sweep"


def section(rows: list[dict], expected: list[str], training: dict[str, float], note: str) -> str:
    lines = ["## Paper sweep: measured compute time", "",
             "Written by `python scripts/sweep_time.py` from `results/gemma3-270m/paper/runs.csv`: each finished "
             "`protocol=paper` run on the full test file, its wall time summed over its lm_eval processes (a resumed "
             "run has several), one thread per run.", "",
             "| run | cases | processes | wall s | s per case |", "|---|---:|---:|---:|---:|"]
    total = 0.0
    for row in sorted(rows, key=lambda r: r["run"]):
        wall, timed = float(row["wall_s"]), int(row.get("wall_cases") or row["cases"])
        total += wall
        lines.append(f"| {row['run']} | {row['cases']} | {row.get('segments') or 1} | {wall:,.0f} | {wall / timed:.2f} |")
    for name, seconds in sorted(training.items()):
        total += seconds
        lines.append(f"| training: {name} | | 1 | {seconds:,.0f} | |")
    done = {row["run"] for row in rows}
    missing = [run for run in expected if run not in done]
    # "so far" only while runs of the sweep are missing; with all of them it is the whole sweep's time
    label = "Total so far" if missing else "Total, the whole sweep"
    lines += ["", f"{label}: {total:,.0f} s ({total / 3600:.2f} h) of compute for {len(rows)} finished run(s)"
              + (f" and {len(training)} training run(s)" if training else "") + "."]
    if missing:
        lines.append(f"Not finished yet ({len(missing)} of {len(expected)} runs): {', '.join(missing)}.")
    if note:
        lines += ["", note]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_csv", type=Path)
    parser.add_argument("--expected", default="none,ft,ike,kn,rome,memit,serac,mend", help="methods of the whole sweep")
    parser.add_argument("--edit-langs", default=",".join(PAIR))
    parser.add_argument("--training", action="append", default=[], help="NAME=SECONDS of a trainer run (repeatable)")
    parser.add_argument("--note", default="", help="a line under the table (what else ran meanwhile)")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    options = parser.parse_args(argv)
    if not options.runs_csv.is_file():
        print(f"error: {options.runs_csv} not found", file=sys.stderr)
        return 2
    with options.runs_csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    training = {}
    for item in options.training:
        name, _, seconds = item.partition("=")
        try:
            training[name] = float(seconds)
        except ValueError:
            parser.error(f"--training {item!r}: expected NAME=SECONDS")
    expected = [f"{m}_{lang}" for m in options.expected.split(",") for lang in options.edit_langs.split(",")]
    replace_section(options.out, SECTION, section(rows, expected, training, options.note))
    print(f"wrote section '{SECTION}' of {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
