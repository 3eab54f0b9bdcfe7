"""The paper's four findings, checked against a set of runs with explicit criteria.

Wang et al. summarise their Table 2 in four findings. Each is turned here into a test on the F1 scores of
one group of single-mode runs (one backbone, one protocol), so a report says for each whether it held and
with which numbers:

(a) IKE has the best cross-lingual generality: for every edit language e and other language o, IKE's
    generality F1 in o is at least that of every other editing method edited in e.
(b) ROME and MEMIT generalise in the edit language but not across: for each of their runs and each other
    language, generality F1 in the edit language exceeds the other language's by at least
    `GENERALITY_GAP` (10 points).
(c) Portability is low everywhere: wherever an edit generalises (generality F1 ≥ `TOOK`, 50, in a
    language), portability F1 in that language stays at least `PORTABILITY_MARGIN` (10) points lower: the
    new fact is repeated for paraphrases but not reasoned with. (An absolute bar fails on the paper's own
    numbers: IKE reaches 50–70 portability F1 on three of its four backbones, far below its ~100 generality.)
(d) Edits in the model's weaker language are less reliable: the weaker language is the one in which the
    unedited model (method `none`) scores lower, averaged over its generality and portability F1; for every
    method run in both languages, reliability F1 with edits in the weaker language is below that with edits
    in the stronger one. Without `none` runs (the published tables have none) this one is not decided.

A finding whose runs are missing is reported as not decided (`held=None`), never as held.
"""

from __future__ import annotations

from dataclasses import dataclass

from bizsre_tasks.report.results_reader import RunResult
from bizsre_tasks.report.tables import Table, method_label, percent

GENERALITY_GAP = 0.10
TOOK = 0.50
PORTABILITY_MARGIN = 0.10
LOCATE_THEN_EDIT = ("rome", "memit")


@dataclass(frozen=True)
class Finding:
    key: str
    claim: str
    held: bool | None  # None: the runs it needs are missing
    evidence: str


def _f1(run: RunResult, metric: str) -> float | None:
    score = run.scores.get(metric)
    return None if score is None else score.f1


def _other_languages(run: RunResult) -> list[str]:
    return [lang for lang in run.languages if lang != run.edit_lang]


def ike_best_cross_lingual(runs: list[RunResult]) -> Finding:
    claim = "IKE has the best cross-lingual generality"
    parts, verdicts = [], []
    for ike in (r for r in runs if r.method == "ike"):
        rivals = [r for r in runs if r.edit_lang == ike.edit_lang and r.method not in ("ike", "none")]
        for lang in _other_languages(ike):
            ours = _f1(ike, f"generality_{lang}")
            scored = [(f1, r) for r in rivals if (f1 := _f1(r, f"generality_{lang}")) is not None]
            if ours is None or not scored:
                continue
            best, rival = max(scored, key=lambda item: item[0])
            verdicts.append(ours >= best)
            parts.append(f"{ike.edit_lang}→{lang}: IKE {percent(ours)} vs best other {percent(best)} ({method_label(rival.method)})")
    return _finding("a", claim, verdicts, parts, "needs an IKE run and another method's run in the same edit language")


def locate_then_edit_stay_in_language(runs: list[RunResult]) -> Finding:
    claim = f"ROME and MEMIT generalise in the edit language, not across (gap ≥ {percent(GENERALITY_GAP)} points)"
    parts, verdicts = [], []
    for run in (r for r in runs if r.method in LOCATE_THEN_EDIT):
        same = _f1(run, f"generality_{run.edit_lang}")
        for lang in _other_languages(run):
            cross = _f1(run, f"generality_{lang}")
            if same is None or cross is None:
                continue
            verdicts.append(same - cross >= GENERALITY_GAP)
            parts.append(f"{method_label(run.method)} {run.edit_lang}→{lang}: {percent(same)} vs {percent(cross)}")
    return _finding("b", claim, verdicts, parts, "needs a ROME or MEMIT run")


def portability_low(runs: list[RunResult]) -> Finding:
    claim = (f"portability is low everywhere: wherever an edit generalises (generality F1 ≥ {percent(TOOK)}), "
             f"portability F1 stays at least {percent(PORTABILITY_MARGIN)} points lower")
    margins = [(gen - port, port, run, lang) for run in runs if run.method != "none" for lang in run.languages
               if (gen := _f1(run, f"generality_{lang}")) is not None and gen >= TOOK
               and (port := _f1(run, f"portability_{lang}")) is not None]
    if not margins:
        return Finding("c", claim, None, f"not decided: no edit reached generality F1 {percent(TOOK)} in any language")
    margin, _, run, lang = min(margins, key=lambda cell: cell[0])
    top, top_run, top_lang = max(((port, run, lang) for _, port, run, lang in margins), key=lambda cell: cell[0])
    evidence = (f"{len(margins)} method × language cells with generality ≥ {percent(TOOK)}; smallest margin {percent(margin)} "
                f"({method_label(run.method)}, edit {run.edit_lang}, {lang}); highest portability among them {percent(top)} "
                f"({method_label(top_run.method)}, edit {top_run.edit_lang}, {top_lang})")
    return Finding("c", claim, margin >= PORTABILITY_MARGIN, evidence)


def weaker_language_less_reliable(runs: list[RunResult]) -> Finding:
    claim = "edits in the model's weaker language are less reliable"
    unedited: dict[str, list[float]] = {}
    for run in (r for r in runs if r.method == "none"):
        for lang in run.languages:
            unedited.setdefault(lang, []).extend(
                f1 for split in ("generality", "portability") if (f1 := _f1(run, f"{split}_{lang}")) is not None)
    strength = {lang: sum(values) / len(values) for lang, values in unedited.items() if values}
    if len(strength) < 2:
        return Finding("d", claim, None, "not decided: needs the unedited model's run (method none) in two languages")
    weaker, stronger = min(strength, key=strength.get), max(strength, key=strength.get)
    if strength[weaker] == strength[stronger]:
        return Finding("d", claim, None, f"not decided: the unedited model scores {percent(strength[weaker])} in every language")
    parts = [f"unedited model: {weaker} {percent(strength[weaker])} vs {stronger} {percent(strength[stronger])} (generality and portability F1)"]
    verdicts = []
    by_key = {(r.method, r.edit_lang): r for r in runs}
    for method in dict.fromkeys(r.method for r in runs if r.method != "none"):
        weak, strong = by_key.get((method, weaker)), by_key.get((method, stronger))
        if weak is None or strong is None or "reliability" not in weak.scores or "reliability" not in strong.scores:
            continue
        weak_f1, strong_f1 = weak.scores["reliability"].f1, strong.scores["reliability"].f1
        verdicts.append(weak_f1 < strong_f1)
        parts.append(f"{method_label(method)}: edit {weaker} {percent(weak_f1)} vs edit {stronger} {percent(strong_f1)}")
    return _finding("d", claim, verdicts, parts, "needs a method run with edits in both languages")


def _finding(key: str, claim: str, verdicts: list[bool], parts: list[str], missing: str) -> Finding:
    if not verdicts:
        return Finding(key, claim, None, f"not decided: {missing}")
    return Finding(key, claim, all(verdicts), "; ".join(parts))


def evaluate(runs: list[RunResult]) -> list[Finding]:
    """The four findings for one group of single-mode runs (one backbone, one protocol)."""
    return [ike_best_cross_lingual(runs), locate_then_edit_stay_in_language(runs), portability_low(runs),
            weaker_language_less_reliable(runs)]


def verdict(finding: Finding) -> str:
    return {True: "held", False: "did not hold", None: "not decided"}[finding.held]


def to_table(findings: list[Finding]) -> Table:
    """For the CSV: one row per finding, its key as is."""
    return Table(["Finding", "Claim", "Held", "Evidence"], [[f.key, f.claim, verdict(f), f.evidence] for f in findings])


def to_markdown(findings: list[Finding]) -> str:
    lines = ["| | Finding | Here | Numbers (F1) |", "|---|---|---|---|"]
    lines += [f"| ({f.key}) | {f.claim} | {verdict(f)} | {f.evidence} |" for f in findings]
    return "\n".join(lines)
