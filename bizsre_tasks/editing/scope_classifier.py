"""SERAC's scope classifier: is a question covered by a stored edit?

A frozen sentence encoder (`encoders.py`; by default the base model's own mid-layer hidden states,
which read every language the model reads) feeds a small trained head: standardisation with the
training features' mean and spread, then a linear projection to a unit sphere. The head is trained
contrastively (`bizsre_tasks.training.serac_training`) so that an edit question lies close to its
paraphrases and translations and far from other questions; a question is in scope when its cosine
similarity to the edit question reaches a threshold chosen on held-out training data.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from bizsre_tasks import languages
from bizsre_tasks.tasks import prompts


class ScopeHead(nn.Module):
    """Standardise, project, normalise. `hidden > 0` adds a residual MLP before the projection."""

    def __init__(self, dim: int, proj_dim: int, hidden: int = 0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)) if hidden > 0 else None
        self.proj = nn.Linear(dim, proj_dim)

    def set_statistics(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(0))
        self.scale.copy_(features.std(0).clamp(min=1e-4))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features - self.mean) / self.scale
        if self.mlp is not None:
            x = x + self.mlp(x)
        return nn.functional.normalize(self.proj(x), dim=-1)


def question_from_prompt(prompt: str) -> str:
    """The question inside a templated prompt ("Question: ...\\nAnswer:"), for any known language.

    The template words differ per language and would pull questions of one language together, so the
    classifier compares questions only. A prompt matching no template is used whole.
    """
    text = prompt.strip()
    for lang in languages.with_templates():
        try:
            template = prompts.prompt_template(lang)
        except ValueError:
            continue
        before, after = template.split("{question}", 1)
        before, after = before.strip(), after.strip()
        if text.startswith(before) and text.endswith(after) and len(text) > len(before) + len(after):
            inner = text[len(before) : len(text) - len(after)] if after else text[len(before) :]
            return inner.strip()
    return text


class ScopeClassifier:
    """Encoder + trained head + threshold; `similarity` is cosine in the head's space."""

    def __init__(self, encoder, head: ScopeHead, threshold: float, batch_size: int = 32, cache_size: int = 4096):
        self.encoder = encoder
        self.head = head.eval()
        self.threshold = float(threshold)
        self.batch_size = batch_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """Head-space unit vectors, computed once per distinct text (an edit's questions repeat)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            projected = self.head(self.encoder.encode(missing, batch_size=self.batch_size).float())
            for text, vector in zip(missing, projected):
                self._cache[text] = vector
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return torch.stack([self._cache[t] if t in self._cache else self.head(self.encoder.encode([t]).float())[0] for t in texts])

    def similarity(self, edit_question: str, question: str) -> float:
        vectors = self.embed([edit_question, question])
        return float(vectors[0] @ vectors[1])

    def in_scope(self, edit_question: str, question: str) -> bool:
        if prompts.clean_question(question) == prompts.clean_question(edit_question):
            return True
        return self.similarity(edit_question, question) >= self.threshold
