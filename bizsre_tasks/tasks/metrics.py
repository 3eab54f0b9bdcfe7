"""Language-aware answer normalisation, tokenisation, F1 and exact match.

English and other space-delimited languages follow the SQuAD convention: lower-case, strip
punctuation and articles, split on whitespace. Chinese is segmented with jieba after removing
punctuation and spaces. Languages written without spaces for which no segmenter is installed
(Thai, Japanese, ...) fall back to single characters. The rule and articles per language are the
languages table's (`bizsre_tasks/languages.py`); the rule can be overridden with `set_tokenization_rule`
or the environment variable `BIZSRE_TOKENIZATION` (for example `ja=characters,vi=whitespace`).

Every task's F1 and EM come from here; `tasks/task_docs.py` (`score`, called by `process_results`) picks
by protocol: `generate` -> `f1_score` / `exact_match` on these language-aware words; `teacher_forced` ->
`token_id_scores` (token ids of the scoring tokenizer); `paper` -> `seed_token_scores` (the paper code's
rules). Locality compares the post-edit answer with the pre-edit one, the other tasks with the dataset answer.
"""

from __future__ import annotations

import os
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

from bizsre_tasks import languages
from bizsre_tasks.languages import CHARACTERS, JIEBA, RULES, WHITESPACE  # noqa: F401  (the rule names, used here and by callers)

DEFAULT_RULE = WHITESPACE
TOKENIZATION_ENV = "BIZSRE_TOKENIZATION"
# Rules set at run time (`set_tokenization_rule`), over the languages table's.
_RULE_OVERRIDES: dict[str, str] = {}


def set_tokenization_rule(lang: str, rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown tokenization rule '{rule}' for language '{lang}'; choose one of {', '.join(RULES)}")
    _RULE_OVERRIDES[lang] = rule


def tokenization_rule(lang: str) -> str:
    overrides = os.environ.get(TOKENIZATION_ENV, "")
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        code, _, rule = item.partition("=")
        if code.strip() == lang:
            if rule.strip() not in RULES:
                raise ValueError(f"{TOKENIZATION_ENV}: unknown rule '{rule}' for '{lang}'; choose one of {', '.join(RULES)}")
            return rule.strip()
    base = lang.split("-")[0].lower()
    return _RULE_OVERRIDES.get(base) or languages.get(base).tokenization


def _is_punctuation(char: str) -> bool:
    return char in string.punctuation or unicodedata.category(char).startswith("P") or unicodedata.category(char).startswith("S")


def _strip_punctuation(text: str) -> str:
    return "".join(" " if _is_punctuation(char) else char for char in text)


def normalize_answer(text: str, lang: str) -> str:
    """Lower-case, punctuation removed, articles removed (where the language has a list), spaces collapsed."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = _strip_punctuation(text)
    words = text.split()
    articles = set(languages.get(lang).articles)
    return " ".join(word for word in words if word not in articles)


def _jieba_tokens(text: str) -> list[str]:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [token for token in jieba.lcut(text) if token.strip()]


def answer_tokens(text: str, lang: str) -> list[str]:
    normalized = normalize_answer(text, lang)
    rule = tokenization_rule(lang)
    if rule == WHITESPACE:
        return normalized.split()
    if rule == JIEBA:
        return _jieba_tokens(normalized.replace(" ", ""))
    return [char for char in normalized if not char.isspace()]


def _exact_text(text: str, lang: str) -> str:
    normalized = normalize_answer(text, lang)
    return normalized if tokenization_rule(lang) == WHITESPACE else normalized.replace(" ", "")


def exact_match(prediction: str, gold: str, lang: str) -> float:
    return float(_exact_text(prediction, lang) == _exact_text(gold, lang))


def multiset_f1(predicted: Sequence, gold: Sequence) -> float:
    """SQuAD-style F1 over token multisets; two empty sides agree, one empty side scores 0."""
    if not predicted or not gold:
        return float(len(predicted) == len(gold))
    overlap = sum((Counter(predicted) & Counter(gold)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, gold: str, lang: str) -> float:
    return multiset_f1(answer_tokens(prediction, lang), answer_tokens(gold, lang))


def token_id_scores(prediction: str, gold: str, tokenizer) -> dict[str, float]:
    """`protocol=teacher_forced`: F1 over the token ids of the scoring tokenizer, EM after stripping."""
    predicted_ids = tokenizer(prediction.strip(), add_special_tokens=False)["input_ids"]
    gold_ids = tokenizer(gold.strip(), add_special_tokens=False)["input_ids"]
    return {"f1": multiset_f1(predicted_ids, gold_ids), "em": float(prediction.strip() == gold.strip())}


def seed_token_scores(prediction: str, gold: str, tokenizer) -> dict[str, float]:
    """The paper code's scores (krystalan/Bi_ZsRE `evaluate.py`, `obtain_f1_and_em`) over the token ids
    of `tokenizer` (no special tokens): `f1` (harmonic mean; zero overlap scores 0 where the seed's
    current code divides by zero), `f1_as_published` (precision x recall, the formula of the seed's
    first release) and `em` (raw string equality, nothing stripped). As in the seed, two answers of no
    tokens score 1 everywhere and one side of no tokens scores 0."""
    predicted = tokenizer(prediction, add_special_tokens=False)["input_ids"]
    golden = tokenizer(gold, add_special_tokens=False)["input_ids"]
    if not predicted or not golden:
        agree = float(not predicted and not golden)
        return {"f1": agree, "f1_as_published": agree, "em": agree}
    overlap = sum((Counter(predicted) & Counter(golden)).values())
    precision, recall = overlap / len(predicted), overlap / len(golden)
    harmonic = 2 * precision * recall / (precision + recall) if overlap else 0.0
    return {"f1": harmonic, "f1_as_published": precision * recall, "em": float(prediction == gold)}
