"""Teacher-forced answers over a shared prefix computed once (IKE's demonstrations): the same answers
as the full prompts, directly and through edited-hf."""

from __future__ import annotations

import pytest
import torch

from bizsre_tasks.tasks import prompts
from bizsre_tasks.wrapper.prefix_cache import (
    shared_prefix_answers,
    shared_prefix_groups,
)
from bizsre_tasks.wrapper.teacher_forcing import teacher_forced_answers
from tests.harness import ike_answers_with_and_without_prefix

# Longer than the tiny Gemma's sliding window (64 tokens), so the cached prefix crosses it.
PREFIX = "".join(f"New Fact: Who wrote Book {i}? Author {i}\nQuestion: Who wrote Book {i}?\nAnswer: Author {i}\n\n" for i in range(4))
QUESTIONS = [("Who wrote Blue Lotus?", "en", " Jane Doe"), ("谁写了蓝莲花？", "zh", "简·多伊"), ("Where is Paris?", "en", " France"),
             ("What is the capital of Canada?", "en", " Ottawa Ontario Canada"), ("巴西说什么语言？", "zh", "葡萄牙语")]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIZSRE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BIZSRE_TRAIN_FILE", raising=False)


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("fixture", ["tiny_gemma", "tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("batch_size", [2, 8])
def test_prefix_cache_gives_the_answers_of_the_full_prompts(fixture, batch_size, request, prefix_runs):
    model, tokenizer = _load(request.getfixturevalue(fixture))
    assert len(tokenizer(PREFIX)["input_ids"]) > 64
    questions = [prompts.build_prompt(question, lang) for question, lang, _ in QUESTIONS]
    targets = [target for _, _, target in QUESTIONS]
    full = teacher_forced_answers(model, tokenizer, [PREFIX + q for q in questions], targets, batch_size)
    assert shared_prefix_answers(model, tokenizer, PREFIX, questions, targets, batch_size) == full
    assert len(prefix_runs) == 1  # the prefix ran once, as a cache


def test_groups_only_prefixes_that_every_prompt_starts_with():
    prompts_ = ["AB q1", "AB q2", "CD q3", "plain", "EF q5", "XX q6"]
    prefixes = ["AB ", "AB ", "CD ", None, "EF ", "EF "]  # "XX q6" does not start with its declared prefix
    assert shared_prefix_groups(prompts_, prefixes) == {"AB ": [0, 1], "CD ": [2]}


def test_edited_hf_ike_answers_are_the_same_with_and_without_the_prefix_cache(tiny_gemma, tmp_path, monkeypatch, prefix_runs):
    # k=3 keeps the prompts within the tiny model's 512-token context (longer ones are cut, and answered in full).
    hparams = tmp_path / "ike.yaml"
    hparams.write_text("k: 3\n")
    # 3 cases in chunks of 2: one chunk mixes two cases' requests, the other holds one case.
    args = {"pretrained": str(tiny_gemma), "device": "cpu", "method": "ike", "protocol": "teacher_forced",
            "cross_case_batch": 2, "batch_size": 4, "hparams": str(hparams)}
    cached, full, cached_runs, full_runs = ike_answers_with_and_without_prefix(args, monkeypatch, prefix_runs)
    assert (cached_runs, full_runs) == (3, 0)  # each case's prefix ran once, as a cache; none without prefixes
    assert cached == full
