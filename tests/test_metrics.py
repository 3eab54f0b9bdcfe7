"""F1/EM values computed by hand."""

from __future__ import annotations

import pytest

from bizsre_tasks.tasks import metrics


@pytest.mark.parametrize(
    "prediction, gold, lang, f1, em",
    [
        ("Paris", "Paris", "en", 1.0, 1.0),
        ("The Eiffel Tower!", "eiffel tower", "en", 1.0, 1.0),  # article and punctuation removed
        ("University of Michigan", "Michigan State University", "en", 2 * (2 / 3 * 2 / 3) / (4 / 3), 0.0),
        ("", "Paris", "en", 0.0, 0.0),  # empty prediction
        ("Paris", "", "en", 0.0, 0.0),  # empty gold
        ("", "", "en", 1.0, 1.0),
        ("the the", "a", "en", 1.0, 1.0),  # only articles: both normalise to empty
        ("cat cat cat", "cat", "en", 0.5, 0.0),  # p=1/3, r=1 -> 2*(1/3)/(4/3)
        ("cat", "cat cat", "en", 2 * 0.5 / 1.5, 0.0),  # p=1, r=1/2
        ("法语", "法语", "zh", 1.0, 1.0),
        ("法国", "法语", "zh", 0.0, 0.0),
        ("2006年", "2006年", "zh", 1.0, 1.0),
        ("2006", "2006年", "zh", 2 * 0.5 / 1.5, 0.0),  # jieba: [2006, 年] vs [2006]
        ("Christiane Cohendy的母语", "christiane cohendy 的母语。", "zh", 1.0, 1.0),  # case, spaces, punctuation
        ("", "", "zh", 1.0, 1.0),
    ],
)
def test_f1_em_hand_computed(prediction, gold, lang, f1, em):
    assert metrics.f1_score(prediction, gold, lang) == pytest.approx(f1)
    assert metrics.exact_match(prediction, gold, lang) == em


def test_chinese_mixed_script_tokens():
    assert metrics.answer_tokens("Christiane Cohendy的母语", "zh") == ["christianecohendy", "的", "母语"]
    assert metrics.answer_tokens("2006年", "zh") == ["2006", "年"]


def test_english_normalisation_squad_convention():
    assert metrics.normalize_answer("  The  Quick, brown fox.  ", "en") == "quick brown fox"


def test_characters_rule_for_unsegmented_scripts():
    # Thai has no installed segmenter: characters. "ภาษา" vs "ภาษาไทย": 4 shared chars, p=1, r=4/7.
    assert metrics.answer_tokens("ภาษา", "th") == ["ภ", "า", "ษ", "า"]
    assert metrics.f1_score("ภาษา", "ภาษาไทย", "th") == pytest.approx(2 * (4 / 7) / (1 + 4 / 7))


def test_whitespace_languages_and_articles():
    assert metrics.answer_tokens("Die Berliner Mauer", "de") == ["berliner", "mauer"]
    assert metrics.f1_score("Москва", "москва", "ru") == 1.0


def test_tokenization_override(monkeypatch):
    monkeypatch.setenv(metrics.TOKENIZATION_ENV, "xx=characters")
    assert metrics.answer_tokens("ab c", "xx") == ["a", "b", "c"]
    monkeypatch.setenv(metrics.TOKENIZATION_ENV, "xx=bogus")
    with pytest.raises(ValueError, match="unknown rule"):
        metrics.tokenization_rule("xx")


def test_set_tokenization_rule_rejects_unknown():
    with pytest.raises(ValueError):
        metrics.set_tokenization_rule("xx", "words")
