"""Prompt templates per language.

A template turns a question into the text the model continues; `{question}` is replaced by the
question. The answer is the first non-empty line of the continuation (`answer_lines`): generation
does not stop at a newline, since models often open their answer with one.
Templates can be overridden per language through model_args/metadata
(`prompt_template_en="Q: {question}\\nA:"`) or the environment variable `BIZSRE_PROMPT_TEMPLATE_<LANG>`.
The templates are the languages table's (`bizsre_tasks/languages.py`); a language without one uses the
fallback language's, with a warning.
"""

from __future__ import annotations

import os

from bizsre_tasks import languages

FALLBACK_LANGUAGE = languages.FALLBACK
# Generation stops only at the end-of-sequence token or `max_gen_toks` (see `answer_lines`).
STOP_SEQUENCES: list[str] = []

# Locality questions of the English ZsRE data carry this Natural Questions marker; it is not part of
# the question a person would ask, so prompts drop it.
NQ_PREFIX = "nq question:"


def prompt_template(lang: str, overrides: dict | None = None) -> str:
    key = f"prompt_template_{lang}"
    template = (overrides or {}).get(key) or os.environ.get(f"BIZSRE_PROMPT_TEMPLATE_{lang.upper()}")
    template = template or languages.get(lang).prompt_template
    template = template.replace("\\n", "\n")
    if "{question}" not in template:
        raise ValueError(f"prompt template for '{lang}' must contain '{{question}}': {template!r}")
    return template


def clean_question(question: str) -> str:
    stripped = question.strip()
    if stripped.lower().startswith(NQ_PREFIX):
        stripped = stripped[len(NQ_PREFIX):].strip()
    return stripped


def answer_separator(template: str) -> str:
    """What joins prompt and answer: a space after Latin-script colons, nothing after full-width ones."""
    return "" if template.endswith(("：", "\n", " ")) else " "


def build_prompt(question: str, lang: str, overrides: dict | None = None) -> str:
    return prompt_template(lang, overrides).format(question=clean_question(question))
