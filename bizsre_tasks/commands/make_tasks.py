"""`bizsre make-tasks FILE --out DIR`."""

from __future__ import annotations

import argparse


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="test file in the Bi-ZsRE schema ({'en': {...}, 'xx': {...}} per case)")
    parser.add_argument("--out", required=True, help="folder for the generated YAMLs (pass it to --include_path)")


def run(args: argparse.Namespace) -> int:
    from bizsre_tasks.tasks.task_generation import make_tasks_for_file

    written = make_tasks_for_file(args.file, args.out)
    groups = sorted(p.stem.lstrip("_") for p in written if p.name.startswith("_"))
    print(f"wrote {len(written)} files to {args.out}; groups: {', '.join(groups)}")
    print(f"run with: lm_eval --include_path {args.out} --tasks {groups[0]} ...")
    return 0
