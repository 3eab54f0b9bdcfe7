#!/usr/bin/env python
"""Compare the answers of two lm_eval `--log_samples` runs: every sample's `resps` and `filtered_resps`.

    python scripts/compare_answers.py BEFORE_DIR AFTER_DIR

Each directory is searched for `samples_<task>_*.jsonl` files (the newest per task). Samples are matched
by task and `doc_id`; prints per task and in total how many are identical and how many differ (or are
missing on one side), and exits 1 when any differ.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

SAMPLES = re.compile(r"samples_(?P<task>.+)_\d{4}-\d{2}-\d{2}T[\d\-.]+\.jsonl$")


def load_samples(folder: Path) -> dict[str, dict[int, tuple[str, str]]]:
    """task -> doc_id -> (resps, filtered_resps) as canonical JSON, from the newest file per task."""
    newest: dict[str, Path] = {}
    for path in sorted(folder.rglob("samples_*.jsonl")):
        match = SAMPLES.search(path.name)
        if match and (match["task"] not in newest or path.name > newest[match["task"]].name):
            newest[match["task"]] = path
    tasks = {}
    for task, path in newest.items():
        rows = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            sample = json.loads(line)
            rows[sample["doc_id"]] = tuple(json.dumps(sample[key], ensure_ascii=False, sort_keys=True)
                                           for key in ("resps", "filtered_resps"))
        tasks[task] = rows
    return tasks


def compare(before: Path, after: Path) -> tuple[int, int]:
    old, new = load_samples(before), load_samples(after)
    if not old or not new:
        raise SystemExit(f"no samples_*.jsonl under {before if not old else after}")
    same = differ = 0
    for task in sorted(set(old) | set(new)):
        a, b = old.get(task, {}), new.get(task, {})
        task_same = sum(1 for doc in a.keys() & b.keys() if a[doc] == b[doc])
        task_differ = len(a.keys() | b.keys()) - task_same
        print(f"  {task}: {task_same} identical, {task_differ} different")
        same, differ = same + task_same, differ + task_differ
    return same, differ


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    same, differ = compare(Path(argv[0]), Path(argv[1]))
    print(f"total: {same} identical, {differ} different")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
