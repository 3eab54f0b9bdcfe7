"""The paper's four findings as tests on fabricated runs: each can hold, fail, or stay undecided."""

from __future__ import annotations

from pathlib import Path

from bizsre_tasks.report import findings
from bizsre_tasks.report.results_reader import RunResult, Score

LANGS = ("en", "zh")


def run(method: str, edit_lang: str, reliability: float = 0.9, generality=None, portability=None, locality: float = 1.0) -> RunResult:
    """F1 values as fractions; generality/portability: {lang: f1} (default 0.3 everywhere)."""
    scores = {"reliability": Score(reliability, 0.0)}
    for lang in LANGS:
        scores[f"generality_{lang}"] = Score((generality or {}).get(lang, 0.3), 0.0)
        scores[f"locality_{lang}"] = Score(locality, 0.0)
        scores[f"portability_{lang}"] = Score((portability or {}).get(lang, 0.3), 0.0)
    return RunResult(Path("x.json"), "", "m", method, edit_lang, "paper", 10, scores)


def by_key(runs) -> dict[str, findings.Finding]:
    return {f.key: f for f in findings.evaluate(runs)}


def test_ike_best_cross_lingual_holds_or_not():
    rome = run("rome", "en", generality={"en": 0.9, "zh": 0.2})
    assert by_key([run("ike", "en", generality={"zh": 0.6}), rome])["a"].held is True
    lost = by_key([run("ike", "en", generality={"zh": 0.1}), rome])["a"]
    assert lost.held is False and "IKE 10.0 vs best other 20.0 (ROME)" in lost.evidence
    assert by_key([rome])["a"].held is None


def test_locate_then_edit_gap():
    assert by_key([run("memit", "zh", generality={"zh": 0.8, "en": 0.2})])["b"].held is True
    small = by_key([run("memit", "zh", generality={"zh": 0.8, "en": 0.2}), run("rome", "en", generality={"en": 0.5, "zh": 0.45})])["b"]
    assert small.held is False and "ROME en→zh: 50.0 vs 45.0" in small.evidence
    assert by_key([run("ft", "en")])["b"].held is None


def test_portability_low_where_edits_generalise():
    held = by_key([run("ike", "en", generality={"en": 1.0, "zh": 0.9}, portability={"en": 0.6, "zh": 0.5})])["c"]
    assert held.held is True and "smallest margin 40.0 (IKE, edit en, en)" in held.evidence
    close = by_key([run("ike", "en", generality={"en": 1.0, "zh": 0.9}, portability={"en": 0.95})])["c"]
    assert close.held is False
    # nothing generalised (all generality 0.3): nothing to compare portability with
    assert by_key([run("ft", "en")])["c"].held is None


def test_weaker_language_from_the_unedited_model():
    none = [run("none", lang, generality={"en": 0.4, "zh": 0.2}, portability={"en": 0.4, "zh": 0.2}) for lang in LANGS]
    edits = [run("rome", "en", reliability=0.9), run("rome", "zh", reliability=0.5)]
    held = by_key(none + edits)["d"]
    assert held.held is True and "unedited model: zh 20.0 vs en 40.0" in held.evidence
    assert "ROME: edit zh 50.0 vs edit en 90.0" in held.evidence
    flipped = [run("rome", "en", reliability=0.5), run("rome", "zh", reliability=0.9)]
    assert by_key(none + flipped)["d"].held is False
    assert by_key(edits)["d"].held is None  # no unedited runs: which language is weaker is not known
    tie = [run("none", lang) for lang in LANGS]
    assert by_key(tie + edits)["d"].held is None


def test_markdown_row_per_finding():
    text = findings.to_markdown(findings.evaluate([run("rome", "en")]))
    assert text.count("\n| (") == 4 and "not decided" in text
