"""`bizsre tasks-path`, `prepare`, `model-path` and `validate`."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    if name in ("prepare", "model-path"):
        parser.add_argument("--cache-dir", help="where converted models live (default: $BIZSRE_CACHE_DIR or ~/.cache/bizsre)")
    if name == "prepare":
        parser.add_argument("--force", action="store_true", help="rebuild the converted default model even if it looks valid")
        parser.add_argument("--no-hook", action="store_true", help="do not install the lm_eval start-up hook (edited-hf model and bizsre tasks for lm-eval 0.4.13)")
    if name == "validate":
        parser.add_argument("file", help="a test file (Bi-ZsRE test schema) or training file (flat JSON or question<TAB>answer)")
        parser.add_argument("--train", action="store_true", help="validate as a training file")
    parser.set_defaults(_name=name)


def run(args: argparse.Namespace) -> int:
    if args._name == "tasks-path":
        from bizsre_tasks.tasks.task_generation import BUNDLED_DIR

        print(BUNDLED_DIR)
        return 0
    if args._name == "model-path":
        from bizsre_tasks.default_model import ensure_default_model

        print(ensure_default_model(args.cache_dir))
        return 0
    if args._name == "prepare":
        from bizsre_tasks.default_model import ensure_default_model
        from bizsre_tasks.wrapper import lm_eval_hook

        folder = ensure_default_model(args.cache_dir, force=args.force)
        print(f"default model ready: {folder}")
        if not args.no_hook:
            print(f"lm_eval start-up hook (edited-hf model, bizsre tasks): {lm_eval_hook.write_pth()}")
        return 0
    if args._name == "validate":
        from bizsre_tasks.tasks import data_loading

        if args.train:
            records = data_loading.load_train_records(args.file)
            print(f"{args.file}: {len(records)} training records, valid")
        else:
            test_set = data_loading.load_test_set(Path(args.file))
            print(f"{args.file}: {len(test_set.cases)} test cases, languages {', '.join(test_set.languages)}, valid")
        return 0
    raise AssertionError(args._name)
