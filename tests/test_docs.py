"""The README stays short, the docs' links resolve, and the generated hyperparameter tables are current."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\((?!https?://|#)([^)#\s]+)")


def _make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "scripts" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_at_most_250_lines():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


def test_relative_links_resolve():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_hparam_tables_match_default_hparams():
    make_docs = _make_docs()
    current = make_docs.METHODS_DOC.read_text(encoding="utf-8")
    assert make_docs.render(current) == current, "docs/methods.md is stale: run python scripts/make_docs.py"
    assert current.count("<!-- hparams:") >= 7


def test_generated_table_follows_a_changed_default(monkeypatch):
    from bizsre_tasks.editing import hparam_docs
    from bizsre_tasks.editing.rome import Rome

    monkeypatch.setattr(Rome, "default_hparams", {**Rome.default_hparams, "steps": 99})
    table = hparam_docs.hparam_table("rome")
    assert "| `steps` | 99 |" in table
    assert "most optimisation steps" in table  # the meaning is the comment beside the key
