"""The `bizsre` console command.

Each subcommand lives in its own module exposing `configure(parser)` and `run(args) -> int`; the
table below maps names to modules, and modules are imported only for the subcommand in use (heavy
imports such as torch stay inside `run`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bizsre_tasks.errors import BizsreError

SUBCOMMANDS = {
    "tasks-path": ("bizsre_tasks.commands.setup", "print the folder to pass to lm_eval --include_path"),
    "prepare": ("bizsre_tasks.commands.setup", "provision the default model and the lm_eval hook for edited-hf"),
    "model-path": ("bizsre_tasks.commands.setup", "print the converted default model folder (building it if needed)"),
    "validate": ("bizsre_tasks.commands.setup", "check a data file against the Bi-ZsRE schemas"),
    "make-tasks": ("bizsre_tasks.commands.make_tasks", "write task YAMLs for every language of a test file"),
    "sweep": ("bizsre_tasks.commands.sweep", "run lm_eval once per (method, edit language), resumable"),
    "report": ("bizsre_tasks.commands.report", "the paper's tables and radar charts from lm-eval results files"),
    "stats": ("bizsre_tasks.commands.stats", "precompute ROME/MEMIT second-moment statistics"),
    "train": ("bizsre_tasks.commands.train", "train a SERAC or MEND editor on the training split"),
    "scale-study": ("bizsre_tasks.commands.scale_study", "SERAC/MEND/IKE against training size (Figure 3), resumable"),
    "sequence-study": ("bizsre_tasks.commands.sequence_study", "scores against the number of sequential edits (1 ... 200), resumable"),
    "bench": ("bizsre_tasks.commands.bench", "speed and memory benchmark of the editing methods"),
    "run": ("bizsre_tasks.commands.run", "lm_eval with edited-hf registered and the Bi-ZsRE tasks included"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bizsre", description="Cross-lingual knowledge editing tasks for lm-evaluation-harness.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.configure(name, sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "run":
        # `bizsre run` forwards every option to lm_eval untouched.
        from bizsre_tasks.commands.run import run_lm_eval

        return run_lm_eval(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except BizsreError as exc:
        print(f"bizsre {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bizsre {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
