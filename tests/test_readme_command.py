"""The line users copy, run verbatim in a shell after the README's set-up (plus `--limit 2 --device cpu`):
no --include_path, no wrapper command; all seven tasks must report f1 and em."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

USER_LINE = "lm_eval --model edited-hf --model_args method=memit,edit_lang=zh --tasks 'bizsre_*'"
SEVEN_TASKS = [
    "bizsre_reliability", "bizsre_generality_en", "bizsre_generality_zh", "bizsre_locality_en",
    "bizsre_locality_zh", "bizsre_portability_en", "bizsre_portability_zh",
]


@pytest.mark.slow
def test_the_users_line_runs_verbatim(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert USER_LINE in readme, "the README must show the line this test runs"
    # The environment's own lm_eval (the venv's bin folder first), started by a shell as a user would.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    result = subprocess.run(f"{USER_LINE} --limit 2 --device cpu", shell=True, capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    table = result.stdout
    for task in SEVEN_TASKS:
        block = re.search(rf"\|{task}\s*\|.*?(?=\n\|[a-z]|\Z)", table, re.S)
        assert block, f"{task} missing from the results table:\n{table}"
        for metric in ("f1", "em"):
            assert re.search(rf"\|none\s*\|\s*0\|{metric}\s*\|", block.group(0)), f"{task} has no {metric}:\n{table}"
