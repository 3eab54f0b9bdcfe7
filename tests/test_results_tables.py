"""results/README.md's score tables against the published results JSONs they were copied from."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "results" / "README.md"
# README section heading -> (published folder, whether its table has a cases column).
TABLES = {
    "## protocol=paper, hparams=paper": (ROOT / "results" / "gemma3-270m" / "paper", False),
    "## protocol=generate, default hyperparameters, first 200 cases": (ROOT / "results" / "gemma3-270m" / "generate", True),
}


def _script():
    spec = importlib.util.spec_from_file_location("results_table", ROOT / "scripts" / "results_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _readme_rows(heading: str) -> dict[tuple[str, str], str]:
    """The data rows of the first table under `heading`, keyed by (edit language, method)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows, in_table = {}, False
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("| edit lang"):
            in_table = True
        elif in_table and line.startswith("|") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[(cells[0], cells[1])] = line.strip()
        elif in_table and not line.startswith("|"):
            break
    return rows


@pytest.mark.parametrize("heading", list(TABLES))
def test_readme_table_matches_published_runs(heading):
    folder, with_cases = TABLES[heading]
    published = _script().table_rows(folder, with_cases)
    in_readme = _readme_rows(heading)
    assert in_readme, f"no table found under {heading!r} in {README}"
    assert set(in_readme) == set(published), "README rows and published runs differ: " \
        f"only in README {sorted(set(in_readme) - set(published))}, only published {sorted(set(published) - set(in_readme))}"
    for key, row in published.items():
        assert in_readme[key] == row, f"{key}: README has\n{in_readme[key]}\nthe results JSON gives\n{row}"


def test_a_changed_score_changes_the_row(tmp_path):
    """The check above can fail: edit one published score and the printed row moves with it."""
    source = ROOT / "results" / "gemma3-270m" / "paper"
    folder = tmp_path / "paper"
    folder.mkdir()
    shutil.copy(source / "runs.csv", folder / "runs.csv")
    for run in source.iterdir():
        if run.is_dir() and not run.name.startswith("_") and run.name != "report":
            shutil.copytree(run, folder / run.name)
    script = _script()
    before = script.table_rows(folder)[("en", "ft")]
    results_json = next((folder / "ft_en").glob("results_*.json"))
    data = json.loads(results_json.read_text(encoding="utf-8"))
    data["results"]["bizsre_reliability"]["f1,none"] = 0.123
    results_json.write_text(json.dumps(data), encoding="utf-8")
    after = script.table_rows(folder)[("en", "ft")]
    assert before != after and "| 12.3 / 0.0 |" in after
