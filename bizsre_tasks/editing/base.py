"""The protocol every editing method implements, and what the wrapper hands to it.

A method is built once per run (`__init__` + `prepare`), then `apply(request)` is called once per
test case (weight methods first get `precompute(requests)` for each chunk of upcoming cases).
`apply` returns an `AppliedEdit`: the wrapper answers the case's questions through it
(`rewrite_prompt` lets in-context methods change the prompt, weight methods leave it alone) and
calls `restore()` before the next case. Methods that change weights must make `restore()` put every
touched tensor back bit for bit; `WeightBackup` does that for them.

Edit modes (model_arg `edit_mode`, docs/edited-hf.md): `batch` installs several edits together through
`apply_many`; `sequential` wraps its run in `begin_sequence()` / `end_sequence()` and never calls
`precompute`. There a weight method's edits pile up (`apply` case after case, restored in reverse at the
end); a weight-free method's edits live in its handles, so after each case the wrapper restores the
previous handle and asks `apply_many` for every edit so far (its memory of all facts).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bizsre_tasks.editing.layout import ModelLayout
from bizsre_tasks.errors import BizsreError


class EditFailedError(BizsreError):
    """An edit that could not be applied (NaN loss, singular matrix, exploding update).

    The wrapper restores the model, records the case as a failed edit and carries on.
    """


@dataclass(frozen=True)
class EditRequest:
    """One fact to install: `prompt` + `target_separator` + `target` should become the model's continuation."""

    prompt: str
    target: str
    subject: str
    lang: str
    target_separator: str = " "
    question: str = ""
    rephrase: str = ""
    case_key: str = ""

    @property
    def target_text(self) -> str:
        return self.target_separator + self.target

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> EditRequest:
        """Build the request from a Bi-ZsRE task document (its `bizsre_edit` field)."""
        edit = json.loads(doc["bizsre_edit"])
        return cls(
            prompt=edit["prompt"],
            target=edit["target"],
            subject=edit["subject"],
            lang=edit["lang"],
            target_separator=edit.get("target_separator", " "),
            question=edit.get("question", ""),
            rephrase=edit.get("rephrase", ""),
            case_key=doc.get("case_key", ""),
        )


@dataclass
class EditingContext:
    """The model under edit and what methods may need besides it."""

    model: torch.nn.Module
    tokenizer: Any
    layout: ModelLayout
    device: torch.device
    model_name: str = ""
    train_file: str | None = None
    edit_lang: str = "en"
    checkpoint: str | None = None
    seed: int = 1234
    extra: dict[str, Any] = field(default_factory=dict)


class AppliedEdit:
    """An edit in force. The default changes nothing and restores nothing."""

    # Text that `rewrite_prompt` puts in front of every prompt (in-context methods), or None. The
    # wrapper may then compute it once for all the case's questions (`prefix_cache`).
    shared_prefix: str | None = None

    def rewrite_prompt(self, prompt: str) -> str:
        return prompt

    def prefix_for(self, prompt: str) -> str | None:
        """The text in front of `rewrite_prompt(prompt)` that other prompts under this edit may share (the
        wrapper computes it once for all prompts with the same one), or None. Default: `shared_prefix`."""
        return self.shared_prefix

    def restore(self) -> None:
        return None


class EditStack(AppliedEdit):
    """Several edits in force together (`apply_many`'s default): prompts are rewritten by each in the order
    applied, and `restore` undoes them in reverse, so stacked weight backups put back the original bits."""

    def __init__(self, edits: list[AppliedEdit]):
        self.edits = list(edits)

    @property
    def shared_prefix(self) -> str | None:
        # Each rewrite puts its prefix in front of the previous result: the last edit's text comes first.
        prefixes = [edit.shared_prefix for edit in self.edits]
        return "".join(reversed(prefixes)) if prefixes and all(p is not None for p in prefixes) else None

    def rewrite_prompt(self, prompt: str) -> str:
        for edit in self.edits:
            prompt = edit.rewrite_prompt(prompt)
        return prompt

    def prefix_for(self, prompt: str) -> str | None:
        if self.shared_prefix is not None or not self.edits:
            return self.shared_prefix
        # the last edit's text comes first: its prefix for the prompt the others made
        for edit in self.edits[:-1]:
            prompt = edit.rewrite_prompt(prompt)
        return self.edits[-1].prefix_for(prompt)

    def restore(self) -> None:
        for edit in reversed(self.edits):
            edit.restore()


class WeightBackup:
    """Exact copies of the tensors an edit is about to change; `restore` copies them back bit for bit."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self._live = tensors
        self._saved = {name: tensor.detach().clone() for name, tensor in tensors.items()}

    def restore(self) -> None:
        with torch.no_grad():
            for name, tensor in self._live.items():
                tensor.copy_(self._saved[name])


class WeightEdit(AppliedEdit):
    """An edit made by changing weights in place; restoring copies the saved originals back."""

    def __init__(self, backup: WeightBackup):
        self._backup = backup

    def restore(self) -> None:
        self._backup.restore()


class EditingMethod(ABC):
    """Base class: subclasses set `name`, `modifies_weights`, `default_hparams` and implement `apply`.

    `default_hparams` holds every accepted key with its default; `family_hparams` overrides defaults
    per `config.model_type`. User YAML values are checked against the defaults' types.
    """

    name: ClassVar[str]
    modifies_weights: ClassVar[bool] = True
    default_hparams: ClassVar[dict[str, Any]] = {}
    family_hparams: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, context: EditingContext, hparams: dict[str, Any]):
        self.context = context
        self.hparams = hparams
        self._prepared = False

    @property
    def model(self) -> torch.nn.Module:
        return self.context.model

    @property
    def tokenizer(self):
        return self.context.tokenizer

    @property
    def layout(self) -> ModelLayout:
        return self.context.layout

    def ensure_prepared(self) -> None:
        if not self._prepared:
            self.prepare()
            self._prepared = True

    def prepare(self) -> None:
        """One-time work before the first edit (statistics, demonstration pools, checkpoints)."""

    def validate_hparams(self) -> None:
        """Range checks beyond types (e.g. layer indices); raise ConfigurationError."""

    def precompute(self, requests: list[EditRequest]) -> None:
        """Optional: work for several upcoming edits done together (ROME/MEMIT optimise their δ in one batch).

        The wrapper calls it with a chunk of cases (model_arg `edit_batch`) on the unedited model, then
        applies, answers and restores them one by one, so what is kept here must be computed against the
        unedited weights. `apply` must work whether or not it was called. Only `edit_mode=single` calls it.
        Default: nothing."""

    @abstractmethod
    def apply(self, request: EditRequest) -> AppliedEdit:
        """Install the edit and return the handle that answers under it and restores the model."""

    def apply_batch(self, requests: list[EditRequest]) -> list[AppliedEdit]:
        """Weight-free methods may install several edits at once; weight methods never get here."""
        return [self.apply(request) for request in requests]

    def apply_many(self, requests: list[EditRequest]) -> AppliedEdit:
        """Install several edits together and return one handle for all of them (`edit_mode=batch`, and a
        weight-free method's memory in `edit_mode=sequential`). Default: `apply` one after another; the
        handle's `restore` undoes them in reverse order. If one fails, those before it are restored and
        the EditFailedError is raised. MEMIT-style methods override it with one joint update."""
        applied: list[AppliedEdit] = []
        try:
            for request in requests:
                applied.append(self.apply(request))
        except BaseException:
            EditStack(applied).restore()
            raise
        return EditStack(applied)

    def begin_sequence(self) -> None:
        """Called before the first edit of an `edit_mode=sequential` run (edits then accumulate without
        restores until the end). Default: nothing."""

    def end_sequence(self) -> None:
        """Called after a sequential run's edits have all been restored. Default: nothing."""
