"""`bizsre train serac` options and their defaults (light: the CLI builds every parser at start-up).

The options every trainer shares are `training.options.common_arguments`; `configure` adds them and
SERAC's own.
"""

from __future__ import annotations

import argparse
from typing import Any

from bizsre_tasks.training.options import common_arguments

# Every option's default (None in the parser means "this one").
DEFAULTS: dict[str, Any] = {
    "train_size": 1000,
    "val_size": 200,
    "seed": 0,
    "steps": 600,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "temperature": 0.05,
    "proj_dim": 256,
    "hidden": 0,
    "encoder": "base",
    "encoder_layer": -1,
    "encode_batch_size": 32,
    "save_every": 100,
}


def configure(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, DEFAULTS, seed_help="seed; same seed and data give the same checkpoint (default 0)")
    add = parser.add_argument
    add("--aligned-file", action="append", default=None,
        help="file whose line/record i is record i in another language (cross-lingual positives); repeatable")
    add("--val-size", type=int, default=None, help="held-out records after the training ones, for the threshold (default 200)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_serac", description="Train SERAC's scope classifier for edited-hf method=serac.")
    configure(parser)
    return parser
