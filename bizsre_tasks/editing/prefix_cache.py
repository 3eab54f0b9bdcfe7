"""Teacher-forced answers for many prompts that share one long prefix (IKE's demonstrations).

IKE asks every question of a case after the same ~350-token context. Answering each prompt in full
recomputes that context each time; here it runs once, its key/value cache is kept, and only each
question (~25 tokens) and its target run on top of it. Same argmax answers as
`teacher_forcing.teacher_forced_answers` (up to float rounding), at a fraction of the cost.

Not wired into the wrapper yet: `EditedHFLM._answer` can call `shared_prefix_answers` for the
requests of one case whose edit has a `shared_prefix` (IKE's `InContextEdit`).
"""

from __future__ import annotations

import copy

import torch

from bizsre_tasks.editing.common import encode_prompt, encode_target, head_logits
from bizsre_tasks.teacher_forcing import teacher_forced_answers


@torch.no_grad()
def shared_prefix_answers(model, tokenizer, prefix: str, prompts: list[str], target_texts: list[str]) -> list[str]:
    """Argmax answers at the gold target positions for `prefix + prompt`, computing the prefix once."""
    if not prompts:
        return []
    prefix_ids = encode_prompt(tokenizer, prefix)
    rows = [encode_prompt(tokenizer, prefix + prompt) for prompt in prompts]
    if len(prefix_ids) < 2 or any(row[: len(prefix_ids)] != prefix_ids or len(row) == len(prefix_ids) for row in rows):
        # The prompt's first token merges with the prefix's last one: no clean cut, answer in full.
        return teacher_forced_answers(model, tokenizer, [prefix + p for p in prompts], target_texts)
    device = next(model.parameters()).device
    body = model.base_model
    # The last prefix token is left for the suffix, so each suffix predicts from its own first position.
    cut = len(prefix_ids) - 1
    cached = body(input_ids=torch.tensor([prefix_ids[:cut]], device=device), use_cache=True).past_key_values
    answers = []
    for row, target_text in zip(rows, target_texts):
        target = encode_target(tokenizer, target_text)
        suffix = row[cut:] + target
        hidden = body(input_ids=torch.tensor([suffix], device=device), past_key_values=copy.deepcopy(cached), use_cache=True).last_hidden_state
        start = len(row) - cut - 1  # position predicting the first target token
        logits = head_logits(model, hidden[:, start : start + len(target)])
        answers.append(tokenizer.decode(logits.argmax(-1)[0].tolist(), skip_special_tokens=True).strip())
    return answers
