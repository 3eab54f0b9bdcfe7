"""Greedy generation that drops finished rows gives what `model.generate` gives (wrapper/greedy_generation.py)."""

from __future__ import annotations

import pytest
import torch

from bizsre_tasks.wrapper.greedy_generation import greedy_generate, is_greedy
from tests.harness import run_harness

PROMPTS = ["Question: Where is the Eiffel Tower?\nAnswer:", "问题：埃菲尔铁塔在哪里？\n答案：", "Question: Who?\nAnswer:"]


class EndAfterTokenMultipleOf:
    """A row ends (EOS forced) once its last token id is a multiple of `k`: a rule on the row's own tokens,
    as `EndAfterFirstLine` is, so rows end at different steps whatever else is in the batch."""

    def __init__(self, k: int, eos: int, prompt_length: int):
        self.k, self.eos, self.prompt_length = k, eos, prompt_length

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.prompt_length:
            return scores
        ends = input_ids[:, -1] % self.k == 0
        scores[ends] = -float("inf")
        scores[ends, self.eos] = 0.0
        return scores


@pytest.mark.parametrize("family_fixture", ["tiny_gemma", "tiny_llama"])
def test_same_tokens_as_generate_with_rows_ending_at_different_steps(family_fixture, request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = request.getfixturevalue(family_fixture)
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    width = batch.input_ids.shape[1]
    for k in (3, 5, 7, 1000):  # 1000: no row ends early, every row runs to max_length
        rule = EndAfterTokenMultipleOf(k, tokenizer.eos_token_id, width)
        expected = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_length=width + 12,
                                  do_sample=False, pad_token_id=tokenizer.pad_token_id, logits_processor=[rule])
        ours = greedy_generate(model, tokenizer, batch.input_ids, batch.attention_mask, width + 12, [],
                               tokenizer.pad_token_id, [rule])
        assert torch.equal(ours, expected), k


def test_rows_stop_at_a_stop_string_and_keep_their_text(tiny_gemma):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma, dtype=torch.float32).eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    width = batch.input_ids.shape[1]
    free = greedy_generate(model, tokenizer, batch.input_ids, batch.attention_mask, width + 10, [], tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(free[:, width:])
    stop = texts[0][:3]  # a string the first row produces early
    stopped = greedy_generate(model, tokenizer, batch.input_ids, batch.attention_mask, width + 10, [stop], tokenizer.pad_token_id)
    cut = tokenizer.batch_decode(stopped[:, width:], skip_special_tokens=True)
    for before, after in zip(texts, cut):
        assert after.split(stop)[0] == tokenizer.convert_tokens_to_string(tokenizer.tokenize(before)).split(stop)[0]
    assert (stopped[0, width:] == tokenizer.pad_token_id).any()  # the first row was let go


def test_only_plain_greedy_decoding_is_taken_over():
    assert is_greedy({"attention_mask": None, "logits_processor": [], "do_sample": False})
    assert is_greedy({"temperature": 0.0})
    assert not is_greedy({"do_sample": True})
    assert not is_greedy({"temperature": 0.7})
    assert not is_greedy({"num_beams": 4})
    assert not is_greedy({"repetition_penalty": 1.2})


def test_harness_answers_are_the_same_with_and_without_dropping_rows(tiny_gemma):
    runs = {}
    for drop in (True, False):
        results = run_harness({"pretrained": str(tiny_gemma), "method": "none", "drop_finished_rows": drop},
                              ["bizsre_generality_en", "bizsre_generality_zh"], limit=3, max_gen_toks=8)
        runs[drop] = {task: [s["resps"] for s in samples] for task, samples in results["samples"].items()}
    assert runs[True] == runs[False]
