#!/usr/bin/env python
"""Writes the generated parts of the docs: the hyperparameter tables of docs/methods.md, from each
method's `default_hparams` (bizsre_tasks/editing/hparam_docs.py), between `<!-- hparams: METHOD -->`
and `<!-- /hparams -->`.

    python scripts/make_docs.py          # rewrite the tables
    python scripts/make_docs.py --check  # exit 1 if the committed docs differ from what would be written
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from bizsre_tasks.editing.hparam_docs import hparam_table

METHODS_DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
BLOCK = re.compile(r"(<!-- hparams: (?P<method>[\w-]+) -->\n)(?P<body>.*?)(<!-- /hparams -->)", re.S)


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + hparam_table(m["method"]) + m.group(4), text)


def main(argv: list[str]) -> int:
    current = METHODS_DOC.read_text(encoding="utf-8")
    wanted = render(current)
    if "--check" in argv:
        if wanted != current:
            print(f"{METHODS_DOC} is stale: run python scripts/make_docs.py", file=sys.stderr)
            return 1
        return 0
    METHODS_DOC.write_text(wanted, encoding="utf-8")
    print(f"wrote {METHODS_DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
