"""MEND's training examples: per record, the edit, generality and locality rows, built with the
evaluation's own prompts (see `mend_training` for what each row is)."""

from __future__ import annotations

from dataclasses import dataclass, field

EDIT, GEN, LOC = 0, 1, 2


# --- training examples -----------------------------------------------------------------------------


@dataclass
class Example:
    rows: list[tuple[int, str, str]] = field(default_factory=list)  # (kind, prompt, target text)


def _prompt_and_target(question: str, answer: str, lang: str) -> tuple[str, str]:
    from bizsre_tasks.tasks.prompts import (
        answer_separator,
        build_prompt,
        prompt_template,
    )

    return build_prompt(question, lang), answer_separator(prompt_template(lang)) + answer


def build_examples(records, lang: str, aligned=None, aligned_lang: str | None = None) -> list[Example]:
    """One `Example` per record: edit row, generality rows, one locality row (see the module docstring)."""
    n = len(records)
    examples = []
    for i, record in enumerate(records):
        example = Example()
        example.rows.append((EDIT, *_prompt_and_target(record.src, record.alt, lang)))
        if record.rephrase:
            example.rows.append((GEN, *_prompt_and_target(record.rephrase, record.alt, lang)))
        if aligned is not None and aligned[i] is not None:  # None: that line of the aligned file has no answer
            example.rows.append((GEN, *_prompt_and_target(aligned[i].src, aligned[i].alt, aligned_lang)))
        if record.loc and record.loc_ans:
            example.rows.append((LOC, *_prompt_and_target(record.loc, record.loc_ans, lang)))
        elif n > 1:
            j = (i + n // 2) % n
            if j == i:
                j = (i + 1) % n
            if aligned is not None and i % 2 == 1 and aligned[j] is not None:
                example.rows.append((LOC, *_prompt_and_target(aligned[j].src, aligned[j].alt, aligned_lang)))
            else:
                example.rows.append((LOC, *_prompt_and_target(records[j].src, records[j].alt, lang)))
        examples.append(example)
    return examples


