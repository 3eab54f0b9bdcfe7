"""The option convention every trainer follows.

A trainer is two modules: `<method>_options.py` (light, argparse only: the CLI builds every parser at
start-up) with `DEFAULTS` and `configure(parser)`, and `<method>_training.py` with `train(args)`, which
writes the checkpoint folder and returns it. Options default to None in the parser and are resolved
against the trainer's `DEFAULTS` (one place for a default); the options below are every trainer's.
The trainers are listed in `bizsre_tasks.training.TRAINERS`.
"""

from __future__ import annotations

import argparse
from typing import Any

TRAIN_FILE_HELP = "training file in the edit language (flat JSON or question<TAB>answer); default $BIZSRE_TRAIN_FILE"


def common_arguments(parser: argparse.ArgumentParser, defaults: dict[str, Any], seed_help: str | None = None) -> None:
    add = parser.add_argument
    add("--pretrained", default=None, help="base model folder or name (default: the embedded Gemma 3 270M)")
    add("--edit-lang", default="en", help="language of the edits the checkpoint serves (default en)")
    add("--train-size", type=int, default=None,
        help=f"training records used, the first N (default {defaults['train_size']})")
    add("--out", required=True, help="checkpoint folder to write (an unfinished run there is resumed)")
    add("--train-file", default=None, help=TRAIN_FILE_HELP)
    add("--seed", type=int, default=None,
        help=seed_help or f"seed; same seed and data give the same checkpoint (default {defaults['seed']})")
    add("--device", default="auto", help="cpu, cuda or auto (default auto)")
    add("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    add("--overwrite", action="store_true", help="discard a checkpoint or unfinished run from other settings in --out")
    add("--quiet", action="store_true", help="no progress bars or messages")
    add("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a killed run


def resolve(args: argparse.Namespace, defaults: dict[str, Any], name: str) -> Any:
    """An option's value: the one given, else the trainer's default."""
    value = getattr(args, name, None)
    return defaults[name] if value is None else value
