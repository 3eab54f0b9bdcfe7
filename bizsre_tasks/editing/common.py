"""Tokenisation and forward-pass helpers shared by the editing methods and teacher forcing.

The vocabulary (262k for Gemma) makes the LM head the most expensive part of a forward pass, so
these helpers run the transformer body once and apply the head only at the positions asked for.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from bizsre_tasks.editing.base import EditFailedError
from bizsre_tasks.editing.model_cache import given_cache

# Config attributes that hold a model's context length, in the order lm-eval's HFLM reads them.
CONTEXT_LENGTH_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")


@dataclass
class PromptTargetBatch:
    """Right-padded prompt+target sequences; `positions[b, t]` is where target token t of row b is predicted."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_ids: torch.Tensor  # (B, T) padded with -100
    positions: torch.Tensor  # (B, T) index of the logit predicting each target token (0 where padded)
    prompt_lengths: list[int]
    truncated: list[int] = field(default_factory=list)  # rows whose prompt was left-truncated to fit

    @property
    def target_mask(self) -> torch.Tensor:
        return self.target_ids != -100


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt tokens as the model sees them in evaluation (with its BOS token when it uses one)."""
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_target(tokenizer, target_text: str) -> list[int]:
    """Target tokens without special tokens (a BOS inside the target would be trained as an answer)."""
    ids = tokenizer(target_text, add_special_tokens=False)["input_ids"]
    return ids


def context_length(model) -> int | None:
    """The model's context window from its config; None when the config declares none."""
    config = getattr(model.config, "text_config", None) or model.config
    for attr in CONTEXT_LENGTH_ATTRS:
        value = getattr(config, attr, None)
        if value:
            return int(value)
    return None


def left_truncate(prompt_ids: list[int], room: int, bos_id: int | None) -> list[int]:
    """The last `room` prompt tokens, keeping a leading BOS (Gemma, for one, degrades without it)."""
    if len(prompt_ids) <= room:
        return prompt_ids
    if room < 1:
        raise ValueError(f"no room left for the prompt ({room} of the context after the target)")
    if bos_id is not None and prompt_ids[0] == bos_id and room >= 2:
        return [bos_id] + prompt_ids[len(prompt_ids) - room + 1 :]
    return prompt_ids[len(prompt_ids) - room :]


@dataclass
class EncodedRow:
    """One prompt+target pair as token ids, before padding."""

    prompt_ids: list[int]
    target_ids: list[int]
    truncated: bool = False  # the prompt lost its beginning to fit the context

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)


def encode_rows(tokenizer, prompts: list[str], target_texts: list[str], max_length: int | None = None) -> list[EncodedRow]:
    """Token ids of every prompt+target pair; with `max_length`, prompts are left-truncated so that every row fits it."""
    rows = []
    for prompt, target_text in zip(prompts, target_texts):
        prompt_ids = encode_prompt(tokenizer, prompt)
        target_ids = encode_target(tokenizer, target_text)
        if not target_ids:
            raise ValueError(f"target {target_text!r} tokenises to nothing")
        truncated = max_length is not None and len(prompt_ids) + len(target_ids) > max_length
        if truncated:
            if len(target_ids) >= max_length:
                raise ValueError(f"target {target_text!r} has {len(target_ids)} tokens, the model's context only {max_length}")
            prompt_ids = left_truncate(prompt_ids, max_length - len(target_ids), tokenizer.bos_token_id)
        rows.append(EncodedRow(prompt_ids, target_ids, truncated))
    return rows


def pad_rows(rows: list[EncodedRow], pad_id: int | None, device: torch.device | str = "cpu") -> PromptTargetBatch:
    """Encoded rows right-padded into one batch."""
    pad_id = pad_id if pad_id is not None else 0
    width = max(len(row) for row in rows)
    target_width = max(len(row.target_ids) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    target_ids = torch.full((len(rows), target_width), -100, dtype=torch.long)
    positions = torch.zeros((len(rows), target_width), dtype=torch.long)
    for b, row in enumerate(rows):
        prompt_length, target_length = len(row.prompt_ids), len(row.target_ids)
        input_ids[b, : len(row)] = torch.tensor(row.prompt_ids + row.target_ids)
        attention_mask[b, : len(row)] = 1
        target_ids[b, :target_length] = torch.tensor(row.target_ids)
        positions[b, :target_length] = torch.arange(prompt_length - 1, prompt_length - 1 + target_length)
    return PromptTargetBatch(
        input_ids.to(device),
        attention_mask.to(device),
        target_ids.to(device),
        positions.to(device),
        [len(row.prompt_ids) for row in rows],
        [b for b, row in enumerate(rows) if row.truncated],
    )


def build_batch(
    tokenizer, prompts: list[str], target_texts: list[str], device: torch.device | str = "cpu", max_length: int | None = None
) -> PromptTargetBatch:
    """Prompt+target rows; with `max_length`, prompts are left-truncated so that every row fits it."""
    return pad_rows(encode_rows(tokenizer, prompts, target_texts, max_length), tokenizer.pad_token_id, device)


def length_sorted_batches(rows: list[EncodedRow], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length, longest first, so that batches carry little
    padding (rows in arrival order padded a batch-8 pass to 1.8x the arithmetic of one row at a time)
    and the first batch shows the peak memory."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _sequence_end(args: tuple, kwargs: dict) -> int:
    """One past the last position a forward pass of the transformer body reaches."""
    position_ids = kwargs.get("position_ids")
    if position_ids is not None and position_ids.numel():
        return int(position_ids.max()) + 1
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    embeds = kwargs.get("inputs_embeds")
    length = 0
    if input_ids is not None:
        length = input_ids.shape[-1]
    elif embeds is not None:
        length = embeds.shape[-2]
    past = given_cache(kwargs)
    past_length = past.get_seq_length() if hasattr(past, "get_seq_length") else 0
    return int(past_length) + int(length)


@contextmanager
def context_limit(model, max_length: int):
    """Inside, a forward pass beyond `max_length` positions raises EditFailedError.

    Methods add text of their own around the edit prompt (ROME's prefixes). Past the context a model
    with learned positions (GPT-2) stops with an IndexError deep in torch, and one with rotary
    positions degrades silently; either way the edit is not the one asked for, so it fails cleanly.
    """

    def check(module, args, kwargs):
        end = _sequence_end(args, kwargs)
        if end > max_length:
            raise EditFailedError(f"the edit's input reaches {end} positions, beyond the model's context of {max_length}")

    handle = model.base_model.register_forward_pre_hook(check, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Final hidden states (after the final norm) without computing logits."""
    outputs = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def gather_positions(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """`states` (B, L, D) at `positions` (B, T) -> (B, T, D)."""
    return states.gather(1, positions.unsqueeze(-1).expand(-1, -1, states.shape[-1]))


def logits_at(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) only at `positions` (B, T)."""
    hidden = hidden_states(model, input_ids, attention_mask)
    if naive_mode():
        # Textbook path for the benchmark: the head over every position, then pick.
        return gather_positions(head_logits(model, hidden), positions)
    return head_logits(model, gather_positions(hidden, positions))


def mean_sequence_nll(target_log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the target tokens (B, T), `mask` where real -> NLL averaged per sequence, then over the batch."""
    return (-(target_log_probs * mask).sum(1) / mask.sum(1)).mean()


def mean_target_nll(logits: torch.Tensor, batch: PromptTargetBatch) -> torch.Tensor:
    """`mean_sequence_nll` of the target tokens under `logits` (B, T, V) at the target positions."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, batch.target_ids.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return mean_sequence_nll(picked, batch.target_mask)


def target_nll(model, batch: PromptTargetBatch) -> torch.Tensor:
    """Mean negative log-likelihood of the target tokens, averaged per sequence then over the batch."""
    return mean_target_nll(logits_at(model, batch.input_ids, batch.attention_mask, batch.positions), batch)


def find_subject_last_token(tokenizer, prompt: str, subject: str) -> int:
    """Index (in the prompt's tokens) of the subject's last token; the prompt's last token if absent.

    Works on character offsets, so it is independent of how the tokenizer merges the subject.
    """
    encoded = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    start = prompt.rfind(subject) if subject else -1
    if start < 0:
        start = prompt.lower().rfind(subject.lower()) if subject else -1
    if start < 0:
        return len(offsets) - 1
    end = start + len(subject)
    last = None
    for index, (token_start, token_end) in enumerate(offsets):
        if token_end > token_start and token_start < end and token_end > start:
            last = index
    return last if last is not None else len(offsets) - 1


_NAIVE: dict = {"on": False, "model": None}


def naive_mode() -> bool:
    """True inside `naive(model)`: the benchmark's textbook comparison path.

    Methods check it to skip their shortcuts (activation reuse below the edited layer); the helpers
    here compute the LM head everywhere and give gradients to every weight.
    """
    return _NAIVE["on"]


class naive:
    def __init__(self, model):
        self.model = model

    def __enter__(self):
        _NAIVE.update(on=True, model=self.model)
        return self

    def __exit__(self, *exc):
        _NAIVE.update(on=False, model=None)
        return False


def requires_grad_only(parameters: list[torch.Tensor]):
    """Context: gradients only for `parameters` (everything else in the model stays frozen)."""
    return _GradScope(parameters)


class _GradScope:
    def __init__(self, parameters):
        # In naive mode every weight gets a gradient, as a textbook fine-tuning loop would do.
        self.parameters = list(parameters)
        if naive_mode() and self.parameters:
            model_parameters = _NAIVE["model"].parameters() if _NAIVE["model"] is not None else []
            self.parameters += [p for p in model_parameters if all(p is not q for q in self.parameters)]

    def __enter__(self):
        for parameter in self.parameters:
            parameter.requires_grad_(True)
        return self

    def __exit__(self, *exc):
        for parameter in self.parameters:
            parameter.requires_grad_(False)
            parameter.grad = None
        return False
