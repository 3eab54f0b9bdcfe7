"""State of the current process shared between the model and the tasks' scoring: failed edits (the
`edit_failed` metric of bizsre_reliability), a sequential run's immediate reliability answers
(`f1_immediate`) and the protocols an `edited-hf` model answers.

Both run in the same process: the harness scores each rank's documents where they were answered.
"""

from __future__ import annotations

FAILED_EDITS: dict[str, str] = {}


def record_failure(case_key: str, reason: str) -> None:
    FAILED_EDITS[case_key] = reason


def edit_failed(case_key: str) -> bool:
    return case_key in FAILED_EDITS


# Protocols that an `edited-hf` model in this process answers (teacher_forced, paper): the tasks'
# scoring refuses them otherwise, since a plain model would have generated instead.
WRAPPER_PROTOCOLS: set[str] = set()


def record_wrapper_protocol(protocol: str) -> None:
    WRAPPER_PROTOCOLS.add(protocol)


def wrapper_answers(protocol: str) -> bool:
    return protocol in WRAPPER_PROTOCOLS


# edit_mode=sequential: each case's reliability answer taken right after its own edit (case key ->
# answer), scored as `f1_immediate` / `em_immediate`; without one (single and batch modes, the plain
# `hf` model) the immediate answer is the answer itself.
IMMEDIATE_ANSWERS: dict[str, str] = {}


def record_immediate(case_key: str, answer: str) -> None:
    IMMEDIATE_ANSWERS[case_key] = answer


def immediate_answer(case_key: str) -> str | None:
    return IMMEDIATE_ANSWERS.get(case_key)
