"""`method=none`: the unedited model, the baseline every other method is compared with."""

from __future__ import annotations

from bizsre_tasks.editing.base import AppliedEdit, EditingMethod, EditRequest


class NoEdit(EditingMethod):
    name = "none"
    modifies_weights = False

    def apply(self, request: EditRequest) -> AppliedEdit:
        return AppliedEdit()
