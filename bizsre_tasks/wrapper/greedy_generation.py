"""Greedy generation that lets finished rows go (`protocol=generate`).

The harness's HF model batches the questions and calls `model.generate`, which keeps every row of a batch
in every decoding step until the last row ends, feeding pad tokens to the finished ones. On a CPU a step
costs about as much for 9 rows as for the one row still going (the 262k-row head is read from memory
once per step either way; measured: 0.28 s for 9 rows, 0.10 s for one), and Bi-ZsRE answers are mostly a
few tokens while one Chinese answer of a batch often runs to `max_gen_toks`. `greedy_generate` runs the
same greedy decoding and drops a row from the batch (and from the key/value cache) as soon as it is done,
so the steps after that cost only the rows still going.

Same decisions as `generate` with `do_sample=False`: position ids from the attention mask, the logits of
the last position in float32, the logits processors in order, argmax; a row is done when it emits an
end-of-sequence token, and its later columns hold the pad token. Rows whose continuation already holds a
stop string (lm-eval's `until`) are let go too: the harness cuts the text at the first stop string, so
what they would generate after it is never read. The answers are those of `generate` up to float rounding
(a step's matrix products run over fewer rows); benchmarks/generation_speed.md has the comparison.

Rows that all begin with one long prefix (IKE's demonstrations, `AppliedEdit.prefix_for`) can start from
that prefix's key/value cache (`prefix`, made once by `prefix_cache.prefix_cache`): each row then runs only
its own columns after the cut. The prefix is removed from the middle of each left-padded row, so a row's
padding now sits between the cached prefix and its question; positions come from the attention mask as
before, so only a model attending by cache index (a sliding window shorter than the rows) would see a
difference, and `cached_prefix` declines those.
"""

from __future__ import annotations

import copy

import torch

from bizsre_tasks.editing.model_cache import cache_argument, returned_cache
from bizsre_tasks.wrapper.prefix_cache import prefix_cache

# Generation options this loop reproduces; any other (sampling, beams, penalties...) goes to `generate`.
GREEDY_OPTIONS = frozenset({"attention_mask", "logits_processor", "do_sample", "temperature"})


def is_greedy(generation_kwargs: dict) -> bool:
    """Whether `generation_kwargs` ask for plain greedy decoding that `greedy_generate` reproduces."""
    if set(generation_kwargs) - GREEDY_OPTIONS:
        return False
    if generation_kwargs.get("do_sample"):
        return False
    return not generation_kwargs.get("temperature")


def eos_token_ids(model, tokenizer) -> set[int]:
    """The tokens that end a row: the generation config's (int or list), else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


@torch.no_grad()
def greedy_generate(
    model,
    tokenizer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_length: int,
    stop: list[str],
    pad_token_id: int,
    logits_processor=None,
    prefix: tuple | None = None,
) -> torch.Tensor:
    """Token ids of shape (rows, prompt + generated columns), as `model.generate` returns them.

    `prefix`: (cache, cut) from `cached_prefix`: every row's first `cut` real tokens are in that cache."""
    rows, prompt_length = input_ids.shape
    eos_tensor = torch.tensor(sorted(eos_token_ids(model, tokenizer)), device=input_ids.device, dtype=input_ids.dtype)
    output = input_ids.new_full((rows, max(max_length, prompt_length)), pad_token_id)
    output[:, :prompt_length] = input_ids
    active = torch.arange(rows, device=input_ids.device)
    mask = attention_mask.to(input_ids.device).long()
    step_ids, cache, length, cut = input_ids, None, prompt_length, 0
    if prefix is not None:
        cache, cut = copy.deepcopy(prefix[0]), prefix[1]  # the forward appends to the cache it is given
        cache.batch_repeat_interleave(rows)
        step_ids, suffix_mask = without_prefix(input_ids, mask, cut)
        mask = torch.cat([mask.new_ones((rows, cut)), suffix_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, cut:]
    while length < max_length and len(active):
        outputs = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                        **cache_argument(model, cache))
        cache = returned_cache(outputs)
        scores = outputs.logits[:, -1, :].to(dtype=torch.float32)
        for processor in logits_processor or []:
            scores = processor(output[active, :length], scores)
        next_tokens = scores.argmax(dim=-1)
        output[active, length] = next_tokens
        length += 1
        done = torch.isin(next_tokens, eos_tensor)  # all False when there is no end token
        if stop:
            texts = tokenizer.batch_decode(output[active, prompt_length:length])
            done |= torch.tensor([any(s in text for s in stop) for text in texts], device=done.device)
        keep = (~done).nonzero().squeeze(1)
        if len(keep) < len(active):
            if len(keep) == 0:
                break
            cache.batch_select_indices(keep)
            active, mask, positions, next_tokens = active[keep], mask[keep], positions[keep], next_tokens[keep]
        step_ids = next_tokens.unsqueeze(1)
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        positions = positions[:, -1:] + 1
    return output[:, :length]


def _first_real_columns(mask: torch.Tensor) -> torch.Tensor | None:
    """Each row's first unpadded column, or None unless every row is left-padded (zeros, then ones)."""
    starts = (mask == 0).sum(dim=1)
    columns = torch.arange(mask.shape[1], device=mask.device)
    expected = (columns.unsqueeze(0) >= starts.unsqueeze(1)).long()
    return starts if bool((mask == expected).all()) else None


def without_prefix(input_ids: torch.Tensor, mask: torch.Tensor, cut: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`input_ids` and `mask` with each row's first `cut` real tokens removed (the padding stays in front)."""
    starts = _first_real_columns(mask)
    columns = torch.arange(input_ids.shape[1] - cut, device=input_ids.device).unsqueeze(0)
    source = columns + cut * (columns >= starts.unsqueeze(1)).long()
    return input_ids.gather(1, source), mask.gather(1, source)


@torch.no_grad()
def cached_prefix(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix_ids: list[int], max_length: int,
                  made: tuple | None = None):
    """(cache, cut) for `greedy_generate`'s `prefix` when every row is left-padded and its real tokens start
    with `prefix_ids`; None when they do not (a token merged across the cut, a truncated row), when the
    model keeps no cache, or when its sliding window is shorter than the rows will grow (a window counts
    cache slots, and the rows' padding would then shift what it covers). `made`: this prefix's (cache, cut)
    from an earlier batch, returned instead of running the prefix again."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(config, "sliding_window", None)
    if window and max_length > window:
        return None
    mask = attention_mask.to(input_ids.device).long()
    starts = _first_real_columns(mask)
    width = len(prefix_ids)
    if starts is None or width < 2 or int(starts.max()) + width > input_ids.shape[1]:
        return None
    columns = starts.unsqueeze(1) + torch.arange(width, device=input_ids.device).unsqueeze(0)
    if not bool((input_ids.gather(1, columns) == torch.tensor(prefix_ids, device=input_ids.device)).all()):
        return None
    if made is not None:
        return made
    cache, cut = prefix_cache(model, prefix_ids, input_ids.device)
    return (cache, cut) if cache is not None else None
