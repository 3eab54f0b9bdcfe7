#!/usr/bin/env python
"""Copy the finished runs of a `bizsre sweep` folder into the published results tree.

For every run folder `SWEEP/<method>_<edit_lang>/` whose newest lm-eval results JSON holds all 7 tasks,
the JSON (not the per-sample files, which are large) goes to `OUT/<method>_<edit_lang>/`, and one line per
run is written to `OUT/runs.csv`: method, edit language, protocol, cases, the run's lm-eval wall time and
the command line the sweep ran (the first line of the run's `lm_eval.log`). Unfinished runs are listed and
skipped, so the script can be run again as a sweep goes on.

Example:
    python scripts/publish_results.py /work/sweeps/paper results/gemma3-270m/paper
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

TASKS = ("bizsre_reliability", "bizsre_generality_en", "bizsre_generality_zh", "bizsre_locality_en",
         "bizsre_locality_zh", "bizsre_portability_en", "bizsre_portability_zh")


def newest_results(run: Path) -> Path | None:
    files = sorted(run.glob("*/results_*.json"), key=lambda p: p.name)
    return files[-1] if files else None


def finished(results_file: Path) -> dict | None:
    try:
        data = json.loads(results_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if all(task in data.get("results", {}) for task in TASKS) else None


def model_args(data: dict) -> dict[str, str]:
    raw = data.get("config", {}).get("model_args", "")
    if isinstance(raw, dict):
        return {k: str(v) for k, v in raw.items()}
    return dict(part.split("=", 1) for part in raw.split(",") if "=" in part)


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
        results_file = newest_results(run)
        data = finished(results_file) if results_file else None
        if data is None:
            missing.append(run.name)
            continue
        target = options.out / run.name
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("results_*.json"):
            old.unlink()
        shutil.copy2(results_file, target / results_file.name)
        args = model_args(data)
        log = run / "lm_eval.log"
        command = log.read_text(encoding="utf-8").splitlines()[0].lstrip("# ") if log.is_file() else ""
        rows.append({
            "run": run.name, "method": args.get("method", ""), "edit_lang": args.get("edit_lang", ""),
            "protocol": args.get("protocol", ""), "cases": data.get("n-samples", {}).get("bizsre_reliability", {}).get("effective", ""),
            "wall_s": round(float(data.get("total_evaluation_time_seconds", 0.0))), "command": command,
        })
    options.out.mkdir(parents=True, exist_ok=True)
    with (options.out / "runs.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["run", "method", "edit_lang", "protocol", "cases", "wall_s", "command"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"published {len(rows)} run(s) to {options.out}" + (f"; not finished: {', '.join(missing)}" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
