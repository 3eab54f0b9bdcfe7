"""Teacher-forced answers for prompts that share one long prefix (IKE's demonstrations).

An applied edit may declare a `shared_prefix` (`base.AppliedEdit`): every prompt it rewrites starts
with that text (or, through `prefix_for`, a prefix per prompt: IKE's memory of several edits gives the
prompts whose closest fact is the same that fact's demonstrations). IKE's is its ~350 tokens of
demonstrations and new fact, in front of a ~25-token question. In the teacher_forced protocol the wrapper
(`EditedHFLM._teacher_forced`) then answers that edit's requests with `shared_prefix_answers`: the prefix
runs once, its key/value cache is kept, and only each question and its target run on top of it, batched. The answers are those of
`teacher_forcing.teacher_forced_answers` on the full prompts (same tokens; up to float rounding).

The prompts of an edit are grouped together instead of being batched across cases (`cross_case_batch`
still sets how many cases share a chunk; `batch_size` how many questions run on one copy of the cache).
Measured with IKE on the default model, CPU, one thread, 6 cases of 9 requests: 11.8 s per case
batched across cases in full, 3.2 s with the prefix cache, with the same 54 answers.
Prompts whose tokens do not start with the prefix's own tokens (a token merged across the cut),
models that return no cache, and the benchmark's naive mode answer the full prompts instead.
"""

from __future__ import annotations

import copy

import torch

from bizsre_tasks.editing.common import (
    PromptTargetBatch,
    context_length,
    encode_prompt,
    encode_rows,
    length_sorted_batches,
    naive_mode,
    pad_rows,
)
from bizsre_tasks.editing.model_cache import cache_argument, returned_cache
from bizsre_tasks.wrapper.teacher_forcing import (
    argmax_answers,
    argmax_at_targets,
    predicted_tokens,
)


def shared_prefix_groups(prompts: list[str], prefixes: list[str | None]) -> dict[str, list[int]]:
    """Positions of `prompts` grouped by the shared prefix declared for each (None: none).

    A prefix that one of its prompts does not start with forms no group: those prompts are answered in full.
    """
    groups: dict[str, list[int]] = {}
    for position, prefix in enumerate(prefixes):
        if prefix:
            groups.setdefault(prefix, []).append(position)
    return {prefix: positions for prefix, positions in groups.items() if all(prompts[p].startswith(prefix) for p in positions)}


@torch.no_grad()
def shared_prefix_answers(model, tokenizer, prefix: str, prompts: list[str], target_texts: list[str], batch_size: int = 8) -> list[str]:
    """Argmax answers at the gold target positions for `prefix + prompt`, computing the prefix once."""
    device = next(model.parameters()).device
    # Prompts past the context lose their beginning (then no row starts with the prefix: no cache).
    rows = encode_rows(tokenizer, [prefix + prompt for prompt in prompts], target_texts, context_length(model))
    groups = length_sorted_batches(rows, batch_size)
    batches = [pad_rows([rows[i] for i in members], tokenizer.pad_token_id, device) for members in groups]
    prefix_ids = encode_prompt(tokenizer, prefix)
    cache, cut = None, 0
    if batches and all(_starts_with(batch, prefix_ids) for batch in batches):
        cache, cut = prefix_cache(model, prefix_ids, device)
    answers = [""] * len(prompts)
    for members, batch in zip(groups, batches):
        tokens = predicted_tokens(model, batch) if cache is None else _tokens_after_cache(model, batch, cache, cut)
        for i, answer in zip(members, argmax_answers(tokenizer, tokens, batch)):
            answers[i] = answer
    return answers


def _starts_with(batch: PromptTargetBatch, prefix_ids: list[int]) -> bool:
    """Whether every row's prompt tokens begin with the prefix's own tokens (no token spans the cut)."""
    width = len(prefix_ids)
    if min(batch.prompt_lengths) < width:
        return False
    expected = torch.tensor(prefix_ids, device=batch.input_ids.device)
    return bool((batch.input_ids[:, :width] == expected).all())


def _cache(model, ids: list[int], device):
    outputs = model.base_model(input_ids=torch.tensor([ids], device=device), use_cache=True)
    return returned_cache(outputs)


def prefix_cache(model, prefix_ids: list[int], device):
    """The key/value cache of all but the last of `prefix_ids` (the rows then predict from the prefix's last
    token on themselves), and that cut; (None, 0) when there is nothing to cache or the model keeps no cache."""
    cut = len(prefix_ids) - 1
    if cut <= 0 or naive_mode():
        return None, 0
    cache = _cache(model, prefix_ids[:cut], device)
    return (cache, cut) if cache is not None else (None, 0)


def hidden_after_cache(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache, cut: int) -> torch.Tensor:
    """Final hidden states of the columns from `cut` on of rows that all start with the cached tokens, run
    over a copy of the cache; column j of the result is column `cut + j` of the full rows."""
    past = copy.deepcopy(cache)  # the forward appends to the cache it is given
    past.batch_repeat_interleave(input_ids.shape[0])
    outputs = model.base_model(input_ids=input_ids[:, cut:], attention_mask=attention_mask, use_cache=True, **cache_argument(model.base_model, past))
    return outputs.last_hidden_state


def _tokens_after_cache(model, batch: PromptTargetBatch, cache, cut: int) -> torch.Tensor:
    """Argmax tokens at the target positions, running only the columns from `cut` on over a copy of the cache."""
    hidden = hidden_after_cache(model, batch.input_ids, batch.attention_mask, cache, cut)
    # Padded target slots hold position 0 (masked); real ones lie at or after the cut.
    return argmax_at_targets(model, hidden, (batch.positions - cut).clamp(min=0), batch.target_mask)
