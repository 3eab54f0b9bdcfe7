#!/usr/bin/env python
"""Copy the finished runs of a `bizsre sweep` folder into the published results tree.

For every run folder `SWEEP/<method>_<edit_lang>/` whose newest lm-eval results JSON holds all 7 tasks,
the JSON (not the per-sample files, which are large) goes to `OUT/<method>_<edit_lang>/`, and one line per
run is written to `OUT/runs.csv`: method, edit language, protocol, cases, the run's lm-eval wall time and
the command line the sweep ran (the first line of the run's `lm_eval.log`). A run resumed from its answer store
took several `lm_eval` processes: the earlier ones' logs are in `SWEEP/.incomplete/<run>-<time>/`, and their
answering time (the progress bar's elapsed time) is added to `wall_s`; `segments` counts the processes and
`wall_cases` the cases whose time `wall_s` holds (fewer than `cases` when some answers came from a store without
its logs, which is then reported). The processes of a `--case-order reverse` sweep on the same folder (logs in
`SWEEP/.reverse/`) answered cases the last process took from the store: their time is added too. Unfinished runs are listed and
skipped, so the script can be run again as a sweep goes on. Rows already in `OUT/runs.csv` for runs not in this
sweep folder are kept (runs published from earlier machines), so a sweep can be published piece by piece.

Example:
    python scripts/publish_results.py /work/sweeps/paper results/gemma3-270m/paper
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sys
from pathlib import Path

from bizsre_tasks.report.results_reader import RUN_LOG_NAME, ResultsFileError, RunResult, find_results_files, read_results
from bizsre_tasks.experiments.sweep import EXPECTED_TASKS, INCOMPLETE_DIR, REVERSE_DIR

ELAPSED = re.compile(r"\[(?:(\d+):)?(\d+):(\d+)<")  # tqdm's "[H:MM:SS<" or "[MM:SS<"
CASES = re.compile(r"cases (\d+)/\d+")  # edited-hf's progress postfix


def finished(run: Path) -> RunResult | None:
    """The run's newest results file when it holds all seven tasks (the sweep's test, less its samples files)."""
    files = find_results_files(run)
    try:
        result = read_results(files[-1]) if files else None
    except ResultsFileError:
        return None
    return result if result and all(task in result.scores for task in EXPECTED_TASKS) else None


def read_log(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""


def segment(text: str) -> tuple[int, int, float]:
    """From an lm_eval process's log: (cases in the store when it started, cases when its log ends, seconds its bar ran)."""
    cases = [int(m) for m in CASES.findall(text)]
    times = ELAPSED.findall(text)
    hours, minutes, seconds = times[-1] if times else ("", "0", "0")
    return (cases[0] if cases else 0, cases[-1] if cases else 0, int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds))


def earlier_segments(run: Path) -> list[Path]:
    """Logs of the lm_eval processes a resumed run set aside before its last one, oldest first."""
    pattern = re.compile(rf"^{re.escape(run.name)}-\d{{8}}-\d{{6}}$")
    aside = run.parent / INCOMPLETE_DIR
    folders = sorted(p for p in aside.iterdir() if pattern.match(p.name)) if aside.is_dir() else []
    return [folder / RUN_LOG_NAME for folder in folders if (folder / RUN_LOG_NAME).is_file()]


def reverse_segments(sweep: Path, name: str) -> list[Path]:
    """Logs of a `--case-order reverse` sweep's processes for run `name`: any it set aside, and the latest."""
    run = sweep / REVERSE_DIR / name
    latest = run / RUN_LOG_NAME
    return earlier_segments(run) + ([latest] if latest.is_file() else [])


def resumed_from(started_at: int, segments: list[tuple[int, int, float]], helped: bool = False) -> list[tuple[int, int, float]]:
    """The earlier processes whose answers the last one resumed from: going back from the newest, each must have
    ended where the next began (a set-aside attempt whose answers were not kept, e.g. of other settings, is not).
    `helped`: a reverse sweep added cases between them, so a process may begin past where the previous one ended."""
    chain = []
    for start, end, seconds in reversed(segments):
        if started_at == 0:
            break
        if start < end and (end == started_at or (helped and end < started_at)):
            chain.append((start, end, seconds))
            started_at = start
    return chain[::-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a `bizsre sweep --output` folder")
    parser.add_argument("out", type=Path, help="where the results JSONs and runs.csv go")
    options = parser.parse_args(argv)
    if not options.sweep.is_dir():
        print(f"error: {options.sweep} is not a folder", file=sys.stderr)
        return 2
    rows, missing = [], []
    for run in sorted(p for p in options.sweep.iterdir() if p.is_dir() and not p.name.startswith(".")):
        result = finished(run)
        if result is None:
            missing.append(run.name)
            continue
        target = options.out / run.name
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("results_*.json"):
            old.unlink()
        shutil.copy2(result.path, target / result.path.name)
        wall = json.loads(result.path.read_text(encoding="utf-8")).get("total_evaluation_time_seconds", 0.0)
        log = read_log(run / RUN_LOG_NAME)
        command = log.splitlines()[0].lstrip("# ") if log else ""
        cases = result.cases if result.cases is not None else 0
        started_at, _, _ = segment(log)
        # A `--case-order reverse` sweep's processes answered cases the forward ones then took from the store.
        helpers = [segment(read_log(path)) for path in reverse_segments(options.sweep, run.name)]
        earlier = resumed_from(started_at, [segment(read_log(path)) for path in earlier_segments(run)], helped=bool(helpers))
        wall_cases = cases - (earlier[0][0] if earlier else started_at)  # the first timed process began there
        if earlier or started_at or helpers:
            print(f"{run.name}: {len(earlier) + len(helpers) + 1} lm_eval processes"
                  + (f" ({len(helpers)} from the other end)" if helpers else "") + f", wall time covers {wall_cases} of {cases} cases")
        rows.append({
            "run": run.name, "method": result.method, "edit_lang": result.edit_lang, "protocol": result.protocol,
            "cases": result.cases if result.cases is not None else "",
            "wall_s": round(float(wall) + sum(seconds for _, _, seconds in earlier + helpers)),
            "segments": len(earlier) + len(helpers) + 1, "wall_cases": wall_cases, "command": command,
        })
    options.out.mkdir(parents=True, exist_ok=True)
    listing = options.out / "runs.csv"
    fields = ["run", "method", "edit_lang", "protocol", "cases", "wall_s", "segments", "wall_cases", "command"]
    republished = {row["run"] for row in rows}
    kept = []
    if listing.is_file():
        with listing.open(newline="", encoding="utf-8") as handle:
            kept = [row for row in csv.DictReader(handle) if row.get("run") not in republished]
    with listing.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(sorted(kept + rows, key=lambda row: row["run"]))
    print(f"published {len(rows)} run(s) to {options.out}" + (f"; not finished: {', '.join(missing)}" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
