"""The paper's evaluation protocol (EasyEdit's): the argmax at every gold target position, given the
prompt and the gold prefix, decoded to a string."""

from __future__ import annotations

import logging

import torch

from bizsre_tasks.editing.common import PromptTargetBatch, build_batch, context_length, gather_positions, hidden_states, logits_at, naive_mode
from bizsre_tasks.editing.head_softmax import head_argmax

logger = logging.getLogger(__name__)


@torch.no_grad()
def teacher_forced_answers(model, tokenizer, prompts: list[str], target_texts: list[str], batch_size: int = 8) -> list[str]:
    answers: list[str] = []
    device = next(model.parameters()).device
    # Prompts longer than the context (a method's long in-context prefix) lose their beginning,
    # never the target; the wrapper's checks refuse test questions that do not fit on their own.
    max_length, truncated = context_length(model), 0
    for start in range(0, len(prompts), batch_size):
        batch = build_batch(tokenizer, prompts[start : start + batch_size], target_texts[start : start + batch_size], device, max_length)
        truncated += len(batch.truncated)
        answers += argmax_answers(tokenizer, predicted_tokens(model, batch), batch)
    if truncated:
        logger.warning("teacher forcing: %d prompt(s) longer than the model's context of %d tokens lost their beginning", truncated, max_length)
    return answers


def predicted_tokens(model, batch: PromptTargetBatch) -> torch.Tensor:
    """The argmax token (B, T) at every target position; the head runs at those positions only (in the
    benchmark's naive path: full logits everywhere, then picked)."""
    if naive_mode():
        return logits_at(model, batch.input_ids, batch.attention_mask, batch.positions).argmax(-1)
    hidden = hidden_states(model, batch.input_ids, batch.attention_mask)
    return head_argmax(model, gather_positions(hidden, batch.positions))


def argmax_answers(tokenizer, tokens: torch.Tensor, batch: PromptTargetBatch) -> list[str]:
    """Each row's predicted tokens at its target positions (`tokens`: (B, T)), decoded."""
    answers = []
    for row, mask in zip(tokens.tolist(), batch.target_mask.tolist()):
        ids = [token for token, keep in zip(row, mask) if keep]
        answers.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return answers
