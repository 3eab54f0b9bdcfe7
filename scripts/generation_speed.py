"""Benchmark: `protocol=generate` with finished rows dropped (`drop_finished_rows=true`, the default) against
the harness's `model.generate` (`false`): seconds spent generating, decoding steps, and whether the answers
are the same. One lm_eval run per setting, in this process, over the first N cases. For a method whose edits
share a prompt prefix (IKE's demonstrations), `true` also generates each case's questions from that prefix's
key/value cache (`greedy_generation.cached_prefix`), so this compares both changes against the harness.

    python scripts/generation_speed.py --test-file $S/bizsre_test.json --train-file $S/zsre_train_en_10000.json \
        --method none --cases 20 --markdown benchmarks/generation_speed.md

Each run of `--markdown` appends one section to the file (a row per setting); the JSON keeps everything.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch


def run(args, drop: bool, stats: dict) -> dict[str, list[str]]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from bizsre_tasks.tasks.task_generation import BUNDLED_DIR

    model_args = {"method": args.method, "edit_lang": args.edit_lang, "protocol": "generate", "test_file": args.test_file,
                  "drop_finished_rows": drop}
    if args.train_file:
        model_args["train_file"] = args.train_file
    if args.pretrained:
        model_args["pretrained"] = args.pretrained
    started = time.perf_counter()
    results = lm_eval.simple_evaluate(model="edited-hf", model_args=model_args, tasks=["bizsre"], limit=args.cases,
                                      batch_size=args.batch_size, log_samples=True,
                                      task_manager=TaskManager(include_path=str(BUNDLED_DIR), metadata=model_args))
    stats[drop]["wall_s"] = time.perf_counter() - started
    return {task: [sample["resps"][0][0] for sample in samples] for task, samples in results["samples"].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-file", required=True)
    parser.add_argument("--train-file")
    parser.add_argument("--pretrained")
    parser.add_argument("--method", default="none")
    parser.add_argument("--edit-lang", default="en")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import bizsre_tasks.editing_wrapper as wrapper

    stats = {True: {"generate_s": 0.0, "calls": 0, "steps": 0}, False: {"generate_s": 0.0, "calls": 0, "steps": 0}}
    original = wrapper.EditedHFLM._model_generate

    def timed(self, context, max_length, stop, **kwargs):
        started = time.perf_counter()
        output = original(self, context, max_length, stop, **kwargs)
        entry = stats[self.drop_finished_rows]
        entry["generate_s"] += time.perf_counter() - started
        entry["calls"] += 1
        entry["steps"] += output.shape[1] - context.shape[1]
        return output

    wrapper.EditedHFLM._model_generate = timed
    try:
        answers = {drop: run(args, drop, stats) for drop in (True, False)}
    finally:  # leave the class as it was for whoever imported it
        wrapper.EditedHFLM._model_generate = original
    pairs = [(a, b) for task in answers[True] for a, b in zip(answers[True][task], answers[False][task])]
    same = sum(a == b for a, b in pairs)
    report = {
        "command": shlex.join(["python", "scripts/generation_speed.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": f"{platform.machine()}, {args.threads} thread(s), torch {torch.__version__}",
        "method": args.method, "edit_lang": args.edit_lang, "cases": args.cases, "batch_size": args.batch_size,
        "answers": len(pairs), "same_answers": same,
        "dropped": stats[True], "harness_generate": stats[False],
        "note": args.note,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        path = Path(args.markdown)
        text = path.read_text() if path.exists() else (
            "# Generation with finished rows dropped\n\nWritten by `python scripts/generation_speed.py` (one section per "
            "measurement). *generate s*: seconds inside the model's generation calls; *steps*: decoding steps summed "
            "over the calls (a batch runs until its last row ends; the same for both settings unless the method shares "
            "a prompt prefix, whose questions are then generated a case at a time from the prefix's cache).\n")
        d, h = stats[True], stats[False]
        text += (
            f"\n## {args.method}, edit {args.edit_lang}, first {args.cases} cases, batch {args.batch_size}\n\n"
            f"`{report['command']}`; {report['machine']}. {args.note}\n\n"
            "| setting | generate s | calls | steps | lm_eval wall s |\n|---|---:|---:|---:|---:|\n"
            f"| drop_finished_rows=true | {d['generate_s']:.1f} | {d['calls']} | {d['steps']} | {d['wall_s']:.1f} |\n"
            f"| drop_finished_rows=false (model.generate) | {h['generate_s']:.1f} | {h['calls']} | {h['steps']} | {h['wall_s']:.1f} |\n\n"
            f"Same answers: {same} of {len(pairs)}; generation time ratio {d['generate_s'] / h['generate_s']:.3f}.\n"
        )
        path.write_text(text)
    return 0 if same == len(pairs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
