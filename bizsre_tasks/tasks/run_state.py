"""State of the current process shared between the model and the tasks' scoring: failed edits (the
`edit_failed` metric of bizsre_reliability) and the protocols an `edited-hf` model answers.

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
