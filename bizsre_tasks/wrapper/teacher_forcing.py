"""The paper's evaluation protocol (EasyEdit's): the argmax at every gold target position, given the
prompt and the gold prefix, decoded to a string."""

from __future__ import annotations

import logging

import torch

from bizsre_tasks.editing.common import (
    PromptTargetBatch,
    context_length,
    encode_rows,
    gather_positions,
    hidden_states,
    length_sorted_batches,
    logits_at,
    naive_mode,
    pad_rows,
)
from bizsre_tasks.editing.tensors.head_softmax import head_argmax

logger = logging.getLogger(__name__)


@torch.no_grad()
def teacher_forced_answers(model, tokenizer, prompts: list[str], target_texts: list[str], batch_size: int = 8) -> list[str]:
    answers: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    # Prompts longer than the context (a method's long in-context prefix) lose their beginning,
    # never the target; the wrapper's checks refuse test questions that do not fit on their own.
    max_length = context_length(model)
    rows = encode_rows(tokenizer, prompts, target_texts, max_length)
    for members in length_sorted_batches(rows, batch_size):
        batch = pad_rows([rows[i] for i in members], tokenizer.pad_token_id, device)
        for i, answer in zip(members, argmax_answers(tokenizer, predicted_tokens(model, batch), batch)):
            answers[i] = answer
    truncated = sum(row.truncated for row in rows)
    if truncated:
        logger.warning("teacher forcing: %d prompt(s) longer than the model's context of %d tokens lost their beginning", truncated, max_length)
    return answers


def predicted_tokens(model, batch: PromptTargetBatch) -> torch.Tensor:
    """The argmax token (B, T) at every target position (0 at padded ones); the head runs at real target
    positions only (in the benchmark's naive path: full logits everywhere, then picked)."""
    if naive_mode():
        return logits_at(model, batch.input_ids, batch.attention_mask, batch.positions).argmax(-1)
    return argmax_at_targets(model, hidden_states(model, batch.input_ids, batch.attention_mask), batch.positions, batch.target_mask)


def argmax_at_targets(model, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The head's argmax (B, T) of `hidden` (B, L, D) at `positions` (B, T) where `mask` is set, 0 elsewhere:
    padded target slots of a batch whose targets differ in length cost no pass over the vocabulary."""
    tokens = torch.zeros_like(positions)
    tokens[mask] = head_argmax(model, gather_positions(hidden, positions)[mask])
    return tokens


def argmax_answers(tokenizer, tokens: torch.Tensor, batch: PromptTargetBatch) -> list[str]:
    """Each row's predicted tokens at its target positions (`tokens`: (B, T)), decoded."""
    answers = []
    for row, mask in zip(tokens.tolist(), batch.target_mask.tolist()):
        ids = [token for token, keep in zip(row, mask) if keep]
        answers.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return answers
