"""`method=ike`: In-Context Knowledge Editing (Zheng et al. 2023, "Can We Edit Factual Knowledge by
In-Context Learning?").

No weight changes: every question of a case is asked after k demonstrations and the new fact,

    New Fact: <demo fact question> <demo new answer>
    Question: <demo question>
    Answer: <demo answer>
    (blank line; k such blocks, copy / update / retain mixed by `ratio`)
    New Fact: <edit question> <new answer>
    <the original prompt, unchanged, e.g. "Question: ...\nAnswer:">

Demonstrations come from a training file in the edit language (see `demonstrations.py`), picked by
similarity to the edit question; the pool is encoded once per (training file, encoder) and cached
under `<cache_root>/ike/`.

Several edits in force (`apply_many`: edit_mode=batch, and the memory of all edits so far under
edit_mode=sequential): every question is asked after the k demonstrations of the remembered fact most
similar to it and the `MEMORY_FACTS` most similar facts as "New Fact" lines, the most similar last, so
the prompt stays bounded however many edits accumulate.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from bizsre_tasks import default_model
from bizsre_tasks.editing.base import AppliedEdit, EditingMethod, EditRequest
from bizsre_tasks.editing.demonstrations import (
    Demonstration,
    DemonstrationPool,
    fact_line,
    format_demonstration,
)
from bizsre_tasks.editing.scope_classifier import question_from_prompt
from bizsre_tasks.editing.tensors.encoders import ENCODERS, build_encoder
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.tasks import data_loading, prompts

logger = logging.getLogger(__name__)


class InContextEdit(AppliedEdit):
    """An edit in force: the demonstrations and the new fact, prepended to every prompt."""

    def __init__(self, context_text: str):
        self.context_text = context_text

    @property
    def shared_prefix(self) -> str:
        """Every prompt becomes `shared_prefix + prompt`: teacher-forced answering computes this prefix
        once per case (`prefix_cache.shared_prefix_answers`)."""
        return self.context_text

    def rewrite_prompt(self, prompt: str) -> str:
        return self.context_text + prompt


class InContextMemory(AppliedEdit):
    """Several facts in force: each prompt is preceded by the facts most similar to its question (at most
    `MEMORY_FACTS`, the most similar last, just before the prompt), after the demonstrations chosen for
    that most similar fact. There is no prefix shared by every prompt, but prompts whose most similar fact
    is the same share its demonstrations (`prefix_for`), which the wrapper then computes once for them."""

    def __init__(self, method: InContextEditing, requests: list[EditRequest], keys):
        self.method = method
        self.requests = requests
        self.keys = torch.nn.functional.normalize(keys.float(), dim=-1)
        self.queries = keys
        self._demos: dict[int, str] = {}
        self._chosen: dict[str, list[int]] = {}  # prompt -> its facts, most similar last

    def _facts_for(self, prompt: str) -> list[int]:
        if prompt not in self._chosen:
            query = self.method.encoder.encode([question_from_prompt(prompt)], batch_size=1)[0]
            scores = self.keys @ torch.nn.functional.normalize(query.float(), dim=-1)
            self._chosen[prompt] = scores.argsort(descending=True)[: self.method.MEMORY_FACTS].tolist()[::-1]
        return self._chosen[prompt]

    def _demonstrations(self, fact: int) -> str:
        if fact not in self._demos:
            self._demos[fact] = self.method.demonstrations_text(self.requests[fact], self.queries[fact])
        return self._demos[fact]

    def prefix_for(self, prompt: str) -> str | None:
        return self._demonstrations(self._facts_for(prompt)[-1]) or None

    def rewrite_prompt(self, prompt: str) -> str:
        method = self.method
        chosen = self._facts_for(prompt)
        label = method.hparams["fact_label"]
        facts = "".join(fact_line(method.edit_question(self.requests[i]), self.requests[i].target, self.requests[i].lang, label) + "\n"
                        for i in chosen)
        return self._demonstrations(chosen[-1]) + facts + prompt


def resolve_pool_source(context_train_file: str | None, hparam_train_file: str) -> Path | None:
    """model_args train_file, else $BIZSRE_TRAIN_FILE, else hparams `train_file`; None when none is set."""
    chosen = data_loading.resolve_train_file(context_train_file)
    if chosen is None and hparam_train_file:
        chosen = Path(hparam_train_file).expanduser()
    return chosen


def load_pool(context, hparams: dict, method_name: str) -> DemonstrationPool:
    """The demonstration pool of the edit language; the bundled sample (with a warning) when no file is set."""
    source = resolve_pool_source(context.train_file, hparams.get("train_file", ""))
    if source is None:
        logger.warning(
            "%s: no training file (model_args train_file=..., $%s or hparams train_file); using the bundled sample's "
            "questions as demonstrations, which is only good for a demo run",
            method_name,
            data_loading.TRAIN_FILE_ENV,
        )
        return DemonstrationPool.from_sample(context.edit_lang, seed=context.seed)
    return DemonstrationPool.from_file(source, context.edit_lang, hparams.get("pool_size", 0), seed=context.seed)


class InContextEditing(EditingMethod):
    name = "ike"
    modifies_weights = False
    default_hparams = {
        "k": 8,  # demonstrations per edit
        "ratio": [1.0, 3.0, 4.0],  # copy : update : retain (the paper's 1:3:4)
        "encoder": "base",  # the model's own hidden states (see editing/tensors/encoders.py)
        "encoder_layer": 0,  # hidden states after this many layers: 0 = input embeddings (no forward pass)
        "encode_batch_size": 32,  # questions per encoder forward pass
        "train_file": "",  # demonstration pool, used when model_args/env give none
        "pool_size": 0,  # use only the first N training records (0 = all)
        "fact_label": "",  # "" = the edit language's (the languages table: "New Fact: ", "新事实："...)
        "cache": True,  # keep pool features under <cache_root>/ike
        # The seed repository's prompt (hparams=paper): demonstrations most similar first, and the new fact
        # itself as one more copy demonstration just before the final new-fact line.
        "most_similar_first": False,
        "edit_demo": False,  # also show the new fact as a copy demonstration before its fact line (the seed's prompt)
    }

    # At most this many remembered facts before a question when several edits are in force (a class
    # constant, not a hparam, so that single-edit runs keep their answer-store identity).
    MEMORY_FACTS = 4

    def __init__(self, context, hparams):
        super().__init__(context, hparams)
        self.pool: DemonstrationPool | None = None
        self.encoder = None
        self.pool_from_cache = False

    def validate_hparams(self) -> None:
        hp = self.hparams
        if hp["k"] < 0:
            raise ConfigurationError(f"hparams 'k' must be >= 0, got {hp['k']}")
        ratio = hp["ratio"]
        if len(ratio) != 3 or any(not isinstance(x, (int, float)) or x < 0 for x in ratio) or sum(ratio) <= 0:
            raise ConfigurationError(f"hparams 'ratio' must be three non-negative numbers (copy, update, retain), got {ratio!r}")
        if hp["encoder"] not in ENCODERS:
            raise ConfigurationError(f"hparams 'encoder': unknown encoder '{hp['encoder']}'; choose one of: {', '.join(ENCODERS)}")
        if hp["pool_size"] < 0 or hp["encode_batch_size"] < 1:
            raise ConfigurationError("hparams 'pool_size' must be >= 0 and 'encode_batch_size' >= 1")

    def prepare(self) -> None:
        self.pool = load_pool(self.context, self.hparams, self.name)
        self.encoder = build_encoder(self.hparams["encoder"], self.context, self.hparams["encoder_layer"])
        cache_dir = default_model.cache_root() / "ike" if self.hparams["cache"] else None
        self.pool_from_cache = self.pool.encode(self.encoder, cache_dir, self.hparams["encode_batch_size"])
        logger.info(
            "IKE pool: %d records from %s (%s)", len(self.pool.records), self.pool.source, "cached" if self.pool_from_cache else "encoded"
        )

    @staticmethod
    def edit_question(request: EditRequest) -> str:
        return prompts.clean_question(request.question) if request.question else request.prompt

    def demonstrations_text(self, request: EditRequest, query) -> str:
        question = self.edit_question(request)
        ratio = tuple(float(x) for x in self.hparams["ratio"])
        demos = self.pool.select(query, self.hparams["k"], ratio, exclude_question=question,
                                 most_similar_first=self.hparams["most_similar_first"])
        if self.hparams["edit_demo"]:
            demos.append(Demonstration("copy", question, request.target, question, request.target))
        label = self.hparams["fact_label"]
        return "".join(format_demonstration(demo, self.pool.lang, label) for demo in demos)

    def context_text(self, request: EditRequest, query) -> str:
        fact = fact_line(self.edit_question(request), request.target, request.lang, self.hparams["fact_label"])
        return self.demonstrations_text(request, query) + fact + "\n"

    def apply(self, request: EditRequest) -> AppliedEdit:
        return self.apply_batch([request])[0]

    def apply_batch(self, requests: list[EditRequest]) -> list[AppliedEdit]:
        self.ensure_prepared()
        if not requests:
            return []
        queries = self.encoder.encode([self.edit_question(r) for r in requests], batch_size=self.hparams["encode_batch_size"])
        return [InContextEdit(self.context_text(request, query)) for request, query in zip(requests, queries)]

    def apply_many(self, requests: list[EditRequest]) -> AppliedEdit:
        """All `requests` in force together; one request is an ordinary edit (see InContextMemory)."""
        self.ensure_prepared()
        if len(requests) <= 1:
            return self.apply(requests[0]) if requests else AppliedEdit()
        queries = self.encoder.encode([self.edit_question(r) for r in requests], batch_size=self.hparams["encode_batch_size"])
        return InContextMemory(self, list(requests), queries)
