"""`bizsre train serac|mend ...`: train the editors that need training, writing a checkpoint folder.

    bizsre train serac --edit-lang en --train-file zsre_train_en_10000.json \\
        --aligned-file train_qa_zh.tsv --train-size 1000 --out ckpt/serac-en
    bizsre train mend --edit-lang en --train-file zsre_train_en_10000.json --train-size 1000 --out ckpt/mend-en

Evaluate with `--model_args method=serac,checkpoint=ckpt/serac-en,...`. A killed training resumes
when the same command is run again. Options are defined here (the CLI builds every parser at
start-up, so nothing heavy is imported); the training itself lives in `bizsre_tasks.training`.
MEND's options belong to its trainer, which parses them itself.
"""

from __future__ import annotations

import argparse

TRAIN_FILE_HELP = "training file in the edit language (flat JSON or question<TAB>answer); default $BIZSRE_TRAIN_FILE"


def _serac_arguments(parser: argparse.ArgumentParser) -> None:
    # Defaults of None fall back to serac_training.DEFAULTS (one place for them).
    add = parser.add_argument
    add("--pretrained", default=None, help="base model folder or name (default: the embedded Gemma 3 270M)")
    add("--edit-lang", default="en", help="language of the edits the checkpoint serves (default en)")
    add("--train-size", type=int, default=None, help="training records, the first N that have a positive (default 1000)")
    add("--out", required=True, help="checkpoint folder to write (an unfinished run there is resumed)")
    add("--train-file", default=None, help=TRAIN_FILE_HELP)
    add("--aligned-file", action="append", default=None,
        help="file whose line/record i is record i in another language (cross-lingual positives); repeatable")
    add("--val-size", type=int, default=None, help="held-out records after the training ones, for the threshold (default 200)")
    add("--seed", type=int, default=None, help="seed; same seed and data give the same checkpoint (default 0)")
    add("--steps", type=int, default=None, help="optimisation steps (default 600)")
    add("--batch-size", type=int, default=None, help="records per step (default 64)")
    add("--lr", type=float, default=None, help="AdamW learning rate (default 1e-3)")
    add("--weight-decay", type=float, default=None, help="AdamW weight decay (default 0.01)")
    add("--temperature", type=float, default=None, help="InfoNCE temperature (default 0.05)")
    add("--proj-dim", type=int, default=None, help="size of the head's output space (default 256)")
    add("--hidden", type=int, default=None, help="width of an optional residual MLP before the projection (default 0 = none)")
    add("--encoder", choices=("base",), default=None, help="frozen sentence encoder (base: the model's own hidden states)")
    add("--encoder-layer", type=int, default=None, help="with --encoder base: hidden states after this many layers (default -1 = a third of the way up: 6 of 18 for Gemma 3 270M)")
    add("--encode-batch-size", type=int, default=None, help="questions per encoder forward pass (default 32)")
    add("--save-every", type=int, default=None, help="save the resumable state every N steps (default 100)")
    add("--device", default="auto", help="cpu, cuda or auto (default auto)")
    add("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    add("--overwrite", action="store_true", help="discard a checkpoint or unfinished run from other settings in --out")
    add("--quiet", action="store_true", help="no progress bars or messages")
    add("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a killed run


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    methods = parser.add_subparsers(dest="method", required=True, metavar="METHOD")
    serac = methods.add_parser("serac", help="SERAC's scope classifier", description="Train SERAC's scope classifier.")
    _serac_arguments(serac)
    # MEND's trainer owns its options: everything after `mend` goes to its own parser.
    # (prefix_chars="+" keeps argparse from reading "--out" or "--help" there as options of its own.)
    mend = methods.add_parser("mend", help="MEND's hypernetwork (options: bizsre train mend --help)", add_help=False, prefix_chars="+")
    mend.add_argument("mend_args", nargs="*")
    parser.set_defaults(_name=name)


def run(args: argparse.Namespace) -> int:
    if args.method == "serac":
        from bizsre_tasks.training.serac_training import train

        train(args)
        return 0
    if args.method == "mend":
        from bizsre_tasks.training import mend_training

        mend_args = mend_training.build_parser().parse_args(args.mend_args)
        mend_training.train(mend_args)
        return 0
    raise AssertionError(args.method)
