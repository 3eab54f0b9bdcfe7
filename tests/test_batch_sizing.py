"""--batch_size auto: a size from the free memory for the sequences Bi-ZsRE asks, never a probe at the
model's full context (which the kernel kills on CPU), or a clear refusal."""

from __future__ import annotations

import types

import pytest
import torch

from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.wrapper import batch_sizing

# Gemma 3 270M's shape: a 32k context and a 262k vocabulary.
GEMMA = types.SimpleNamespace(
    config=types.SimpleNamespace(hidden_size=640, num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                                 head_dim=256, intermediate_size=2048, vocab_size=262144, max_position_embeddings=32768),
    dtype=torch.float32,
)
GIB = 2**30


def test_size_follows_free_memory_and_ignores_the_full_context(monkeypatch):
    monkeypatch.setattr(batch_sizing, "free_memory", lambda device: 20 * GIB)
    row = batch_sizing.bytes_per_row(GEMMA.config, batch_sizing.AUTO_BATCH_TOKENS, 4)
    assert row < GIB  # the harness's probe row (32k tokens x 262k logits) is ~34 GB
    size = batch_sizing.auto_batch_size(GEMMA, torch.device("cpu"), 32768, 64)
    assert size == int(0.5 * 20 * GIB // row) and 1 < size < 64
    assert batch_sizing.auto_batch_size(GEMMA, torch.device("cpu"), 32768, 4) == 4  # --max_batch_size caps it
    # Two processes on one machine share its memory.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert batch_sizing.auto_batch_size(GEMMA, torch.device("cpu"), 32768, 64) == int(0.25 * 20 * GIB // row)


def test_refused_with_a_message_when_not_even_one_sequence_fits(monkeypatch):
    monkeypatch.setattr(batch_sizing, "free_memory", lambda device: GIB // 4)
    with pytest.raises(ConfigurationError, match=r"--batch_size auto: one sequence of 2048 tokens needs about .* GiB"):
        batch_sizing.auto_batch_size(GEMMA, torch.device("cpu"), 32768, 64)


def test_edited_hf_uses_it_once_instead_of_the_harness_probe(tiny_gpt2, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    from tests.harness import run_harness

    monkeypatch.setattr(HFLM, "_detect_batch_size", lambda *a, **k: pytest.fail("the harness's probe ran"))
    calls = []
    real = batch_sizing.auto_batch_size
    monkeypatch.setattr(batch_sizing, "auto_batch_size", lambda *a, **k: calls.append(1) or real(*a, **k))
    results = run_harness({"pretrained": str(tiny_gpt2), "device": "cpu", "method": "none"}, ["bizsre"], limit=2, batch_size="auto")
    assert len(calls) == 1
    assert results["results"]["bizsre_reliability"]["f1,none"] >= 0.0
