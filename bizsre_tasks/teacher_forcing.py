"""The paper's evaluation protocol (EasyEdit's): the argmax at every gold target position, given the
prompt and the gold prefix, decoded to a string."""

from __future__ import annotations

import torch

from bizsre_tasks.editing.common import build_batch, logits_at


@torch.no_grad()
def teacher_forced_answers(model, tokenizer, prompts: list[str], target_texts: list[str], batch_size: int = 8) -> list[str]:
    answers: list[str] = []
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        batch = build_batch(tokenizer, prompts[start : start + batch_size], target_texts[start : start + batch_size], device)
        predicted = logits_at(model, batch.input_ids, batch.attention_mask, batch.positions).argmax(-1)
        for row, mask in zip(predicted.tolist(), batch.target_mask.tolist()):
            ids = [token for token, keep in zip(row, mask) if keep]
            answers.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return answers
