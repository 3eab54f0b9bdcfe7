#!/usr/bin/env python
"""Train a MEND hypernetwork for `edited-hf method=mend` (same as `bizsre train mend`).

Example:
    python scripts/train_mend.py --edit-lang en --train-file zsre_train_en_10000.json --train-size 1000 --out ckpt/mend-en
"""

import sys

from bizsre_tasks.training.mend_training import main

if __name__ == "__main__":
    sys.exit(main())
