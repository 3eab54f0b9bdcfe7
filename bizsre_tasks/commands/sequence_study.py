"""`bizsre sequence-study`: scores against the number of sequential edits (1, 10, 50, ... edits in force),
one lm_eval run per (method, edit language); a CSV, a Markdown table and one figure per edit language.

    bizsre sequence-study --output runs/sequence --test-file bizsre_test.json \\
        --train-file-en zsre_train_en_10000.json --train-file-zh train_qa_zh.tsv --points 1,10,50,100,200
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bizsre_tasks.commands.sweep import add_edit_langs_option, add_train_file_options, comma_list, key_value_pairs, train_files_from
from bizsre_tasks.tasks.task_docs import PROTOCOLS


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--output", required=True, help="study folder: runs/, sequence.csv, sequence.md, sequence_<lang>.png")
    add("--points", default="1,10,50,100,200", help="numbers of sequential edits, comma-separated; the run covers the first max(N) cases (default 1,10,50,100,200)")
    add("--methods", default="ft,rome,memit,alphaedit,ike", type=comma_list, help="editing methods (default ft,rome,memit,alphaedit,ike)")
    add_edit_langs_option(parser)
    add_train_file_options(parser, "edits in")  # IKE's demonstration pool (default $BIZSRE_TRAIN_FILE)
    add("--hparams", action="append", default=[], metavar="METHOD=YAML", help="hyperparameters for one method (repeatable)")
    add("--test-file", help="Bi-ZsRE test file (default: $BIZSRE_TEST_FILE, else the bundled sample)")
    add("--pretrained", help="model folder or hub id (default: the bundled Gemma 3 270M)")
    add("--protocol", default="teacher_forced", choices=PROTOCOLS, help="answering protocol (default teacher_forced)")
    add("--batch-size", help="lm_eval --batch_size")
    add("--device", help="lm_eval --device (default: cuda when available, else cpu)")
    add("--no-progress", action="store_true", help="no progress bar")


def options_from(args: argparse.Namespace):
    from bizsre_tasks.experiments.sequence_study import SequenceOptions, parse_points

    return SequenceOptions(
        output=Path(args.output), points=parse_points(args.points), methods=args.methods, edit_langs=args.edit_langs,
        test_file=args.test_file, train_files=train_files_from(args),
        hparams=key_value_pairs(args.hparams, "--hparams", "METHOD=YAML"), pretrained=args.pretrained,
        protocol=args.protocol, batch_size=args.batch_size, device=args.device,
    )


def run(args: argparse.Namespace) -> int:
    from bizsre_tasks.experiments.sequence_study import run_study

    outcome = run_study(options_from(args), show_progress=not args.no_progress)
    total = len(outcome.skipped) + len(outcome.finished) + len(outcome.failed)
    print(f"sequence study: {len(outcome.finished)} run(s) finished, {len(outcome.skipped)} already done, {len(outcome.failed)} failed, of {total}")
    for path in outcome.files:
        print(f"  wrote {path}")
    for name, reason in outcome.failed:
        print(f"  failed: {name}: {reason}")
    if outcome.failed:
        print("re-run the same command to retry the failed runs (finished ones are skipped)")
        return 1
    return 0
