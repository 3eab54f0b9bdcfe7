"""`bizsre bench`: the speed and memory benchmark (same as scripts/bench.py)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

DEFAULT_METHODS = "none,ft,ike,kn,rome,memit"


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})")
    parser.add_argument("--cases", type=int, default=10, help="cases measured per method (one more is used as warm-up)")
    parser.add_argument("--test-file", help="default: the shared 743-case file when present, else the demo sample")
    parser.add_argument("--train-file", help="training file for IKE demonstrations / statistics")
    parser.add_argument("--pretrained", help="model (default: the embedded Gemma 3 270M)")
    parser.add_argument("--tasks", default="bizsre", help="tasks or group (default bizsre)")
    parser.add_argument("--edit-lang", default="en")
    parser.add_argument("--protocol", default="teacher_forced", choices=["generate", "teacher_forced"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--edit-batch", type=int, default=4,
                        help="cases whose edits a weight method may prepare together (edited-hf's edit_batch; default 4)")
    parser.add_argument("--naive", action="store_true", help="also run the textbook path and report optimised/naive ratios")
    parser.add_argument("--naive-cases", type=int, default=2, help="cases timed on the (slow) naive path (default 2)")
    parser.add_argument("--batching-cases", type=int, default=16,
                        help="cases of the batch-size-1 vs 8 comparison for weight-free methods (default 16)")
    parser.add_argument("--hparams", action="append", default=[], metavar="METHOD=YAML", help="hparams file per method")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="METHOD=DIR", help="trained editor per method")
    parser.add_argument("--json", default="benchmark_results.json", help="where to write the JSON results")
    parser.add_argument("--markdown", default=None, help="write the Markdown report here (e.g. BENCHMARKS.md)")


def default_test_file() -> str:
    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "bizsre" / "bizsre_test_en_zh.json"
    from bizsre_tasks.tasks.data_loading import SAMPLE_TEST_FILE

    return str(shared if shared.exists() else SAMPLE_TEST_FILE)


def run(args: argparse.Namespace) -> int:
    import time

    from bizsre_tasks.benchmark import report, runner
    from bizsre_tasks.benchmark.requests import build_requests
    from bizsre_tasks.commands.sweep import key_value_pairs, method_key
    from bizsre_tasks.editing.registry import read_hparams_file
    from bizsre_tasks.editing_wrapper import EditedHFLM

    hparams_files = key_value_pairs(args.hparams, "--hparams", "METHOD=YAML")
    checkpoints = key_value_pairs(args.checkpoint, "--checkpoint", "METHOD=DIR")
    test_file = args.test_file or default_test_file()
    methods = [method_key(m.strip()) for m in args.methods.split(",") if m.strip()]
    start = time.perf_counter()
    lm = EditedHFLM(pretrained=args.pretrained, method="none", edit_lang=args.edit_lang, protocol=args.protocol,
                    batch_size=args.batch_size, edit_batch=args.edit_batch, train_file=args.train_file, device="cpu" if not _cuda() else "cuda")
    model_load_s = time.perf_counter() - start
    metadata = {"test_file": test_file, "edit_lang": args.edit_lang, "protocol": args.protocol, "pretrained": lm.editor.context.model_name}
    tasks = [t.strip() for t in args.tasks.split(",")]
    # One warm-up case plus the measured ones; the batch-size comparison may need more cases.
    all_requests = build_requests(tasks, max(args.cases + 1, args.batching_cases + 1), metadata)
    measured_keys = _first_case_keys(all_requests, args.cases + 1)
    requests_by_task = {task: [r for r in requests if r.doc["case_key"] in measured_keys] for task, requests in all_requests.items()}
    batching_requests = [r for requests in all_requests.values() for r in requests
                         if r.doc["case_key"] in _first_case_keys(all_requests, args.batching_cases + 1)]
    prompts = runner.reference_prompts(requests_by_task)
    forward_s = runner.reference_forward_seconds(lm, prompts)
    total_cases = _count_cases(test_file)
    figures = []
    for method in methods:
        lm.editor.context.checkpoint = checkpoints.get(method)
        print(f"[bench] {method} ...", file=sys.stderr, flush=True)
        measured = runner.measure_method(
            lm, method, read_hparams_file(hparams_files.get(method)), requests_by_task, forward_s,
            naive_cases=args.naive_cases if args.naive else 0, batching_requests=batching_requests, total_cases=total_cases,
        )
        figures.append(runner.as_dict(measured))
        print(report.markdown_table(figures[-1:]), file=sys.stderr, flush=True)
    result = {
        "command": "bizsre bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        "environment": report.environment(),
        "model": lm.editor.context.model_name,
        "test_file": test_file,
        "cases": args.cases,
        "test_file_cases": total_cases,
        "batching_cases": args.batching_cases,
        "edit_batch": args.edit_batch,
        "naive_cases": args.naive_cases if args.naive else 0,
        "tasks": list(requests_by_task),
        "protocol": args.protocol,
        "model_load_s": model_load_s,
        "reference_batch": len(prompts),
        "forward_s": forward_s,
        "methods": figures,
    }
    print(report.write_outputs(result, Path(args.json), Path(args.markdown) if args.markdown else None))
    return 0


def _first_case_keys(requests_by_task: dict[str, list], count: int) -> set[str]:
    """Keys of the `count` lowest-numbered cases among the requests."""
    from bizsre_tasks.wrapper.case_planning import case_number

    keys = dict.fromkeys(r.doc["case_key"] for requests in requests_by_task.values() for r in requests)
    return set(sorted(keys, key=case_number)[:count])


def _count_cases(test_file: str) -> int:
    from bizsre_tasks.tasks.data_loading import load_test_set

    return len(load_test_set(test_file).cases)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
