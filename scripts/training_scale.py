#!/usr/bin/env python
"""The training-scale study, the paper's Figure 3 (same as `bizsre scale-study`).

Example:
    python scripts/training_scale.py --output runs/scale --sizes 100,500,1000,3000,5000 --methods serac,mend,ike \
        --edit-langs en,zh --train-file-en zsre_train_en_10000.json --train-file-zh train_qa_zh.tsv \
        --test-file bizsre_test_en_zh.json --limit 200
"""

import sys

from bizsre_tasks.commands.scale_study import main

if __name__ == "__main__":
    sys.exit(main())
