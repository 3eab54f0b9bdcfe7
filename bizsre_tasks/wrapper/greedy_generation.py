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
"""

from __future__ import annotations

import torch

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
) -> torch.Tensor:
    """Token ids of shape (rows, prompt + generated columns), as `model.generate` returns them."""
    rows, prompt_length = input_ids.shape
    eos_tensor = torch.tensor(sorted(eos_token_ids(model, tokenizer)), device=input_ids.device, dtype=input_ids.dtype)
    output = input_ids.new_full((rows, max(max_length, prompt_length)), pad_token_id)
    output[:, :prompt_length] = input_ids
    active = torch.arange(rows, device=input_ids.device)
    mask = attention_mask.to(input_ids.device).long()
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    step_ids, cache, length = input_ids, None, prompt_length
    while length < max_length and len(active):
        # `past_key_values`, as everywhere in the project (transformers 5.2x maps it to `cache`, with a warning)
        outputs = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                        use_cache=True, logits_to_keep=1)
        cache = outputs.past_key_values
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
