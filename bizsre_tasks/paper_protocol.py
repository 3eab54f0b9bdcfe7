"""`protocol=paper`: the evaluation of the paper's code (krystalan/Bi_ZsRE, an EasyEdit fork), redone here.

What the seed does, per question (its `easyeditor/evaluate/evaluate.py` and `portability_evaluate.py`,
the Llama/Baichuan branch; `evaluate.py` at the top level scores):
- the prompt is the raw question field (no template; English locality keeps `nq question: `);
- the target is the tokenizer's encoding of the answer *with* special tokens, cut to 30 tokens (the
  hparams' `max_length`); only a leading unknown token is dropped, so a leading BOS stays;
- the model reads the bare question, then the question joined to the decoding of the first i target
  tokens (special tokens kept as text, e.g. `<bos>`), for i = 1 .. len(target) - 1; every prompt is
  re-tokenised and cut to its first 30 tokens; the argmax at each prompt's last position, all decoded
  together with special tokens skipped, is the answer;
- reliability, generality, locality: the join is one space (also before Chinese); the gold is the
  decoded target. Portability: the target encodes `' ' + answer`, the join is empty, the gold is the
  per-token decodings concatenated, re-encoded and decoded, and answer and gold are lower-cased and
  stripped.
Scoring (`metrics.seed_token_scores`) compares token ids of one scoring tokenizer.

The variants are data (`VARIANTS`, chosen per split by the tasks); the wrapper calls `paper_answers`,
the tasks' scoring calls `paper_gold`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bizsre_tasks.editing.common import context_length, encode_prompt, hidden_states, left_truncate
from bizsre_tasks.editing.head_softmax import head_argmax
from bizsre_tasks.editing.prefix_cache import hidden_after_cache, prefix_cache
from bizsre_tasks.errors import ConfigurationError

# The seed's hyperparameter classes default `max_length` to 30 and its evaluation tokenises prompts and
# targets with `truncation=True, max_length=hparams.max_length` (right side: a long prompt loses its end).
SEED_MAX_LENGTH = 30


@dataclass(frozen=True)
class PaperVariant:
    """How the seed builds one kind of question's target, prompts and gold."""

    target_prefix: str  # put before the answer when encoding the target
    joiner: str  # between the question and the decoded target prefix
    drop_leading_unk: bool  # the only special token the seed removes from the target
    gold_from_pieces: bool  # gold = per-token decodings concatenated (portability), else the decoded target
    normalise: Callable[[str], str]  # applied to both answer and gold


def _keep(text: str) -> str:
    return text


def _lower_strip(text: str) -> str:
    return text.lower().strip()


VARIANTS: dict[str, PaperVariant] = {
    # compute_rewrite_or_rephrase_quality / compute_locality_quality
    "edit": PaperVariant(target_prefix="", joiner=" ", drop_leading_unk=True, gold_from_pieces=False, normalise=_keep),
    # compute_portability_quality
    "portability": PaperVariant(target_prefix=" ", joiner="", drop_leading_unk=False, gold_from_pieces=True, normalise=_lower_strip),
}


def variant(name: str) -> PaperVariant:
    if name not in VARIANTS:
        raise ValueError(f"unknown paper-protocol variant {name!r}; expected one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def target_ids(tokenizer, answer: str, kind: PaperVariant) -> list[int]:
    ids = tokenizer(kind.target_prefix + answer, truncation=True, max_length=SEED_MAX_LENGTH)["input_ids"]
    if kind.drop_leading_unk and ids and tokenizer.unk_token_id is not None and ids[0] == tokenizer.unk_token_id:
        ids = ids[1:]
    return ids


def paper_prompts(tokenizer, question: str, answer: str, kind: PaperVariant) -> list[str]:
    """The bare question, then the question + joiner + the decoded first i target tokens (i >= 1, the
    last target token never fed): as many prompts as target tokens, at least one."""
    ids = target_ids(tokenizer, answer, kind)
    return [question] + [question + kind.joiner + tokenizer.decode(ids[:i]) for i in range(1, len(ids))]


def paper_gold(tokenizer, answer: str, kind: PaperVariant) -> str:
    """The string the seed scores the answer against, built with the model's tokenizer."""
    ids = target_ids(tokenizer, answer, kind)
    if kind.gold_from_pieces:
        joined = "".join(tokenizer.decode([token]) for token in ids)
        gold = tokenizer.decode(tokenizer(joined)["input_ids"], skip_special_tokens=True)
    else:
        gold = tokenizer.decode(ids, skip_special_tokens=True)
    return kind.normalise(gold)


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


def split_rewrite(question: str, rewritten: str) -> str:
    """The text a method's `rewrite_prompt` put in front of the question ('' when none)."""
    if not rewritten.endswith(question):
        raise ConfigurationError("protocol=paper needs a method whose prompt rewrite only puts text in front of the question")
    return rewritten[: len(rewritten) - len(question)]


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
