"""`bizsre sweep --methods ... --edit-langs ... --output DIR`: one lm_eval run per (method, edit language)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bizsre_tasks.languages import PAIR
from bizsre_tasks.tasks.task_docs import PROTOCOLS
from bizsre_tasks.wrapper.edit_modes import CASE_ORDERS


def comma_list(text: str) -> list[str]:
    return [item.strip().lower() for item in text.split(",") if item.strip()]


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", required=True, type=comma_list, help="comma-separated editing methods, e.g. none,ft,ike,kn,rome,memit")
    add_edit_langs_option(parser)
    parser.add_argument("--output", required=True, help="sweep folder; run folders <method>_<edit_lang>/ go inside")
    parser.add_argument("--pretrained", help="model folder or hub id (default: the bundled Gemma 3 270M)")
    parser.add_argument("--limit", type=int, help="first N test cases per run (default: all)")
    parser.add_argument("--protocol", default="teacher_forced", choices=PROTOCOLS,
                        help="answering protocol (default: teacher_forced; paper: the paper code's evaluation)")
    parser.add_argument("--test-file", help="Bi-ZsRE test file (default: $BIZSRE_TEST_FILE, else the bundled sample)")
    add_train_file_options(parser, "runs editing in")
    parser.add_argument("--hparams", action="append", default=[], metavar="METHOD=YAML", help="hyperparameter file for one method (repeatable)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="METHOD_LANG=DIR",
                        help="trained checkpoint for one run, e.g. mend_en=DIR or serac_zh=DIR (repeatable)")
    parser.add_argument("--extra-model-args", help="more edited-hf model_args for every run, k=v,k=v (e.g. seed=1,verify_restore=true)")
    parser.add_argument("--batch-size", help="lm_eval --batch_size")
    parser.add_argument("--device", help="lm_eval --device (default: cuda when available, else cpu)")
    parser.add_argument("--no-answer-store", action="store_true",
                        help="do not keep per-case answers in OUTPUT/.answers/ (then a killed run restarts from its first case)")
    parser.add_argument("--case-order", default="forward", choices=CASE_ORDERS,
                        help="reverse: a second sweep on the same --output (e.g. on a second core or machine) that takes the "
                             "runs last to first and each run's cases last to first, sharing the answer stores, so the two "
                             "sweeps meet in the middle; its results go to OUTPUT/.reverse/, and the forward sweep, run to its "
                             "end, takes every answer it made (default: forward)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per run only)")


def add_edit_langs_option(parser: argparse.ArgumentParser) -> None:
    """`--edit-langs`, shared by the commands that run one job per edit language (default: the Bi-ZsRE pair)."""
    parser.add_argument("--edit-langs", default=",".join(PAIR), type=comma_list,
                        help="comma-separated edit languages (default: %(default)s)")


def add_train_file_options(parser: argparse.ArgumentParser, what: str) -> None:
    """Training files per edit language: `--train-file LANG=FILE` for any language, and `--train-file-en` /
    `--train-file-zh` as shorthands for the Bi-ZsRE pair."""
    parser.add_argument("--train-file", action="append", default=[], metavar="LANG=FILE",
                        help=f"training file for {what} language LANG (IKE demonstrations, SERAC/MEND); repeatable")
    for lang in PAIR:
        parser.add_argument(f"--train-file-{lang}", help=f"same as --train-file {lang}=FILE")


def train_files_from(args: argparse.Namespace) -> dict[str, str]:
    """Edit language -> training file, from --train-file LANG=FILE and the --train-file-en/-zh shorthands."""
    from bizsre_tasks.errors import ConfigurationError

    files = {}
    for item in getattr(args, "train_file", None) or []:
        lang, sep, path = item.partition("=")
        if not sep or not lang.strip() or not path.strip():
            raise ConfigurationError(f"--train-file expects LANG=FILE, got '{item}'")
        files[lang.strip()] = path.strip()
    for lang in PAIR:
        if getattr(args, f"train_file_{lang}", None):
            files[lang] = getattr(args, f"train_file_{lang}")
    return files


def key_value_pairs(items: list[str], option: str, form: str) -> dict[str, str]:
    from bizsre_tasks.errors import ConfigurationError

    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigurationError(f"{option} expects {form}, got '{item}'")
        pairs[method_key(key.strip())] = value.strip()
    return pairs


def method_key(name: str) -> str:
    """Built-in method names are case-insensitive; a plugin's `package.module:ClassName` keeps its case."""
    return name if ":" in name else name.lower()


def run(args: argparse.Namespace) -> int:
    from bizsre_tasks.experiments.sweep import SweepOptions, parse_key_values, run_sweep

    hparams = key_value_pairs(args.hparams, "--hparams", "METHOD=YAML")
    checkpoints = key_value_pairs(args.checkpoint, "--checkpoint", "METHOD_LANG=DIR")
    train_files = train_files_from(args)
    options = SweepOptions(
        output=Path(args.output),
        methods=args.methods,
        edit_langs=args.edit_langs,
        pretrained=args.pretrained,
        limit=args.limit,
        protocol=args.protocol,
        test_file=args.test_file,
        train_files=train_files,
        hparams=hparams,
        checkpoints=checkpoints,
        extra_model_args=parse_key_values(args.extra_model_args, "--extra-model-args"),
        batch_size=args.batch_size,
        device=args.device,
        answer_store=not args.no_answer_store,
        case_order=args.case_order,
    )
    outcome = run_sweep(options, show_progress=not args.no_progress)
    total = len(outcome.skipped) + len(outcome.finished) + len(outcome.failed)
    print(f"sweep: {len(outcome.finished)} run(s) finished, {len(outcome.skipped)} already done, {len(outcome.failed)} failed, of {total}")
    if outcome.failed:
        for run, reason in outcome.failed:
            print(f"  failed: {run.name} ({reason}); log: {run.folder / 'lm_eval.log'}")
        print("re-run the same command to retry the failed runs (finished ones are skipped)")
        return 1
    print(f"next: bizsre report {options.output}")
    return 0
