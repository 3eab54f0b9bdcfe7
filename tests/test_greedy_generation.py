"""Greedy generation that drops finished rows gives what `model.generate` gives (wrapper/greedy_generation.py)."""

from __future__ import annotations

import pytest
import torch

from bizsre_tasks.wrapper.greedy_generation import cached_prefix, greedy_generate, is_greedy, without_prefix
from tests.harness import ike_answers_with_and_without_prefix, run_harness

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


FACTS = "Facts: Jane Doe.\n"  # short: the tiny Gemma's rows and 12 new tokens stay within its 64-token window


def _rows_with_prefix(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    batch = tokenizer([FACTS + prompt for prompt in PROMPTS], return_tensors="pt", padding=True)
    return model, tokenizer, batch, tokenizer(FACTS)["input_ids"]


@pytest.mark.parametrize("family_fixture", ["tiny_gemma", "tiny_llama"])
def test_starting_from_the_prefix_cache_gives_the_same_tokens(family_fixture, request, prefix_runs):
    model, tokenizer, batch, prefix_ids = _rows_with_prefix(request.getfixturevalue(family_fixture))
    width = batch.input_ids.shape[1]
    assert (batch.attention_mask == 0).any()  # rows padded differently: the padding moves behind the prefix
    runs = prefix_runs
    prefix = cached_prefix(model, batch.input_ids, batch.attention_mask, prefix_ids, width + 12)
    assert prefix is not None and prefix[1] == len(prefix_ids) - 1 and len(runs) == 1
    for k in (3, 1000):
        rule = EndAfterTokenMultipleOf(k, tokenizer.eos_token_id, width)
        full = greedy_generate(model, tokenizer, batch.input_ids, batch.attention_mask, width + 12, [], tokenizer.pad_token_id, [rule])
        cached = greedy_generate(model, tokenizer, batch.input_ids, batch.attention_mask, width + 12, [], tokenizer.pad_token_id,
                                 [rule], prefix=prefix)
        assert torch.equal(cached, full), k
    assert len(runs) == 1  # generating did not change the cache it was given (it works on a copy)


def test_the_prefix_cache_is_declined_where_it_would_change_answers(tiny_gemma):
    model, tokenizer, batch, prefix_ids = _rows_with_prefix(tiny_gemma)
    width = batch.input_ids.shape[1]
    window = model.config.sliding_window
    assert cached_prefix(model, batch.input_ids, batch.attention_mask, prefix_ids, window + 1) is None  # rows outgrow the window
    other = prefix_ids[:-1] + [prefix_ids[-1] + 1]
    assert cached_prefix(model, batch.input_ids, batch.attention_mask, other, width + 4) is None  # rows do not start with it
    right_padded = tokenizer([FACTS + p for p in PROMPTS], return_tensors="pt", padding=True, padding_side="right")
    assert cached_prefix(model, right_padded.input_ids, right_padded.attention_mask, prefix_ids, width + 4) is None


def test_without_prefix_keeps_the_padding_in_front():
    ids = torch.tensor([[0, 0, 7, 8, 9, 1], [7, 8, 9, 2, 3, 4]])
    mask = (torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]))
    rest, rest_mask = without_prefix(ids, mask, 2)
    assert rest.tolist() == [[0, 0, 9, 1], [9, 2, 3, 4]]
    assert rest_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_ike_generated_answers_are_the_same_with_and_without_the_prefix_cache(tiny_llama, tmp_path, monkeypatch, prefix_runs):
    monkeypatch.setenv("BIZSRE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BIZSRE_TRAIN_FILE", raising=False)
    hparams = tmp_path / "ike.yaml"
    hparams.write_text("k: 3\n")  # keeps the prompts within the tiny model's context
    args = {"pretrained": str(tiny_llama), "device": "cpu", "method": "ike", "protocol": "generate", "cross_case_batch": 2,
            "batch_size": 4, "hparams": str(hparams)}
    cached, full, cached_runs, full_runs = ike_answers_with_and_without_prefix(args, monkeypatch, prefix_runs)
    assert (cached_runs, full_runs) == (3, 0)  # each case's demonstrations ran once, as a cache; none without prefixes
    assert cached == full


class PrefixEdit:
    """An in-context edit whose prompts all start with `prefix` (None: declares no shared prefix)."""

    def __init__(self, text: str, declared: bool):
        self.text, self.shared_prefix = text, (text if declared else None)

    def rewrite_prompt(self, prompt: str) -> str:
        return self.text + prompt

    def prefix_for(self, prompt: str):
        return self.shared_prefix


class _Question:
    def __init__(self, context: str):
        self.args = (context, {"until": [], "max_gen_toks": 6, "do_sample": False})


def test_each_prefix_group_gets_its_own_end_of_line_rule(tiny_llama):
    """Groups are generated in separate calls; a later group's prompts may be longer than the earlier
    group's whole output, which a rule carried over from the earlier call would read as generated text."""
    from bizsre_tasks.editing_wrapper import EditedHFLM

    lm = EditedHFLM(pretrained=str(tiny_llama), device="cpu", method="none", protocol="generate", batch_size=4)
    short, long = "Fact: A.\n", "Facts: " + "the Blue Lotus was written by Jane Doe; " * 4 + "\n"
    questions = [_Question(p) for p in PROMPTS] * 2
    answers = {}
    for declared in (True, False):
        edits = [PrefixEdit(short, declared)] * len(PROMPTS) + [PrefixEdit(long, declared)] * len(PROMPTS)
        answers[declared] = lm._answer(questions, list(range(len(questions))), edits)
    assert answers[True] == answers[False]
    assert all(answers[False][len(PROMPTS):])  # the tiny model says something after each long prompt
