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

The variants are data (`VARIANTS`, chosen per split by the tasks); the wrapper's `wrapper/paper_answers.py` computes
the answers, the tasks' scoring calls `paper_gold`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


def split_rewrite(question: str, rewritten: str) -> str:
    """The text a method's `rewrite_prompt` put in front of the question ('' when none)."""
    if not rewritten.endswith(question):
        raise ConfigurationError("protocol=paper needs a method whose prompt rewrite only puts text in front of the question")
    return rewritten[: len(rewritten) - len(question)]
