"""Generated answers: the first non-empty line, and the share of empty answers per task."""

from __future__ import annotations

import pytest
from lm_eval.models.huggingface import HFLM

from bizsre_tasks.tasks import task_docs
from bizsre_tasks.tasks.answer_lines import filter_answers, first_nonempty_line
from tests.harness import metric, run_harness


@pytest.mark.parametrize(
    "text, answer",
    [
        ("Paris", "Paris"),
        ("\nParis", "Paris"),  # the model opens with a newline: once an empty answer
        ("\n\n  \n Paris \nQuestion: next", "Paris"),
        (" 巴黎\n问题：", "巴黎"),
        ("\n \n", ""),
        ("", ""),
    ],
)
def test_first_nonempty_line(text, answer):
    assert first_nonempty_line(text) == answer


def test_filter_leaves_argmax_answers_alone():
    docs = [{"protocol": "generate"}, {"protocol": "teacher_forced"}, {"protocol": "paper"}, {"protocol": "generate"}]
    resps = [["\nParis\nx"], ["\nParis\nx"], ["\nParis\nx"], ["\nA\n", "B"]]
    assert filter_answers(resps, docs) == ["Paris", "\nParis\nx", "\nParis\nx", ["A", "B"]]


def test_locality_reports_two_empty_answers_as_empty():
    doc = {"split": "locality", "lang": "zh", "target": "北京", "protocol": "generate"}
    scores = task_docs.process_results(doc, [["", ""]])
    assert scores["f1"] == 1.0 and scores["empty"] == 1.0  # they agree, and `empty` shows why
    assert task_docs.process_results(doc, [["北京", ""]])["empty"] == 0.5
    assert task_docs.process_results({**doc, "split": "generality"}, [" "])["empty"] == 1.0


def _generations(mapping):
    """HFLM.generate_until answering each prompt from `mapping` (first key it contains), else a default."""

    def generate_until(self, requests, disable_tqdm=False):
        return [next((v for k, v in mapping.items() if k in r.args[0]), "\n\nDefault answer\nQuestion: x") for r in requests]

    return generate_until


@pytest.mark.parametrize("model", ["hf", "edited-hf"])
def test_answers_opening_with_a_newline_are_not_empty(tiny_gpt2, monkeypatch, model):
    monkeypatch.setattr(HFLM, "generate_until", _generations({"问题": "\n \n"}))  # every Chinese answer: blank lines only
    results = run_harness({"pretrained": str(tiny_gpt2), "device": "cpu"}, ["bizsre_generality_en", "bizsre_locality_en", "bizsre_locality_zh"], limit=3, model=model)
    for sample in results["samples"]["bizsre_generality_en"]:
        assert sample["filtered_resps"] == ["Default answer"] and sample["arguments"][0][1]["until"] == []
    assert metric(results, "bizsre_generality_en", "empty") == 0.0
    assert metric(results, "bizsre_locality_en", "empty") == 0.0 and metric(results, "bizsre_locality_en") == 1.0
    # blank answers before and after the edit agree (f1 1), and the task says they were empty
    assert metric(results, "bizsre_locality_zh", "empty") == 1.0 and metric(results, "bizsre_locality_zh") == 1.0


def test_generation_ends_once_the_first_line_is_complete(tiny_gpt2):
    import torch
    from transformers import AutoTokenizer

    from bizsre_tasks.tasks.answer_lines import EndAfterFirstLine

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    prompt = tokenizer("Question: Where?\nAnswer:")["input_ids"]
    end = EndAfterFirstLine(tokenizer)
    vocabulary = len(tokenizer)

    def step(*continuations):
        rows = [prompt + tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        width = max(map(len, rows))
        ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
        return end(ids, torch.zeros(len(rows), vocabulary))

    assert not step("", "").isinf().any()  # first call: the prompt length is noted
    scores = step("\n", "Mars")
    assert not scores.isinf().any()  # a leading newline does not end the answer
    scores = step("\nMars\n", "Mars")
    assert scores[0].isinf().sum() == vocabulary - 1 and scores[0, tokenizer.eos_token_id] == 0.0
    assert not scores[1].isinf().any()
    assert not step("", "").isinf().any()  # a shorter input: a new generation starts
