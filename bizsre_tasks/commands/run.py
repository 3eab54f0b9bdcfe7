"""`bizsre run ...`: lm_eval's own command line with the start-up hook installed in-process
(edited-hf registered, the bundled tasks indexed), for an environment where `bizsre prepare` did not
install it. Every option is lm_eval's.
"""

from __future__ import annotations

import argparse
import sys


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="arguments passed to lm_eval unchanged")


def run(args: argparse.Namespace) -> int:
    return run_lm_eval(args.lm_eval_args)


def run_lm_eval(argv: list[str]) -> int:
    from bizsre_tasks.wrapper import lm_eval_hook

    lm_eval_hook.install()
    from lm_eval.__main__ import cli_evaluate

    from bizsre_tasks.errors import BizsreError

    sys.argv = ["lm_eval", *argv]
    try:
        result = cli_evaluate()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except BizsreError as exc:  # bad data or arguments: one line, as every other bizsre command
        print(f"bizsre run: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0) if isinstance(result, int) else 0
