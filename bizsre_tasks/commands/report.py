"""`bizsre report DIR [...]`: the paper's tables and radar charts from lm-eval results files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_OUT_NAME = "report"


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="DIR", help="folders searched recursively for lm-eval results_*.json files (or the files themselves)")
    parser.add_argument("--out", help=f"output folder (default: DIR/{DEFAULT_OUT_NAME}, for the first DIR)")
    parser.add_argument(
        "--reference", nargs="?", const="", default=None, metavar="TSV",
        help="put the published numbers beside yours (default TSV: the paper's Tables 2 and 4, bundled)",
    )
    parser.add_argument(
        "--backbone", action="append", default=[], metavar="NAME",
        help="published backbone to compare with (repeatable; default: every backbone in the reference TSV)",
    )
    parser.add_argument("--cases", action="store_true", help="also list the cases that held in the edit language but not in the other (needs --log_samples files)")
    parser.add_argument("--skip-incomplete", action="store_true", help="report the finished runs even if some run folder has no results file")


def run(args: argparse.Namespace) -> int:
    from bizsre_tasks.report.build import ReportOptions, build_report
    from bizsre_tasks.report.reference import DEFAULT_REFERENCE

    inputs = [Path(p) for p in args.inputs]
    first = inputs[0]
    out = Path(args.out) if args.out else (first.parent if first.is_file() else first) / DEFAULT_OUT_NAME
    reference = None if args.reference is None else Path(args.reference or DEFAULT_REFERENCE)
    if args.backbone and reference is None:
        reference = DEFAULT_REFERENCE
    options = ReportOptions(inputs, out, reference, args.backbone, args.cases, args.skip_incomplete)
    report = build_report(options, warn=lambda message: print(message, file=sys.stderr))
    print(report.summary)
    print(f"full report (gap table{', published numbers' if reference else ''}{', cases' if args.cases else ''}): {out / 'report.md'}")
    print(f"wrote {len(report.files)} files to {out}:")
    for path in report.files:
        print(f"  {path}")
    return 0
