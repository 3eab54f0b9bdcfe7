"""Documents and scoring for the Bi-ZsRE lm-eval tasks.

Every task document is one test case seen through one split (reliability, generality, locality,
portability) in one language. Besides the prompt and target the harness needs, a document carries
the edit of its case (`bizsre_edit`) and a case key, so that the `edited-hf` model can apply one edit
per case and answer all of that case's requests under it. Locality documents are asked twice (the
task's `repeats: 2`): the first answer comes from the unedited model, the second from the edited one.

Task YAMLs call `load_docs` as their `custom_dataset`; lm-eval passes the task metadata merged with
model_args, so `test_file`, `edit_lang`, `protocol`, `scoring_tokenizer` and prompt overrides given on
the command line reach this module.

Protocols: `generate` (the default) asks the templated question and scores language-aware words;
`teacher_forced` and `paper` need answers that only `edited-hf` computes (the argmax under the gold
prefix) and score token ids; `paper` reproduces the paper code's evaluation (`paper_protocol`).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any

from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.tasks import (
    answer_lines,
    data_loading,
    metrics,
    paper_protocol,
    prompts,
    provenance,
    run_state,
)

SPLITS = ("reliability", "generality", "locality", "portability")
# Each split's question and target: the LanguagePart attribute and, for error messages, the record field.
SPLIT_FIELDS = {
    "reliability": (("src", "src"), ("alt", "alt")),
    "generality": (("rephrase", "rephrase"), ("alt", "alt")),
    "locality": (("loc", "loc"), ("loc_ans", "loc_ans")),
    "portability": (("portability_question", "portability.New Question"), ("portability_answer", "portability.New Answer")),
}
DEFAULT_EDIT_LANG = "en"
PROTOCOLS = ("generate", "teacher_forced", "paper")
# Protocols whose answers only the `edited-hf` model computes; the plain `hf` model would generate instead.
WRAPPER_PROTOCOLS = ("teacher_forced", "paper")
# Under `paper` the prompt is the raw question field, as in the paper's code (no template, the
# `nq question: ` marker kept); the seed's target and prompt construction per split:
RAW_PROMPT_PROTOCOLS = ("paper",)
RAW_QUESTION_TEMPLATE = "{question}"
PAPER_VARIANT_BY_SPLIT = {"reliability": "edit", "generality": "edit", "locality": "edit", "portability": "portability"}


def _split_question_and_target(part: data_loading.LanguagePart, split: str) -> tuple[str, str]:
    if split not in SPLIT_FIELDS:
        raise ValueError(f"unknown Bi-ZsRE split '{split}'; expected one of {', '.join(SPLITS)}")
    (question_attr, _), (target_attr, _) = SPLIT_FIELDS[split]
    return getattr(part, question_attr), getattr(part, target_attr)


def doc_field(doc: dict[str, Any], which: str) -> str:
    """The record field of a document's `question` or `target`, e.g. 'zh.loc_ans'."""
    (_, question_field), (_, target_field) = SPLIT_FIELDS[doc["split"]]
    return f"{doc['lang']}.{question_field if which == 'question' else target_field}"


def edit_lang_from(metadata: dict[str, Any]) -> str:
    return str(metadata.get("edit_lang") or DEFAULT_EDIT_LANG)


def protocol_from(metadata: dict[str, Any]) -> str:
    protocol = str(metadata.get("protocol") or "generate")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; expected one of {', '.join(PROTOCOLS)}")
    return protocol


def _test_file_source(metadata: dict[str, Any]) -> str:
    """How the test file was chosen (same order as data_loading.resolve_test_file)."""
    if metadata.get("test_file"):
        return "test_file (model_args or --metadata)"
    if metadata.get("bizsre_bound_file"):
        return "task folder made by bizsre make-tasks"
    if os.environ.get(data_loading.TEST_FILE_ENV):
        return f"${data_loading.TEST_FILE_ENV}"
    return "bundled demo sample"


def build_docs(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    split = metadata.get("bizsre_split")
    if split not in SPLITS:
        raise ValueError(f"task metadata 'bizsre_split' must be one of {', '.join(SPLITS)}, got {split!r}")
    edit_lang = edit_lang_from(metadata)
    lang = edit_lang if split == "reliability" else metadata.get("bizsre_lang")
    if not lang:
        raise ValueError(f"task metadata 'bizsre_lang' is required for split '{split}'")
    path = data_loading.resolve_test_file(metadata.get("test_file") or metadata.get("bizsre_bound_file"))
    test_set = data_loading.load_test_set(path)
    provenance.record_test_file(path, test_set.fingerprint, _test_file_source(metadata))
    for needed, role in ((edit_lang, "edit_lang"), (lang, "task language")):
        if needed not in test_set.languages:
            raise data_loading.DataFormatError(
                path, f"{role} '{needed}' is not among the file's languages {list(test_set.languages)}", field=needed
            )
    protocol = protocol_from(metadata)
    # The model's own tokenizer (the default model when `pretrained` is not given) builds the paper
    # protocol's gold; `scoring_tokenizer` (default: the same) counts the F1 tokens.
    model_tokenizer = str(metadata.get("tokenizer") or metadata.get("pretrained") or "")
    scoring_tokenizer = str(metadata.get("scoring_tokenizer") or model_tokenizer) if protocol in WRAPPER_PROTOCOLS else ""
    if protocol in RAW_PROMPT_PROTOCOLS:
        edit_template = template = RAW_QUESTION_TEMPLATE

        def as_prompt(template: str, question: str) -> str:
            return template.format(question=question)
    else:
        edit_template = prompts.prompt_template(edit_lang, metadata)
        template = prompts.prompt_template(lang, metadata)

        def as_prompt(template: str, question: str) -> str:
            return template.format(question=prompts.clean_question(question))
    docs = []
    for case in test_set.cases:
        part = case.part(lang)
        question, target = _split_question_and_target(part, split)
        if question is None:
            raise data_loading.DataFormatError(path, "has no portability question", record=case.case_id, field=f"{lang}.portability")
        edit_part = case.part(edit_lang)
        edit = {
            "lang": edit_lang,
            "subject": edit_part.subject,
            "prompt": as_prompt(edit_template, edit_part.src),
            "target": edit_part.alt,
            "target_separator": prompts.answer_separator(edit_template),
            "question": edit_part.src,
            "rephrase": edit_part.rephrase,
        }
        docs.append(
            {
                "case_id": case.case_id,
                "source_file": str(path),
                "case_key": f"{test_set.fingerprint}:{edit_lang}:{case.case_id}",
                "split": split,
                "lang": lang,
                "question": question,
                "prompt": as_prompt(template, question),
                "target": target,
                "target_separator": prompts.answer_separator(template),
                "protocol": protocol,
                "scoring_tokenizer": scoring_tokenizer,
                "model_tokenizer": model_tokenizer,
                "cache_dir": str(metadata.get("cache_dir") or ""),
                "paper_variant": PAPER_VARIANT_BY_SPLIT[split],
                "bizsre_edit": json.dumps(edit, ensure_ascii=False),
            }
        )
    return docs


def load_docs(**metadata: Any):
    """`custom_dataset` entry point for the task YAMLs."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(build_docs(metadata))})


@lru_cache(maxsize=4)
def _tokenizer(name: str, cache_dir: str = ""):
    from transformers import AutoTokenizer

    from bizsre_tasks.default_model import resolve_pretrained

    return AutoTokenizer.from_pretrained(resolve_pretrained(name or None, cache_dir or None))


def _check_answered_by_wrapper(doc: dict[str, Any]) -> None:
    protocol = doc.get("protocol")
    if protocol in WRAPPER_PROTOCOLS and not run_state.wrapper_answers(protocol):
        raise ConfigurationError(
            f"protocol={protocol} scores the argmax answers under the gold prefix that only the edited-hf model "
            f"computes; run it with --model edited-hf (method=none for the unedited model), or drop protocol={protocol} "
            "to generate answers with this model"
        )


def score(prediction: str, gold: str, doc: dict[str, Any]) -> dict[str, float]:
    """Scores of one answer: language-aware words for `generate`, token ids of the scoring tokenizer
    for `teacher_forced` and `paper` (the latter with the paper code's rules, `metrics.seed_token_scores`)."""
    protocol = doc.get("protocol")
    if protocol == "paper":
        return metrics.seed_token_scores(prediction, gold, _tokenizer(doc.get("scoring_tokenizer") or "", doc.get("cache_dir") or ""))
    if protocol == "teacher_forced":
        return metrics.token_id_scores(prediction, gold, _tokenizer(doc.get("scoring_tokenizer") or "", doc.get("cache_dir") or ""))
    lang = doc["lang"]
    return {"f1": metrics.f1_score(prediction, gold, lang), "em": metrics.exact_match(prediction, gold, lang)}


def gold_answer(doc: dict[str, Any]) -> str:
    """The string an answer is scored against: the dataset's answer, or under `paper` the seed's
    rebuilding of it with the model's tokenizer."""
    if doc.get("protocol") == "paper":
        tokenizer = _tokenizer(doc.get("model_tokenizer") or "", doc.get("cache_dir") or "")
        return paper_protocol.paper_gold(tokenizer, doc["target"], paper_protocol.variant(doc["paper_variant"]))
    return doc["target"]


def _empty(*answers: str) -> float:
    """Share of empty answers (nothing but whitespace)."""
    return sum(not answer.strip() for answer in answers) / len(answers)


def process_results(doc: dict[str, Any], results: list) -> dict[str, float]:
    _check_answered_by_wrapper(doc)
    answers = results[0]
    if doc["split"] == "locality":
        # Agreement of the edited model's answer with the unedited one's; two empty answers agree, and
        # `empty` shows how often answers were empty.
        pre_edit, post_edit = answers[0], answers[1]
        scores = score(post_edit, pre_edit, doc)
        against_gold = score(post_edit, gold_answer(doc), doc)
        scores.update({f"gold_{name}": value for name, value in against_gold.items() if name in ("f1", "em")})
        scores["empty"] = _empty(pre_edit, post_edit)
        return scores
    answer = answers if isinstance(answers, str) else answers[0]
    scores = score(answer, gold_answer(doc), doc)
    scores["empty"] = _empty(answer)
    if doc["split"] == "reliability":
        scores["edit_failed"] = float(run_state.edit_failed(doc["case_key"]))
        scores.update(_immediate_scores(doc, answer, scores))
    return scores


def _immediate_scores(doc: dict[str, Any], answer: str, scores: dict[str, float]) -> dict[str, float]:
    """`f1_immediate` / `em_immediate`: the reliability answer taken right after the case's own edit
    (edit_mode=sequential, where `f1` is taken after the last edit); the answer itself otherwise."""
    immediate = run_state.immediate_answer(doc["case_key"])
    if immediate is None:
        return {"f1_immediate": scores["f1"], "em_immediate": scores["em"]}
    if doc.get("protocol", "generate") in answer_lines.GENERATED_PROTOCOLS:  # as the task's filter does
        immediate = answer_lines.first_nonempty_line(immediate)
    again = score(immediate, gold_answer(doc), doc)
    return {"f1_immediate": again["f1"], "em_immediate": again["em"]}
