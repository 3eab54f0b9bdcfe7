"""`method=serac`: Semi-parametric editing with a retrieval-augmented counterfactual model (Mitchell
et al. 2022, "Memory-Based Model Editing at Scale"), fitted to the per-case protocol.

- Edit memory: `apply` stores the edit (question + new answer); `restore` drops it. Each case is
  evaluated with its own edit in memory, as every other method is.
- Scope classifier (trained, `bizsre train serac`): decides whether a question falls under the
  stored edit; see `scope_classifier.py`.
- Counterfactual model: the base model conditioned on the edit ("New Fact: <edit question> <answer>"
  before the prompt; optionally preceded by `demonstrations` IKE demonstrations). Out-of-scope
  questions go to the unedited base model: their prompt is returned unchanged.
No weights change.

Several edits in force (`apply_many`: edit_mode=batch, and the memory of every edit so far under
edit_mode=sequential): all are stored, and each question goes to the counterfactual model conditioned on
the stored edit the scope classifier finds closest to it, if that one is in scope (as in the paper's
memory of many edits); otherwise to the base model.
"""

from __future__ import annotations

import logging

from bizsre_tasks import default_model
from bizsre_tasks.editing.base import AppliedEdit, EditingMethod, EditRequest
from bizsre_tasks.editing.demonstrations import fact_line, format_demonstration
from bizsre_tasks.editing.scope_classifier import (
    ScopeClassifier,
    ScopeHead,
    question_from_prompt,
)
from bizsre_tasks.editing.tensors.encoders import build_encoder, model_fingerprint
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.tasks import prompts

logger = logging.getLogger(__name__)


class SeracEdit(AppliedEdit):
    """One edit in memory: routes each prompt to the counterfactual model or the base model."""

    def __init__(self, method: Serac, request: EditRequest, context_text: str):
        self.method = method
        self.request = request
        self.edit_question = method.edit_question(request)
        self.counterfactual_text = context_text
        self.routed: dict[str, bool] = {}

    def rewrite_prompt(self, prompt: str) -> str:
        in_scope = self.method.classifier.in_scope(self.edit_question, question_from_prompt(prompt))
        self.routed[prompt] = in_scope
        return self.counterfactual_text + prompt if in_scope else prompt

    def restore(self) -> None:
        self.method.forget(self.request)


class SeracMemory(AppliedEdit):
    """Several edits in memory: a prompt is routed by its closest stored edit (`Serac.closest_in_scope`)."""

    def __init__(self, method: Serac, requests: list[EditRequest]):
        self.method = method
        self.requests = list(requests)
        self.edit_questions = [method.edit_question(request) for request in self.requests]
        self.routed: dict[str, int | None] = {}
        self._contexts: dict[int, str] = {}

    def rewrite_prompt(self, prompt: str) -> str:
        chosen = self.method.closest_in_scope(self.edit_questions, question_from_prompt(prompt))
        self.routed[prompt] = chosen
        if chosen is None:
            return prompt
        if chosen not in self._contexts:
            self._contexts[chosen] = self.method.counterfactual_context(self.requests[chosen])
        return self._contexts[chosen] + prompt

    def restore(self) -> None:
        for request in self.requests:
            self.method.forget(request)


class Serac(EditingMethod):
    name = "serac"
    modifies_weights = False
    default_hparams = {
        "checkpoint": "",  # scope-classifier folder; model_args checkpoint=DIR takes precedence
        "threshold": -1.0,  # in-scope similarity threshold; < 0 = the one chosen at training
        "demonstrations": 0,  # IKE demonstrations before the counterfactual prompt (needs a training file)
        "ratio": [1.0, 3.0, 4.0],  # their copy : update : retain mix
        "train_file": "",  # demonstration pool when model_args/env give none
        "fact_label": "",  # "" = the edit language's (the languages table: "New Fact: ", "新事实："...)
        "encode_batch_size": 32,  # questions per encoder forward pass
    }

    def __init__(self, context, hparams):
        super().__init__(context, hparams)
        self.memory: list[EditRequest] = []
        self.pool = None
        self.checkpoint_info = None
        # Load and check the checkpoint now, so that a wrong one stops the run before any evaluation.
        self.classifier = self._load_classifier()

    def validate_hparams(self) -> None:
        if self.hparams["demonstrations"] < 0:
            raise ConfigurationError("hparams 'demonstrations' must be >= 0")
        if self.hparams["threshold"] > 1.0:
            raise ConfigurationError("hparams 'threshold' is a cosine similarity: at most 1.0 (or < 0 for the checkpoint's)")

    def checkpoint_dir(self) -> str:
        return self.context.checkpoint or self.hparams.get("checkpoint") or ""

    def _load_classifier(self) -> ScopeClassifier:
        from bizsre_tasks.editing.checkpoints import load_checkpoint

        fingerprint = model_fingerprint(self.model)
        info, tensors = load_checkpoint(self.checkpoint_dir(), self.name, edit_lang=self.context.edit_lang, fingerprint=fingerprint)
        config = info.config
        try:
            encoder = build_encoder(config["encoder"], self.context, int(config.get("encoder_layer", -1)), fingerprint)
            head = ScopeHead(int(config["dim"]), int(config["proj_dim"]), int(config.get("hidden", 0)))
            head.load_state_dict({name[len("head."):]: tensor for name, tensor in tensors.items() if name.startswith("head.")})
        except (KeyError, RuntimeError) as exc:
            raise ConfigurationError(f"SERAC checkpoint {self.checkpoint_dir()} is inconsistent ({exc}); retrain it") from None
        if encoder.key != config.get("encoder_key", encoder.key):
            raise ConfigurationError(f"SERAC checkpoint {self.checkpoint_dir()} was trained on encoder {config.get('encoder_key')}, not {encoder.key}")
        threshold = self.hparams["threshold"] if self.hparams["threshold"] >= 0 else float(config["threshold"])
        self.checkpoint_info = info
        return ScopeClassifier(encoder, head, threshold, batch_size=self.hparams["encode_batch_size"])

    def prepare(self) -> None:
        if self.hparams["demonstrations"] > 0:
            from bizsre_tasks.editing.ike import load_pool

            self.pool = load_pool(self.context, self.hparams, self.name)
            cache_dir = default_model.cache_root() / "ike"
            self.pool.encode(self.classifier.encoder, cache_dir, self.hparams["encode_batch_size"])

    @staticmethod
    def edit_question(request: EditRequest) -> str:
        return prompts.clean_question(request.question) if request.question else question_from_prompt(request.prompt)

    def counterfactual_context(self, request: EditRequest) -> str:
        question = self.edit_question(request)
        label = self.hparams["fact_label"]
        text = ""
        if self.pool is not None:
            query = self.classifier.encoder.encode([question])[0]
            ratio = tuple(float(x) for x in self.hparams["ratio"])
            demos = self.pool.select(query, self.hparams["demonstrations"], ratio, exclude_question=question)
            text = "".join(format_demonstration(demo, self.pool.lang, label) for demo in demos)
        return text + fact_line(question, request.target, request.lang, label) + "\n"

    def apply(self, request: EditRequest) -> AppliedEdit:
        self.ensure_prepared()
        self.memory.append(request)
        return SeracEdit(self, request, self.counterfactual_context(request))

    def apply_many(self, requests: list[EditRequest]) -> AppliedEdit:
        self.ensure_prepared()
        if len(requests) <= 1:
            return self.apply(requests[0]) if requests else AppliedEdit()
        self.memory.extend(requests)
        return SeracMemory(self, requests)

    def closest_in_scope(self, edit_questions: list[str], question: str) -> int | None:
        """The index of the stored edit closest to `question` (the same question first), if it is in scope."""
        cleaned = prompts.clean_question(question)
        for index, edit_question in enumerate(edit_questions):
            if prompts.clean_question(edit_question) == cleaned:
                return index
        vectors = self.classifier.embed([question] + edit_questions)
        scores = vectors[1:] @ vectors[0]
        best = int(scores.argmax())
        return best if float(scores[best]) >= self.classifier.threshold else None

    def forget(self, request: EditRequest) -> None:
        if request in self.memory:
            self.memory.remove(request)
