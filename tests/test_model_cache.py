"""Caches go to a model under the argument name its transformers version takes (editing/model_cache.py)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch

from bizsre_tasks.editing.model_cache import cache_argument, given_cache, returned_cache
from bizsre_tasks.wrapper.greedy_generation import greedy_generate


class OldStyleModel:
    def forward(self, input_ids=None, past_key_values=None, use_cache=False):
        return None


class NewStyleModel:
    def forward(self, input_ids=None, cache=None, use_cache=False):
        return None


def test_the_argument_name_follows_the_forward_signature():
    marker = object()
    assert cache_argument(OldStyleModel(), marker) == {"past_key_values": marker}
    assert cache_argument(NewStyleModel(), marker) == {"cache": marker}


def test_the_cache_is_read_under_either_name():
    marker = object()
    assert returned_cache(SimpleNamespace(cache=marker)) is marker
    assert returned_cache(SimpleNamespace(past_key_values=marker)) is marker
    assert returned_cache(SimpleNamespace(cache=None, past_key_values=marker)) is marker
    assert returned_cache(SimpleNamespace()) is None
    assert given_cache({"past_key_values": marker}) is marker and given_cache({"cache": marker}) is marker


def test_cached_generation_raises_no_deprecation_warning(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    batch = tokenizer(["Question: Who?\nAnswer:", "Question: Where is it?\nAnswer:"], return_tensors="pt", padding=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        greedy_generate(model, tokenizer, batch.input_ids, batch.attention_mask, batch.input_ids.shape[1] + 4, [],
                        tokenizer.pad_token_id)
    assert not [w for w in caught if "past_key_values" in str(w.message)]
