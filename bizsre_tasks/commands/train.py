"""`bizsre train serac|mend ...`: train the editors that need training, writing a checkpoint folder.

    bizsre train serac --edit-lang en --train-file zsre_train_en_10000.json \\
        --aligned-file train_qa_zh.tsv --train-size 1000 --out ckpt/serac-en
    bizsre train mend --edit-lang en --train-file zsre_train_en_10000.json --train-size 1000 --out ckpt/mend-en

Evaluate with `--model_args method=serac,checkpoint=ckpt/serac-en,...`. A killed training resumes
when the same command is run again. Each trainer declares its options in its light options module and
trains in its training module (`bizsre_tasks.training.TRAINERS`); only the chosen one is imported.
"""

from __future__ import annotations

import argparse
import importlib

from bizsre_tasks.training import TRAINERS


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    methods = parser.add_subparsers(dest="method", required=True, metavar="METHOD")
    for method, trainer in TRAINERS.items():
        sub = methods.add_parser(method, help=trainer.description, description=f"Train {trainer.description}.")
        importlib.import_module(trainer.options).configure(sub)
    parser.set_defaults(_name=name)


def run(args: argparse.Namespace) -> int:
    importlib.import_module(TRAINERS[args.method].training).train(args)
    return 0
