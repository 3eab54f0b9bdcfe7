#!/usr/bin/env python
"""Cost of edit_mode=sequential and batch against single edits (issue 15); writes a JSON file and the
"Edit modes" section of BENCHMARKS.md. See bizsre_tasks/benchmark/edit_mode_cost.py for what is timed.

    python scripts/edit_mode_cost.py --test-file bizsre_test.json --train-file zsre_train_en_10000.json \\
        --sequential-methods ft,rome,memit,alphaedit,ike --sequential-cases 20 --batch-methods memit,alphaedit --batch-cases 32
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--test-file", required=True, help="Bi-ZsRE test file (the first cases are measured)")
    add("--train-file", help="training file of the edit language (IKE demonstrations)")
    add("--edit-lang", default="en")
    add("--pretrained", help="model (default: the bundled Gemma 3 270M)")
    add("--protocol", default="teacher_forced")
    add("--batch-size", type=int, default=16)
    add("--sequential-methods", default="ft,rome,memit,alphaedit,ike")
    add("--sequential-cases", type=int, default=20)
    add("--batch-methods", default="memit,alphaedit")
    add("--batch-cases", type=int, default=32)
    add("--hparams", action="append", default=[], metavar="METHOD=YAML", help="hyperparameters for one method (default: its defaults)")
    add("--note", default="", help="a remark on the conditions (e.g. other jobs sharing the machine), kept with the rows")
    add("--json", default="benchmarks/edit_modes.json")
    add("--markdown", default="BENCHMARKS.md", help="file whose 'edit-modes' section is (re)written; '' for none")
    args = parser.parse_args(argv)

    import torch

    from bizsre_tasks.benchmark import edit_mode_cost, report
    from bizsre_tasks.benchmark.requests import build_requests
    from bizsre_tasks.commands.sweep import key_value_pairs
    from bizsre_tasks.editing.registry import read_hparams_file
    from bizsre_tasks.editing_wrapper import EditedHFLM
    from bizsre_tasks.experiments.sweep import EXPECTED_TASKS

    lm = EditedHFLM(pretrained=args.pretrained, method="none", edit_lang=args.edit_lang, protocol=args.protocol,
                    batch_size=args.batch_size, train_file=args.train_file, device="cuda" if torch.cuda.is_available() else "cpu")
    metadata = {"test_file": args.test_file, "edit_lang": args.edit_lang, "protocol": args.protocol, "pretrained": lm.editor.context.model_name}
    tasks = [f"bizsre_{task}" for task in EXPECTED_TASKS]

    def requests_for(cases: int) -> list:
        return [r for requests in build_requests(tasks, cases, metadata).values() for r in requests]

    result = {"command": "python scripts/edit_mode_cost.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "model": lm.editor.context.model_name, "test_file": args.test_file, "protocol": args.protocol, "json": args.json,
              "sequential": [], "batch": []}
    hparams_files = key_value_pairs(args.hparams, "--hparams", "METHOD=YAML")

    def hparams(method: str) -> dict:
        return read_hparams_file(hparams_files.get(method), method) if method in hparams_files else {}

    requests = requests_for(args.sequential_cases)
    for method in filter(None, args.sequential_methods.split(",")):
        print(f"[edit-mode cost] sequential {method} ...", file=sys.stderr, flush=True)
        result["sequential"].append(edit_mode_cost.as_dict(edit_mode_cost.sequential_cost(lm, method, hparams(method), requests)))
        print(result["sequential"][-1], file=sys.stderr, flush=True)
    requests = requests_for(args.batch_cases)
    for method in filter(None, args.batch_methods.split(",")):
        print(f"[edit-mode cost] batch {method} ...", file=sys.stderr, flush=True)
        result["batch"].append(edit_mode_cost.as_dict(edit_mode_cost.batch_cost(lm, method, hparams(method), requests)))
        print(result["batch"][-1], file=sys.stderr, flush=True)
    # Rows of methods measured by an earlier invocation into the same JSON stay (the newest row per method wins).
    earlier = json.loads(Path(args.json).read_text(encoding="utf-8")) if Path(args.json).is_file() else {}
    for mode in ("sequential", "batch"):
        measured = {row["method"] for row in result[mode]}
        kept = [{**row, "command": row.get("command", earlier.get("command"))} for row in earlier.get(mode, []) if row["method"] not in measured]
        result[mode] = kept + [{**row, "command": result["command"], "note": args.note} for row in result[mode]]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    text = edit_mode_cost.markdown(result)
    if args.markdown:
        report.replace_section(Path(args.markdown), "edit-modes", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
