"""`bizsre train mend` options and their defaults (light: the CLI builds every parser at start-up).

The options every trainer shares are `training.options.common_arguments`; `configure` adds them and
MEND's own (`configure_mend_arguments`).
"""

from __future__ import annotations

import argparse
from typing import Any

from bizsre_tasks.training.options import common_arguments

# Every option's default (None in the parser means "this one").
DEFAULTS: dict[str, Any] = {
    "layers": None,  # default: the last 3 layers
    "rank": 256,
    "n_blocks": 2,
    "share": True,
    "init_lr": 1e-4,
    "lr": 1e-4,
    "lr_lr": 1e-2,
    "c_edit": 1.0,
    "c_loc": 1.0,
    "batch_size": 4,
    "epochs": 1,
    "steps": None,
    "train_vocab": 1024,
    "precompute_batch": 4,
    "clip": 10.0,
    "save_every": 25,
    "aligned_file": None,
    "aligned_lang": None,
    "threads": 0,
    "device": "auto",
    "keep_state": False,
    "overwrite": False,
    "stop_after": None,
    "train_size": 1000,
    "edit_lang": "en",
    "seed": 1234,
    "pretrained": None,
    "train_file": None,
    "out": None,
    "quiet": False,
}


# --- command-line options --------------------------------------------------------------------------


def _layers(text: str) -> list[int]:
    try:
        return [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers expects comma-separated layer indices, got {text!r}") from None


class _TolerantGroup:
    """add_argument that skips flags the parser already has, so callers may define shared ones first."""

    def __init__(self, parser: argparse.ArgumentParser, group):
        self.parser, self.group = parser, group

    def add_argument(self, *flags, **kwargs):
        if any(flag in self.parser._option_string_actions for flag in flags):
            return None
        return self.group.add_argument(*flags, **kwargs)


def configure_mend_arguments(parser: argparse.ArgumentParser) -> None:
    """MEND-specific options (the common ones - pretrained, edit-lang, train-size, out, train-file,
    seed - are added by the caller, or by `build_parser`). Options the caller already defines (for
    example --steps or --epochs shared with SERAC) are left to the caller's definition."""
    group = _TolerantGroup(parser, parser.add_argument_group("MEND"))
    group.add_argument("--layers", type=_layers, default=None, help="edited layers (mlp_out), e.g. 15,16,17 (default: the last 3)")
    group.add_argument("--rank", type=int, default=DEFAULTS["rank"], help="rank of the hypernetwork's low-rank blocks (default 256)")
    group.add_argument("--n-blocks", type=int, default=DEFAULTS["n_blocks"], help="residual blocks in the hypernetwork (default 2)")
    group.add_argument("--per-layer", dest="share", action="store_false", default=True, help="one hypernetwork per layer instead of one shared by layers of the same shape")
    group.add_argument("--init-lr", type=float, default=DEFAULTS["init_lr"], help="initial per-layer edit rate (learned; default 1e-4)")
    group.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="Adam learning rate of the hypernetwork (default 1e-4)")
    group.add_argument("--lr-lr", type=float, default=DEFAULTS["lr_lr"], help="Adam learning rate of the log edit rates (default 1e-2)")
    group.add_argument("--c-edit", type=float, default=DEFAULTS["c_edit"], help="weight of the edit (reliability + generality) loss (default 1.0)")
    group.add_argument("--c-loc", type=float, default=DEFAULTS["c_loc"], help="weight of the locality KL (default 1.0)")
    group.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="independent edits per optimisation step (default 4)")
    group.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="passes over the training records (default 1)")
    group.add_argument("--steps", type=int, default=None, help="optimisation steps (overrides --epochs)")
    group.add_argument("--train-vocab", type=int, default=DEFAULTS["train_vocab"], help="candidate tokens per position in the training losses; 0 = full vocabulary (default 1024)")
    group.add_argument("--precompute-batch", type=int, default=DEFAULTS["precompute_batch"], help="records per forward pass of the precompute (default 4)")
    group.add_argument("--clip", type=float, default=DEFAULTS["clip"], help="gradient-norm clipping (default 10)")
    group.add_argument("--save-every", type=int, default=DEFAULTS["save_every"], help="save the resumable state every N steps (default 25)")
    group.add_argument("--aligned-file", default=None, help="file whose line i states record i's fact in another language (cross-lingual generality, e.g. train_qa_en.tsv for zh)")
    group.add_argument("--aligned-lang", default=None, help="language of --aligned-file (default: en, or zh when editing in en)")
    group.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    group.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    group.add_argument("--keep-state", action="store_true", help="keep the precompute and state folder after training")
    group.add_argument("--overwrite", action="store_true", help="discard an existing checkpoint or unfinished run in --out")
    group.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a killed run


def configure(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, DEFAULTS, seed_help="seed; same seed, data and options give the same checkpoint on CPU (default 1234)")
    configure_mend_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_mend", description="Train a MEND hypernetwork for edited-hf method=mend.")
    configure(parser)
    return parser


def _opt(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name, None)
    return DEFAULTS[name] if value is None else value


