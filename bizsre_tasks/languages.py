"""The languages table: everything the package knows about a language, in one entry per language.

Every consumer reads its per-language data here: the prompt templates (`tasks.prompts`), the answer
tokenisation rule and articles (`tasks.metrics`), the script that tells a tab-separated question's
language (key statistics), ROME/MEMIT's prefix seeds and joiner, KN's reference questions, IKE/SERAC's
fact label, and the openings of the model-generated statistics corpus.

A language with no entry, or an entry without some field, gets the fallback named in `FALLBACK` (English
texts, whitespace tokenisation, no articles) and one warning naming the language and what it falls back
to. Adding a language is one entry below plus a test (docs/adding-a-language.md).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Answer tokenisation rules (see tasks.metrics).
WHITESPACE, JIEBA, CHARACTERS = "whitespace", "jieba", "characters"
RULES = (WHITESPACE, JIEBA, CHARACTERS)

# Fields whose absence falls back to the fallback language's value (with a warning).
TEXT_FIELDS = ("prompt_template", "prefix_seeds", "prefix_joiner", "reference_questions", "fact_label")


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    # `{question}` is replaced by the question; the answer is the model's continuation.
    prompt_template: str | None = None
    tokenization: str = WHITESPACE  # one of RULES
    articles: tuple[str, ...] = ()  # dropped before scoring (SQuAD convention)
    # Regex of characters only this language's text has; tried in table order (so Japanese kana before Han).
    script: str | None = None
    prefix_seeds: tuple[str, ...] | None = None  # ROME/MEMIT: words the generated context prefixes start from
    prefix_joiner: str | None = None  # ROME/MEMIT: what joins a prefix to the prompt
    reference_questions: tuple[str, ...] | None = None  # KN: unrelated questions (neurons firing on any question)
    fact_label: str | None = None  # IKE/SERAC: "New Fact: " line label
    # Generated statistics corpus: plain sentence openings and first words of questions (none: template alone).
    text_starts: tuple[str, ...] = ()
    question_words: tuple[str, ...] = ()


LANGUAGES: dict[str, Language] = {
    entry.code: entry
    for entry in (
        Language(
            "en", "English",
            prompt_template="Question: {question}\nAnswer:",
            articles=("a", "an", "the"),
            prefix_seeds=("The", "Therefore", "Because", "I", "You", "It"),
            prefix_joiner=". ",
            reference_questions=(
                "What is the capital of Canada?", "Who wrote the novel War and Peace?", "Which river flows through Cairo?",
                "What language is spoken in Brazil?", "When did the Second World War end?", "Who painted the Mona Lisa?",
                "What is the chemical symbol for gold?", "Which company makes the iPhone?", "In which country is Mount Fuji?",
                "What sport does Lionel Messi play?", "Who is the author of Hamlet?", "What is the largest planet in the solar system?",
            ),
            fact_label="New Fact: ",
            text_starts=("The", "In", "It was", "According to", "He was born in", "She is", "The company", "The city of",
                         "Many people", "During the", "This is", "After the"),
            question_words=("Who", "What", "Which", "When", "Where", "In which"),
        ),
        Language("ja", "Japanese", prompt_template="質問：{question}\n答え：", tokenization=CHARACTERS, script=r"[\u3040-\u30ff]"),
        Language(
            "zh", "Chinese",
            prompt_template="问题：{question}\n答案：",
            tokenization=JIEBA,
            script=r"[\u4e00-\u9fff]",
            prefix_seeds=("这", "因此", "因为", "我", "你", "它"),
            prefix_joiner="。",
            reference_questions=(
                "加拿大的首都是哪里？", "《战争与和平》的作者是谁？", "哪条河流经开罗？", "巴西说什么语言？",
                "第二次世界大战是什么时候结束的？", "谁画了《蒙娜丽莎》？", "金的化学符号是什么？", "哪家公司生产iPhone？",
                "富士山在哪个国家？", "梅西从事什么运动？", "《哈姆雷特》的作者是谁？", "太阳系中最大的行星是哪一颗？",
            ),
            fact_label="新事实：",
            text_starts=("这", "在", "根据", "他出生于", "她是", "该公司", "这座城市", "许多人", "在此期间", "这是", "之后", "中国"),
            question_words=("谁", "什么", "哪个", "何时", "哪里", "哪一年"),
        ),
        Language("ru", "Russian", prompt_template="Вопрос: {question}\nОтвет:", script=r"[\u0400-\u04ff]"),
        Language("de", "German", prompt_template="Frage: {question}\nAntwort:",
                 articles=("der", "die", "das", "den", "dem", "des", "ein", "eine", "einen", "einem", "einer", "eines")),
        Language("fr", "French", prompt_template="Question : {question}\nRéponse :", articles=("le", "la", "les", "l", "un", "une", "des")),
        Language("es", "Spanish", prompt_template="Pregunta: {question}\nRespuesta:",
                 articles=("el", "la", "los", "las", "un", "una", "unos", "unas")),
        # Written without spaces and no segmenter installed: scored by single characters.
        Language("th", "Thai", tokenization=CHARACTERS),
        Language("lo", "Lao", tokenization=CHARACTERS),
        Language("km", "Khmer", tokenization=CHARACTERS),
        Language("my", "Burmese", tokenization=CHARACTERS),
        Language("bo", "Tibetan", tokenization=CHARACTERS),
    )
}

FALLBACK = "en"
# The language pair of Bi-ZsRE: an edit in one is asked in the other (e.g. MEND's default aligned language).
PAIR = ("en", "zh")

_resolved: dict[str, Language] = {}


def get(code: str) -> Language:
    """The entry for `code`, with every missing text field filled from the fallback language.

    The first lookup of a language with no entry, or with missing fields, logs one warning naming it
    and what it falls back to."""
    if code in _resolved:
        return _resolved[code]
    fallback = LANGUAGES[FALLBACK]
    entry = LANGUAGES.get(code)
    if entry is None:
        entry = dataclasses.replace(fallback, code=code, name=code, tokenization=WHITESPACE, articles=(), script=None,
                                    text_starts=(), question_words=())
        logger.warning(
            "language '%s' has no entry in the languages table (bizsre_tasks/languages.py): it falls back to %s's prompt "
            "template and method texts (%s), whitespace tokenisation and no articles", code, fallback.name,
            ", ".join(TEXT_FIELDS[1:]),
        )
    else:
        missing = [name for name in TEXT_FIELDS if getattr(entry, name) is None]
        if missing:
            entry = dataclasses.replace(entry, **{name: getattr(fallback, name) for name in missing})
            if code != FALLBACK:
                logger.warning(
                    "language '%s' has no %s in the languages table (bizsre_tasks/languages.py): it falls back to %s's",
                    code, ", ".join(missing), fallback.name,
                )
    _resolved[code] = entry
    return entry


def reset() -> None:
    """Forget resolved entries (after the table is changed, e.g. in tests)."""
    _resolved.clear()


def with_templates() -> list[str]:
    """Codes of the languages that have a prompt template of their own, in table order."""
    return [code for code, entry in LANGUAGES.items() if entry.prompt_template is not None]


def guess_from_script(text: str) -> str:
    """The language of `text` by its script (table order), else the fallback; for data without a language tag."""
    for code, entry in LANGUAGES.items():
        if entry.script and re.search(entry.script, text):
            return code
    return FALLBACK


def counterpart(lang: str) -> str:
    """The other language of the Bi-ZsRE pair (the pair's first for a language outside it)."""
    return next(code for code in PAIR if code != lang)
