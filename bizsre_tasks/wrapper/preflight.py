"""Checks of a run's requests against the loaded model, before the first edit.

The data loader checks what it can without a model (schema, empty or invisible strings, repeated
records). What depends on the model's tokenizer and context length is checked here, after the model
is loaded and before any edit is made or any answer is stored:
- an answer that the tokenizer turns into no token at all can neither be installed by an edit nor
  scored by teacher forcing;
- a question whose prompt and answer do not fit the model's context would have to be truncated, so
  another question would be asked and scored.
Both stop the run with a `DataFormatError` naming the file, the record and the field. A `test_file`
given in model_args is also read here before the model is loaded (the tasks read it only afterwards).
"""

from __future__ import annotations

from typing import Any

from bizsre_tasks.editing.base import EditRequest
from bizsre_tasks.editing.common import encode_prompt, encode_target
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.tasks import data_loading
from bizsre_tasks.tasks.data_loading import DataFormatError
from bizsre_tasks.tasks.task_docs import doc_field
from bizsre_tasks.wrapper.case_planning import CaseWork


def check_test_file(test_file: str, edit_lang: str) -> None:
    """The `test_file` model argument, checked before the model is loaded (the tasks read it later)."""
    path = data_loading.resolve_test_file(test_file)
    languages = data_loading.load_test_set(path).languages
    if edit_lang not in languages:
        raise DataFormatError(path, f"edit_lang '{edit_lang}' is not among the file's languages {list(languages)}", field=edit_lang)


def check_requests(
    requests: list[Any],
    cases: list[CaseWork],
    tokenizer,
    max_length: int,
    protocol: str,
    default_max_gen_toks: int,
    check_edits: bool,
) -> None:
    """Raise on the first request or edit that this model cannot be asked or taught."""
    for case in cases:
        doc = requests[case.indices[0]].doc
        if check_edits:
            _check_edit(case.edit, doc, tokenizer, max_length)
        for index in case.indices:
            _check_request(requests[index], tokenizer, max_length, protocol, default_max_gen_toks)


def _error(doc: dict[str, Any], field: str, message: str) -> DataFormatError:
    return DataFormatError(doc.get("source_file", "(test file)"), message, record=doc.get("case_id"), field=field)


def _check_edit(edit: EditRequest, doc: dict[str, Any], tokenizer, max_length: int) -> None:
    if not encode_target(tokenizer, edit.target):
        raise _error(doc, f"{edit.lang}.alt", f"the new answer {edit.target!r} tokenises to nothing with this model's tokenizer")
    needed = len(encode_prompt(tokenizer, edit.prompt)) + len(encode_target(tokenizer, edit.target_text))
    if needed > max_length:
        raise _error(doc, f"{edit.lang}.src", f"the edit's prompt and answer take {needed} tokens, more than the model's context of {max_length}")


def _check_request(request: Any, tokenizer, max_length: int, protocol: str, default_max_gen_toks: int) -> None:
    doc = request.doc
    context, gen_kwargs = request.args
    if protocol == "paper":
        # The paper's code cuts every prompt to its first 30 tokens (`paper_protocol.SEED_MAX_LENGTH`) and
        # keeps a target of only a BOS: nothing here can overflow or be left without a position.
        return
    prompt_length = len(encode_prompt(tokenizer, context))
    if protocol == "teacher_forced":
        if not encode_target(tokenizer, doc["target"]):
            raise _error(doc, doc_field(doc, "target"), f"the answer {doc['target']!r} tokenises to nothing with this model's tokenizer")
        answer_length = len(encode_target(tokenizer, doc["target_separator"] + doc["target"]))
        room = "its answer"
    else:
        answer_length = _max_gen_toks(gen_kwargs, default_max_gen_toks)
        if answer_length >= max_length:
            raise ConfigurationError(
                f"max_gen_toks={answer_length} leaves no room for a prompt in the model's context of {max_length} tokens; "
                "lower it with --gen_kwargs max_gen_toks=N"
            )
        room = f"{answer_length} tokens to generate"
    if prompt_length + answer_length > max_length:
        raise _error(
            doc,
            doc_field(doc, "question"),
            f"the {doc['split']} prompt has {prompt_length} tokens; with {room} it exceeds the model's context of "
            f"{max_length} tokens (truncating it would ask another question)",
        )


def _max_gen_toks(gen_kwargs: dict, default: int) -> int:
    """The generation budget exactly as the harness's HFLM reads it (aliases included)."""
    from lm_eval.models.utils import normalize_gen_kwargs

    return int(normalize_gen_kwargs(gen_kwargs, default)["max_gen_toks"])
