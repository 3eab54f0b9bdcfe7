"""Teacher-forced answering batches rows of similar length and runs the head at real target positions only,
and still returns every answer in the order asked, equal to answering one row at a time."""

from __future__ import annotations

import pytest
import torch

from bizsre_tasks.editing.common import EncodedRow, length_sorted_batches
from bizsre_tasks.tasks import prompts
from bizsre_tasks.wrapper import teacher_forcing

# Questions and targets of very different lengths (in tokens), in no particular order.
QUESTIONS = [
    ("Where is Zorb?", "en", " Mars"),
    ("谁写了一本关于蓝色莲花和很多很多其他东西的非常非常长的书？", "zh", "简·多伊和她的朋友们"),
    ("What is the capital of Canada, the second largest country in the world by area?", "en", " Ottawa"),
    ("巴西说什么语言？", "zh", "葡萄牙语"),
    ("Who?", "en", " The quick brown fox jumps over the lazy dog again and again"),
    ("Which river flows through Paris?", "en", " Seine"),
    ("首都？", "zh", "北京"),
]


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(str(folder))


def _rows(lengths):
    return [EncodedRow(list(range(n - 1)), [7]) for n in lengths]


def test_batches_hold_rows_of_similar_length_longest_first():
    lengths = [5, 30, 12, 29, 6, 13, 4]
    batches = length_sorted_batches(_rows(lengths), batch_size=3)
    assert batches == [[1, 3, 5], [2, 4, 0], [6]]
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))


@pytest.mark.parametrize("fixture", ["tiny_gemma", "tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("batch_size", [3, 8])
def test_batched_answers_come_back_in_request_order_equal_to_one_at_a_time(fixture, batch_size, request):
    model, tokenizer = _load(request.getfixturevalue(fixture))
    questions = [prompts.build_prompt(question, lang) for question, lang, _ in QUESTIONS]
    targets = [target for _, _, target in QUESTIONS]
    one_at_a_time = [teacher_forcing.teacher_forced_answers(model, tokenizer, [q], [t], 1)[0] for q, t in zip(questions, targets)]
    assert len(set(one_at_a_time)) > 1  # the answers tell the rows apart, so a shuffled order would show
    assert teacher_forcing.teacher_forced_answers(model, tokenizer, questions, targets, batch_size) == one_at_a_time


def test_the_head_runs_at_real_target_positions_only(tiny_llama, monkeypatch):
    model, tokenizer = _load(tiny_llama)
    questions = [prompts.build_prompt(question, lang) for question, lang, _ in QUESTIONS]
    targets = [target for _, _, target in QUESTIONS]
    head_rows = []
    real_argmax = teacher_forcing.head_argmax
    monkeypatch.setattr(teacher_forcing, "head_argmax", lambda m, hidden: head_rows.append(hidden.shape[0]) or real_argmax(m, hidden))
    teacher_forcing.teacher_forced_answers(model, tokenizer, questions, targets, batch_size=8)
    target_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in targets)
    assert head_rows == [target_tokens]  # one batch; no padded target slot reached the head
