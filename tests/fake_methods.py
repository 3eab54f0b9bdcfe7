"""Editing methods used only by the tests: they count calls and change the model in known ways."""

from __future__ import annotations

import torch

from bizsre_tasks.editing.base import (
    AppliedEdit,
    EditFailedError,
    EditingMethod,
    WeightBackup,
    WeightEdit,
)


class CountingWeightEdit(EditingMethod):
    """Adds noise to one MLP output weight; restores from a backup."""

    name = "counting"
    modifies_weights = True
    default_hparams = {"layer": 0, "scale": 1.0, "fail_on_cases": []}
    applied: list[str] = []
    events: list[tuple] = []  # ("precompute", [case keys]) and ("apply", case key), in call order
    on_apply = None  # a test's hook, called with each request before it is applied

    def validate_hparams(self) -> None:
        self.layout.check_layer(self.hparams["layer"], "layer")

    def precompute(self, requests):
        type(self).events.append(("precompute", [request.case_key for request in requests]))

    def apply(self, request):
        if type(self).on_apply is not None:
            type(self).on_apply(request)
        type(self).applied.append(request.case_key)
        type(self).events.append(("apply", request.case_key))
        weight = self.layout.weight_out_in("mlp_out", self.hparams["layer"])
        backup = WeightBackup({"w": weight})
        with torch.no_grad():
            weight.add_(torch.randn_like(weight) * self.hparams["scale"])
        if int(request.case_key.rsplit(":", 1)[-1]) in self.hparams["fail_on_cases"]:
            with torch.no_grad():
                weight.fill_(float("nan"))
            backup.restore()
            raise EditFailedError("injected failure")
        return WeightEdit(backup)


class LeakyWeightEdit(CountingWeightEdit):
    """Forgets to restore: the wrapper's verification must catch it."""

    name = "leaky"

    def apply(self, request):
        super().apply(request)
        return AppliedEdit()


class PromptPrefixEdit(EditingMethod):
    """A weight-free method that prepends the new fact to every prompt."""

    name = "prefix"
    modifies_weights = False
    default_hparams = {}
    applied: list[str] = []

    def apply(self, request):
        type(self).applied.append(request.case_key)
        fact = f"{request.prompt}{request.target_text}\n"

        class _Prefixed(AppliedEdit):
            def rewrite_prompt(self, prompt: str) -> str:
                return fact + prompt

        return _Prefixed()


class SlowLoggedEdit(CountingWeightEdit):
    """Sleeps per edit and logs each edited case to a file: lets a test kill a run mid-way."""

    name = "slow-logged"
    default_hparams = {**CountingWeightEdit.default_hparams, "log_file": "", "sleep": 0.3}

    def apply(self, request):
        import time

        time.sleep(self.hparams["sleep"])
        with open(self.hparams["log_file"], "a") as handle:
            handle.write(request.case_key + "\n")
        return super().apply(request)


class StackingWeightEdit(CountingWeightEdit):
    """Keeps a record of the edits in force (`in_force`, case keys in order) and of `apply_many` calls and
    restores (`log`), for the edit-mode tests; `crash_on_case` raises a non-edit error (a killed run)."""

    name = "stacking"
    default_hparams = {**CountingWeightEdit.default_hparams, "crash_on_case": -1}
    in_force: list[str] = []
    log: list[tuple] = []

    def apply(self, request):
        if int(request.case_key.rsplit(":", 1)[-1]) == self.hparams["crash_on_case"]:
            raise RuntimeError("injected crash")
        edit = super().apply(request)
        stack = type(self).in_force
        stack.append(request.case_key)
        log = type(self).log

        class _Tracked(AppliedEdit):
            def restore(self) -> None:
                edit.restore()
                stack.remove(request.case_key)
                log.append(("restore", request.case_key))

        return _Tracked()

    def apply_many(self, requests):
        type(self).log.append(("apply_many", [request.case_key for request in requests]))
        return super().apply_many(requests)

    def begin_sequence(self):
        type(self).log.append(("begin_sequence",))

    def end_sequence(self):
        type(self).log.append(("end_sequence",))


class RememberingPrefixEdit(PromptPrefixEdit):
    """The weight-free fake, recording the size of every `apply_many` (its memory of edits)."""

    name = "remembering"
    sizes: list[int] = []

    def apply_many(self, requests):
        type(self).sizes.append(len(requests))
        return super().apply_many(requests)
