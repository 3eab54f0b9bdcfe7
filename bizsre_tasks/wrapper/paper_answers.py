"""`protocol=paper` answers: the argmax after each of the paper code's prompts (`tasks/paper_protocol.py`
builds the prompts, golds and variants), the prompts of all questions batched."""

from __future__ import annotations

import torch

from bizsre_tasks.editing.common import context_length, encode_prompt, hidden_states, left_truncate
from bizsre_tasks.editing.tensors.head_softmax import head_argmax
from bizsre_tasks.tasks.paper_protocol import SEED_MAX_LENGTH, paper_prompts, variant
from bizsre_tasks.wrapper.prefix_cache import hidden_after_cache, prefix_cache


def _prompt_ids(tokenizer, prompt: str, prefix: str, limit: int | None) -> list[int]:
    """The seed's truncated prompt tokens; text an in-context method puts in front (`prefix`) is not
    counted in the seed's 30 tokens and is cut from the left if the whole does not fit the context."""
    ids = tokenizer(prompt, truncation=True, max_length=SEED_MAX_LENGTH)["input_ids"]
    if not prefix:
        return ids
    if len(tokenizer(prompt)["input_ids"]) > SEED_MAX_LENGTH:
        bos = tokenizer.bos_token_id
        prompt = tokenizer.decode(ids[1:] if bos is not None and ids and ids[0] == bos else ids)
    ids = tokenizer(prefix + prompt)["input_ids"]
    return left_truncate(ids, limit, tokenizer.bos_token_id) if limit else ids


def shared_rows(rows: list[list[int]], owners: list[int]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Rows to run and, for every row, (run row, position) of its last token. A question's prompts mostly
    extend one another token for token (the question, then one more target token each time); a causal
    model's output at the end of a shorter one is then its output at that position of the longest, so
    only the longest runs. Prompts whose re-tokenisation breaks the chain run on their own."""
    runs: list[list[int]] = []
    owner_runs: dict[int, list[int]] = {}
    where: list[tuple[int, int]] = [(0, 0)] * len(rows)
    for i in sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True):
        row = rows[i]
        for r in owner_runs.get(owners[i], []):
            if runs[r][: len(row)] == row:
                where[i] = (r, len(row) - 1)
                break
        else:
            owner_runs.setdefault(owners[i], []).append(len(runs))
            where[i] = (len(runs), len(row) - 1)
            runs.append(row)
    return runs, where


@torch.no_grad()
def argmax_at(model, rows: list[list[int]], positions: list[list[int]], pad_id: int | None, batch_size: int,
              prefix_ids: list[int] | None = None) -> list[list[int]]:
    """The argmax token after `positions[r]` of each row of token ids; rows of similar length are batched
    (right padding) and the head runs at the asked positions only. `prefix_ids`: tokens every row starts
    with (an in-context method's demonstrations); they run once and the rows run on top of their cache."""
    device = next(model.parameters()).device
    pad_id = pad_id if pad_id is not None else 0
    cache, cut = prefix_cache(model, prefix_ids, device) if prefix_ids else (None, 0)
    tokens: list[list[int]] = [[] for _ in rows]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        members = order[start : start + batch_size]
        width = len(rows[members[0]])
        input_ids = torch.full((len(members), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(members), width), dtype=torch.long)
        for b, i in enumerate(members):
            input_ids[b, : len(rows[i])] = torch.tensor(rows[i])
            mask[b, : len(rows[i])] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        if cache is None:
            hidden = hidden_states(model, input_ids, mask)
        else:
            hidden = hidden_after_cache(model, input_ids, mask, cache, cut)
        batch_index = torch.tensor([b for b, i in enumerate(members) for _ in positions[i]], device=device)
        position_index = torch.tensor([p - cut for i in members for p in positions[i]], device=device)
        best = head_argmax(model, hidden[batch_index, position_index]).tolist()
        for i in members:
            tokens[i], best = best[: len(positions[i])], best[len(positions[i]) :]
    return tokens


def _shared_prefix(tokenizer, prefix: str, runs: list[list[int]]) -> list[int] | None:
    """The prefix's own tokens when every row starts with them (no token merged across the cut, nothing cut
    off the front for length), else None: those rows then run in full."""
    if not prefix:
        return None
    ids = encode_prompt(tokenizer, prefix)
    return ids if all(len(run) > len(ids) and run[: len(ids)] == ids for run in runs) else None


def paper_answers(
    model,
    tokenizer,
    questions: list[str],
    answers: list[str],
    variants: list[str],
    prefixes: list[str] | None = None,
    batch_size: int = 32,
) -> list[str]:
    """The seed's answer to each question: the argmax after each prompt of `paper_prompts` (the seed runs
    one forward pass per prompt; here a prompt that the tokens of a longer one extend is read off that
    one, `shared_rows`), the prompts of all questions batched. `prefixes`: text a method puts in front
    of each question."""
    prefixes = prefixes or [""] * len(questions)
    limit = context_length(model)
    rows: list[list[int]] = []
    owners: list[int] = []
    for n, (question, answer, name, prefix) in enumerate(zip(questions, answers, variants, prefixes)):
        for prompt in paper_prompts(tokenizer, question, answer, variant(name)):
            rows.append(_prompt_ids(tokenizer, prompt, prefix, limit))
            owners.append(n)
    runs, where = shared_rows(rows, owners)
    positions: list[list[int]] = [[] for _ in runs]
    for run, position in where:
        positions[run].append(position)
    positions = [sorted(set(p)) for p in positions]
    # Rows grouped by the text in front of their question: IKE's ~1,300 tokens of demonstrations then run
    # once per case instead of once per row.
    run_prefix = {run: prefixes[owner] for owner, (run, _) in zip(owners, where)}
    groups: dict[str, list[int]] = {}
    for run in range(len(runs)):
        groups.setdefault(run_prefix[run], []).append(run)
    predicted: list[list[int]] = [[] for _ in runs]
    for prefix, members in groups.items():
        member_runs = [runs[r] for r in members]
        tokens = argmax_at(model, member_runs, [positions[r] for r in members], tokenizer.pad_token_id, batch_size,
                           _shared_prefix(tokenizer, prefix, member_runs))
        for r, row_tokens in zip(members, tokens):
            predicted[r] = row_tokens
    per_question: list[list[int]] = [[] for _ in questions]
    for owner, (run, position) in zip(owners, where):
        per_question[owner].append(predicted[run][positions[run].index(position)])
    return [variant(name).normalise(tokenizer.decode(ids, skip_special_tokens=True)) for ids, name in zip(per_question, variants)]
