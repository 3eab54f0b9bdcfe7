#!/usr/bin/env python
"""Regenerate the key-statistics corpora shipped for the embedded default model.

ROME and MEMIT without a training file take their key statistics from texts the model writes itself in the
edit language (`bizsre_tasks/editing/kv/generated_corpus.py`). For the default model these texts ship in
`bizsre_tasks/sample_data/generated/`, so users generate nothing. Run this after changing the generation
settings, the openings table or the default model; it writes one `<lang>-<key>.json` per language.

Example:
    python scripts/ship_generated_corpus.py --langs en,zh
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bizsre_tasks.languages import PAIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--langs", default=",".join(PAIR), help="comma-separated languages (default: %(default)s)")
    options = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bizsre_tasks.default_model import resolve_pretrained
    from bizsre_tasks.editing.kv import generated_corpus, second_moments
    from bizsre_tasks.editing.layout import ModelLayout
    from bizsre_tasks.editing.registry import method_class, resolve_hparams

    path = resolve_pretrained(None, None)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)
    layout = ModelLayout.for_model(model)
    hparams = resolve_hparams(method_class("rome"), layout.model_type, {})
    generated_corpus.SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    for lang in [part.strip() for part in options.langs.split(",") if part.strip()]:
        with tempfile.TemporaryDirectory() as scratch:
            shipped_before = set(generated_corpus.SHIPPED_DIR.glob(f"{lang}-*.json"))
            for old in shipped_before:  # a shipped file would be read back instead of generating
                old.unlink()
            corpus = second_moments.generated_corpus(
                model, tokenizer, layout, lang, count=hparams["stats_generated_texts"],
                length=hparams["stats_generated_length"], cache_dir=scratch,
            )
            (written,) = Path(scratch, "stats", "generated").glob(f"{lang}-*.json")
            shutil.copy2(written, generated_corpus.SHIPPED_DIR / written.name)
            print(f"{lang}: {len(corpus.texts)} texts -> {generated_corpus.SHIPPED_DIR / written.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
