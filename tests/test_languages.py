"""The languages table: one entry per language, read by every consumer, with an explicit fallback."""

import logging

import pytest

from bizsre_tasks import languages
from bizsre_tasks.editing import demonstrations, kn, rome, scope_classifier
from bizsre_tasks.editing.kv import generated_corpus, second_moments
from bizsre_tasks.tasks import metrics, prompts

FAKE = languages.Language(
    "xx", "Testish",
    prompt_template="Q-xx {question} A-xx:",
    tokenization=languages.CHARACTERS,
    articles=("zz",),
    script=r"[\u16a0-\u16f0]",  # runes
    prefix_seeds=("Seedxx",),
    prefix_joiner=" | ",
    reference_questions=("Reference question xx?",),
    fact_label="Fact-xx: ",
    text_starts=("Startxx",),
    question_words=("Whoxx",),
)


@pytest.fixture
def fake_language(monkeypatch):
    monkeypatch.setitem(languages.LANGUAGES, "xx", FAKE)
    languages.reset()
    yield FAKE
    languages.reset()


@pytest.fixture
def fresh_table():
    languages.reset()
    yield
    languages.reset()


def test_every_consumer_reads_the_table(fake_language):
    assert prompts.prompt_template("xx") == "Q-xx {question} A-xx:"
    assert prompts.build_prompt("nq question: who?", "xx") == "Q-xx who? A-xx:"
    assert metrics.tokenization_rule("xx") == languages.CHARACTERS
    assert metrics.normalize_answer("zz cat", "xx") == "cat"
    assert rome.prefix_seeds("xx") == (["Seedxx"], " | ")
    assert kn.reference_questions("xx") == ["Reference question xx?"]
    assert demonstrations.fact_line("q?", "a", "xx").startswith("Fact-xx: q?")
    assert second_moments._guess_lang("ᚠᚢᚦ?") == "xx"
    starts = generated_corpus.starts_for("xx")
    assert "Startxx" in starts and "Q-xx Whoxx" in starts
    assert scope_classifier.question_from_prompt("Q-xx who is it? A-xx:") == "who is it?"


def test_bizsre_languages_have_complete_entries(fresh_table, caplog):
    with caplog.at_level(logging.WARNING, logger="bizsre_tasks.languages"):
        for code in languages.PAIR:
            entry = languages.get(code)
            assert all(getattr(entry, name) for name in languages.TEXT_FIELDS)
    assert caplog.records == []


def test_language_without_entry_warns_once_and_falls_back(fresh_table, caplog):
    with caplog.at_level(logging.WARNING, logger="bizsre_tasks.languages"):
        template = prompts.prompt_template("qq")
        seeds = rome.prefix_seeds("qq")
        questions = kn.reference_questions("qq")
        line = demonstrations.fact_line("q?", "a", "qq")
        rule = metrics.tokenization_rule("qq")
    english = languages.LANGUAGES["en"]
    assert template == english.prompt_template
    assert seeds == (list(english.prefix_seeds), english.prefix_joiner)
    assert questions == list(english.reference_questions)
    assert line.startswith(english.fact_label)
    assert rule == languages.WHITESPACE
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1, warnings
    assert "'qq'" in warnings[0] and "English" in warnings[0]


def test_partial_entry_names_the_missing_fields(fresh_table, caplog):
    with caplog.at_level(logging.WARNING, logger="bizsre_tasks.languages"):
        assert rome.prefix_seeds("de")[0] == list(languages.LANGUAGES["en"].prefix_seeds)
        kn.reference_questions("de")
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1, warnings
    assert "'de'" in warnings[0] and "prefix_seeds" in warnings[0] and "English" in warnings[0]
    assert "prompt_template" not in warnings[0]  # German has its own


def test_script_guess_tries_kana_before_han():
    assert second_moments._guess_lang("東京はどこですか") == "ja"
    assert second_moments._guess_lang("东京在哪里") == "zh"
    assert second_moments._guess_lang("Где Москва?") == "ru"
    assert second_moments._guess_lang("Where is it?") == "en"


def test_counterpart_is_the_other_language_of_the_pair():
    assert languages.counterpart("en") == "zh"
    assert languages.counterpart("zh") == "en"
    assert languages.counterpart("de") == "en"
