"""The benchmark's naive path (`common.naive`): the same edit as the optimised path, computed without
reusing activations (FT's upper stack, ROME/MEMIT's prefix cache and layer replay, KN's prefix cache)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from bizsre_tasks.editing import common
from bizsre_tasks.editing.base import EditingContext, EditRequest
from bizsre_tasks.editing.layout import ModelLayout
from bizsre_tasks.editing.registry import build_method

# A mid-prompt subject, so ROME/MEMIT have columns before it to cache.
REQUEST = EditRequest(
    prompt="Question: What company made Volvo B12M?\nAnswer:", target="Volkswagen Group", subject="Volvo B12M", lang="en",
    question="What company made Volvo B12M?",
)
ROME_FAST = {"steps": 10, "n_prefixes": 1, "prefix_length": 3, "weight_decay": 0.0}
# Every method edits above layer 0, so the optimised path has something below the edit to reuse.
METHODS = {
    "ft": {"layers": [2], "steps": 5, "norm_constraint": 0.01, "early_stop_nll": 0.0},
    "rome": {"layer": 2, **ROME_FAST},
    "memit": {"layers": [1, 2], "mom2_weight": 10.0, **ROME_FAST},
    "kn": {"layers": [2, 3], "ig_steps": 4, "threshold": 0.05, "top_k": 20},
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIZSRE_CACHE_DIR", str(tmp_path / "cache"))


def _method(name: str, folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    context = EditingContext(model=model, tokenizer=tokenizer, layout=ModelLayout.for_model(model), device=torch.device("cpu"),
                             model_name=str(folder))
    return build_method(name, context, METHODS[name])


class LayerZeroWork:
    """Counts the positions (rows x columns) that layer 0's MLP really computes: replayed layers and
    cached prefixes do not reach it."""

    def __init__(self, method):
        self.module = method.layout.module("mlp_out", 0)
        self.positions = 0

    def __enter__(self):
        def hook(module, args, output):
            self.positions += args[0].shape[:-1].numel()

        self._handle = self.module.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False


def _edit(method, naive: bool) -> tuple[dict[str, torch.Tensor], int]:
    """The edited weights and layer 0's work for one edit, on the optimised or the naive path."""
    model = method.model
    mode = common.naive(model) if naive else contextlib.nullcontext()
    with LayerZeroWork(method) as work, mode:
        applied = method.apply(REQUEST)
    edited = {key: tensor.detach().clone() for key, tensor in model.state_dict().items()}
    applied.restore()
    return edited, work.positions


@pytest.mark.parametrize("name", list(METHODS))
def test_naive_path_makes_the_same_edit_with_the_full_model(name, tiny_gemma):
    method = _method(name, tiny_gemma)
    original = {key: tensor.detach().clone() for key, tensor in method.model.state_dict().items()}
    method.apply(REQUEST).restore()  # one-time work (statistics, prefixes, KN's reference activations) out of the count
    optimised, optimised_work = _edit(method, naive=False)
    naive, naive_work = _edit(method, naive=True)
    changed = [key for key in original if not torch.equal(optimised[key], original[key])]
    assert changed, "the edit changed nothing"
    for key in original:
        # The same update up to float rounding. Compared as a whole: Adam (FT) divides each gradient element by
        # its own size, so rounding can move a single near-zero-gradient element by ~1% of the largest change.
        opt_update, naive_update = optimised[key] - original[key], naive[key] - original[key]
        assert float((naive_update - opt_update).norm()) <= 1e-3 * float(opt_update.norm()) + 1e-7, key
    assert optimised_work < naive_work, (optimised_work, naive_work)
    assert all(not p.requires_grad for p in method.model.parameters())  # naive mode's all-weights gradients are undone
