"""Groups the harness's requests by test case, so that each case is edited once.

lm-eval hands the model every request of every selected task in one list. A Bi-ZsRE document
carries its case key and its edit; locality documents appear twice (the task's `repeats: 2`), and
the first occurrence is answered by the unedited model, the second by the edited one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bizsre_tasks.editing.base import EditRequest
from bizsre_tasks.errors import ConfigurationError


@dataclass
class CaseWork:
    case_key: str
    edit: EditRequest
    pre_edit: list[int] = field(default_factory=list)  # request indices answered before the edit
    post_edit: list[int] = field(default_factory=list)  # request indices answered under the edit
    occurrence: dict[int, int] = field(default_factory=dict)  # request index -> how often it was seen before
    reliability: list[int] = field(default_factory=list)  # post-edit indices of reliability documents (f1_immediate)

    @property
    def indices(self) -> list[int]:
        return self.pre_edit + self.post_edit

    @property
    def case_number(self) -> int:
        return case_number(self.case_key)


def case_number(case_key: str) -> int:
    """The record number at the end of a case key ("<file>:<lang>:<n>"); 0 when there is none."""
    tail = case_key.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _task_name(request: Any) -> str:
    metadata = getattr(request, "metadata", None) or (None,)
    return str(metadata[0])


def plan_cases(requests: list[Any]) -> list[CaseWork]:
    """Cases in order of first appearance, each with the indices of its pre- and post-edit requests."""
    cases: dict[str, CaseWork] = {}
    seen: Counter = Counter()
    for index, request in enumerate(requests):
        doc = getattr(request, "doc", None)
        if not isinstance(doc, dict) or "bizsre_edit" not in doc:
            raise ConfigurationError(
                f"edited-hf answers Bi-ZsRE tasks only; task '{_task_name(request)}' has documents without an edit "
                "(run other tasks with --model hf)"
            )
        key = doc["case_key"]
        work = cases.get(key)
        if work is None:
            work = cases[key] = CaseWork(case_key=key, edit=EditRequest.from_doc(doc))
        occurrence_key = (_task_name(request), getattr(request, "doc_id", None), key)
        occurrence = seen[occurrence_key]
        seen[occurrence_key] += 1
        work.occurrence[index] = occurrence
        if doc.get("split") == "locality" and occurrence == 0:
            work.pre_edit.append(index)
        else:
            work.post_edit.append(index)
            if doc.get("split") == "reliability":
                work.reliability.append(index)
    return list(cases.values())


def cut(cases: list[CaseWork], size: int) -> list[list[CaseWork]]:
    """`cases` in consecutive chunks of `size` (the last may be shorter)."""
    return [cases[start : start + size] for start in range(0, len(cases), size)]
