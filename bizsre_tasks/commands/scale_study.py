"""`bizsre scale-study` (also scripts/training_scale.py): SERAC, MEND and IKE trained on 100 ... 5K
examples, each point evaluated through lm_eval; results per point, a summary and the Figure 3 plot.

    bizsre scale-study --output runs/scale --test-file bizsre_test_en_zh.json \\
        --train-file-en zsre_train_en_10000.json --train-file-zh train_qa_zh.tsv --limit 200
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from bizsre_tasks.commands.sweep import add_edit_langs_option, add_train_file_options, comma_list, key_value_pairs, train_files_from
from bizsre_tasks.tasks.task_docs import PROTOCOLS


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--output", required=True, help="study folder: points/, checkpoints/, runs/, summary.csv, summary.md, training_scale.png")
    add("--sizes", default="100,500,1000,3000,5000", help="training examples per point, comma-separated; 1K = 1000 (default 100,500,1K,3K,5K)")
    add("--methods", default="serac,mend,ike", type=comma_list, help="any of serac,mend,ike (default: all three)")
    add_edit_langs_option(parser)
    add_train_file_options(parser, "edits in")  # default $BIZSRE_TRAIN_FILE
    add("--aligned-file", action="append", default=[], metavar="METHOD_LANG=FILE",
        help="trainer --aligned-file for one method and language, e.g. mend_zh=train_qa_en.tsv (SERAC default: the other language's training file)")
    add("--train-args", action="append", default=[], metavar="METHOD=OPTIONS",
        help="more options for one trainer, e.g. 'mend=--epochs 2 --batch-size 8' (repeatable)")
    add("--hparams", action="append", default=[], metavar="METHOD=YAML", help="evaluation hyperparameters for one method (repeatable)")
    add("--test-file", help="Bi-ZsRE test file (default: $BIZSRE_TEST_FILE, else the bundled sample)")
    add("--limit", type=int, help="first N test cases per evaluation (default: all)")
    add("--pretrained", help="model folder or hub id (default: the bundled Gemma 3 270M)")
    add("--protocol", default="teacher_forced", choices=PROTOCOLS, help="answering protocol (default teacher_forced)")
    add("--batch-size", help="lm_eval --batch_size")
    add("--device", help="lm_eval --device and the trainers' --device (default: cuda when available, else cpu)")
    add("--no-answer-store", action="store_true", help="do not keep per-case answers (then a killed evaluation restarts from its first case)")
    add("--no-progress", action="store_true", help="no progress bar")


def options_from(args: argparse.Namespace):
    from bizsre_tasks.experiments.scale_study import ScaleOptions, parse_sizes

    train_args = {method: shlex.split(text) for method, text in key_value_pairs(args.train_args, "--train-args", "METHOD=OPTIONS").items()}
    return ScaleOptions(
        output=Path(args.output),
        sizes=parse_sizes(args.sizes),
        methods=args.methods,
        edit_langs=args.edit_langs,
        train_files=train_files_from(args),
        aligned_files=key_value_pairs(args.aligned_file, "--aligned-file", "METHOD_LANG=FILE"),
        train_args=train_args,
        hparams=key_value_pairs(args.hparams, "--hparams", "METHOD=YAML"),
        test_file=args.test_file,
        limit=args.limit,
        pretrained=args.pretrained,
        protocol=args.protocol,
        batch_size=args.batch_size,
        device=args.device,
        answer_store=not args.no_answer_store,
    )


def run(args: argparse.Namespace) -> int:
    from bizsre_tasks.experiments.scale_study import run_study

    options = options_from(args)
    outcome = run_study(options, show_progress=not args.no_progress)
    total = len(outcome.skipped) + len(outcome.finished) + len(outcome.failed)
    print(f"scale study: {len(outcome.finished)} point(s) finished, {len(outcome.skipped)} already done, {len(outcome.failed)} failed, of {total}")
    for path in outcome.files:
        print(f"  wrote {path}")
    if outcome.failed:
        for point, reason in outcome.failed:
            print(f"  failed: {point.name}: {reason}")
        print("re-run the same command to retry the failed points (finished ones are skipped)")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """scripts/training_scale.py: the same command outside the `bizsre` CLI."""
    from bizsre_tasks.errors import BizsreError

    parser = argparse.ArgumentParser(prog="training_scale", description=__doc__.splitlines()[0])
    configure("scale-study", parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except BizsreError as exc:
        print(f"training_scale: error: {exc}", file=sys.stderr)
        return 2
