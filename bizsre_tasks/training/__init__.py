"""Trainers of the editing methods that need training (SERAC, MEND), above the methods they train.

A trainer builds on its method's math (`editing/serac.py`, `editing/mend.py`) and writes the checkpoint
folder (`editing/checkpoints.py`) that the method loads without importing its trainer. Every trainer
follows one option convention (`training/options.py`): `<method>_options.py` declares the options,
`<method>_training.py` trains.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Trainer:
    description: str
    options: str  # module with DEFAULTS and configure(parser) (argparse only)
    training: str  # module with train(args) -> checkpoint folder
    # Whether a study that trains on one language's file passes the other language's (line-aligned) training
    # file as --aligned-file unless told otherwise: SERAC needs it for cross-lingual positives, MEND does not.
    aligned_by_default: bool = False


TRAINERS: dict[str, Trainer] = {
    "serac": Trainer("SERAC's scope classifier", "bizsre_tasks.training.serac_options", "bizsre_tasks.training.serac_training",
                     aligned_by_default=True),
    "mend": Trainer("MEND's hypernetwork", "bizsre_tasks.training.mend_options", "bizsre_tasks.training.mend_training",
                    aligned_by_default=False),
}
