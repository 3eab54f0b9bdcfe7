"""Per-case drill-down: edits that held in the edit language but did not carry over to another.

Definitions, per case of a run with edit language E and for each other language O:
- the edit *held* in E when its reliability answer scored F1 = 1 or EM = 1;
- it *did not carry over* to O when the generality answer in O (the rephrased question asked in O)
  scored F1 < 1 and EM = 0, i.e. it met neither criterion.
Answers and scores come from the lm-eval samples files (`--log_samples`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from bizsre_tasks.report.results_reader import RunResult, read_samples
from bizsre_tasks.report.tables import method_label, percent, sort_runs

DEFINITION = (
    "A case is listed when the edit **held in the edit language** (reliability answer F1 = 1 or EM = 1) "
    "but **did not carry over** to the other language (generality answer in that language F1 < 1 and EM = 0)."
)


@dataclass
class Answer:
    question: str
    gold: str
    answer: str
    f1: float
    em: float


@dataclass
class TransferFailure:
    case_id: int
    edit: Answer
    other: Answer


@dataclass
class RunCases:
    run: RunResult
    other_lang: str
    held: int  # cases whose edit held in the edit language
    total: int
    failures: list[TransferFailure]


def _first_text(value) -> str:
    while isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, str) else ""


def _answers_by_case(path: Path) -> dict[int, Answer]:
    answers = {}
    for sample in read_samples(path):
        doc = sample.get("doc") or {}
        case_id = doc.get("case_id", sample.get("doc_id"))
        answers[case_id] = Answer(
            question=str(doc.get("question") or doc.get("prompt") or ""),
            gold=str(doc.get("target") if doc.get("target") is not None else sample.get("target", "")),
            answer=_first_text(sample.get("filtered_resps") or sample.get("resps")),
            f1=float(sample.get("f1", 0.0)),
            em=float(sample.get("em", 0.0)),
        )
    return answers


def held(answer: Answer) -> bool:
    return answer.f1 >= 1.0 or answer.em >= 1.0


def transfer_cases(run: RunResult) -> list[RunCases]:
    edit_answers = _answers_by_case(run.samples_file("reliability"))
    results = []
    for lang in run.languages:
        if lang == run.edit_lang or f"generality_{lang}" not in run.scores:
            continue
        other_answers = _answers_by_case(run.samples_file(f"generality_{lang}"))
        held_ids = [case for case, answer in edit_answers.items() if held(answer) and case in other_answers]
        failures = [TransferFailure(case, edit_answers[case], other_answers[case]) for case in held_ids if not held(other_answers[case])]
        results.append(RunCases(run, lang, len(held_ids), len(edit_answers), failures))
    return results


def _md(text: str) -> str:
    text = " ".join(text.split()) or "(empty)"
    return text.replace("|", "\\|")


def cases_markdown(group_title: str, runs: list[RunResult]) -> tuple[str, list[RunCases]]:
    lines = [f"## {group_title}", "", DEFINITION, ""]
    collected = []
    for run in sort_runs(runs):
        for item in transfer_cases(run):
            collected.append(item)
            e, o = run.edit_lang, item.other_lang
            lines += [
                f"### {method_label(run.method)}, edit in {e} → {o}",
                "",
                f"Held in {e}: {item.held} of {item.total} cases; of these, {len(item.failures)} did not carry over to {o}.",
                "",
            ]
            if item.failures:
                lines.append(f"| Case | {e} question | {e} gold | {e} answer | {o} question | {o} gold | {o} answer | {o} F1 / EM |")
                lines.append("|---|---|---|---|---|---|---|---|")
                for f in item.failures:
                    lines.append(
                        f"| {f.case_id} | {_md(f.edit.question)} | {_md(f.edit.gold)} | {_md(f.edit.answer)} | "
                        f"{_md(f.other.question)} | {_md(f.other.gold)} | {_md(f.other.answer)} | {percent(f.other.f1)} / {percent(f.other.em)} |"
                    )
                lines.append("")
    return "\n".join(lines) + "\n", collected


def write_cases_csv(path: Path, groups: list[tuple[dict[str, str], list[RunCases]]]) -> None:
    fields = ["method", "edit_lang", "other_lang", "case_id", "edit_question", "edit_gold", "edit_answer",
              "other_question", "other_gold", "other_answer", "other_f1", "other_em"]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["backbone", "protocol", "edit_mode", *fields])
        for labels, items in groups:
            for item in items:
                for f in item.failures:
                    writer.writerow([
                        labels["backbone"], labels["protocol"], labels.get("edit_mode", "single"), item.run.method, item.run.edit_lang, item.other_lang, f.case_id,
                        f.edit.question, f.edit.gold, f.edit.answer, f.other.question, f.other.gold, f.other.answer, f.other.f1, f.other.em,
                    ])
