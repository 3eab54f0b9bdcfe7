"""Failed edits of the current process, shared between the model (which records them) and the
tasks' scoring (which reports them as the `edit_failed` metric of bizsre_reliability).

Both run in the same process: the harness scores each rank's documents where they were answered.
"""

from __future__ import annotations

FAILED_EDITS: dict[str, str] = {}


def record_failure(case_key: str, reason: str) -> None:
    FAILED_EDITS[case_key] = reason


def edit_failed(case_key: str) -> bool:
    return case_key in FAILED_EDITS
