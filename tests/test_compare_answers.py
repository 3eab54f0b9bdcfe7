"""scripts/compare_answers.py: the check that a restructuring left every logged answer byte-identical."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("compare_answers", ROOT / "scripts" / "compare_answers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(folder: Path, task: str, answers: list[str], stamp: str = "2026-12-01T03-22-45.322897") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"doc_id": i, "resps": [[a]], "filtered_resps": [a.strip()]} for i, a in enumerate(answers)]
    (folder / f"samples_{task}_{stamp}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_counts_identical_and_different_answers(tmp_path, capsys):
    compare = _script()
    _write(tmp_path / "a" / "run", "bizsre_reliability", ["Paris", " Rome", "x"])
    _write(tmp_path / "b" / "run", "bizsre_reliability", ["Paris", " Rome ", "x"])  # one byte differs
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "total: 2 identical, 1 different" in capsys.readouterr().out
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "a")]) == 0


def test_a_missing_sample_counts_as_different(tmp_path, capsys):
    compare = _script()
    _write(tmp_path / "a", "bizsre_generality_en", ["a", "b"])
    _write(tmp_path / "b", "bizsre_generality_en", ["a"])
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "1 identical, 1 different" in capsys.readouterr().out
