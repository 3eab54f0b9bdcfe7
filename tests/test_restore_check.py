"""verify_restore's bitwise weight snapshot (`wrapper/restore_check.py`)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from bizsre_tasks.wrapper.restore_check import WeightSnapshot


def _model(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def test_untouched_model_passes_and_a_restored_edit_passes(tiny_gemma):
    model = _model(tiny_gemma)
    snapshot = WeightSnapshot(model)
    assert snapshot.first_change(model) is None
    weight = model.model.layers[1].mlp.down_proj.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
        assert snapshot.first_change(model) == "model.layers.1.mlp.down_proj.weight"
        weight.copy_(saved)
    assert snapshot.first_change(model) is None


def test_differences_are_bitwise(tiny_gemma):
    """-0.0 == 0.0 and NaN != NaN as numbers; as bytes the first differs and the second does not."""
    model = _model(tiny_gemma)
    norm = model.model.norm.weight
    with torch.no_grad():
        norm[0] = 0.0
        norm[1] = float("nan")
    snapshot = WeightSnapshot(model)
    assert snapshot.first_change(model) is None  # a NaN weight equals itself
    with torch.no_grad():
        norm[0] = -0.0
    assert snapshot.first_change(model) == "model.norm.weight"


def test_tied_weights_are_copied_once_and_still_checked(tiny_gpt2):
    model = _model(tiny_gpt2)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # GPT-2 ties them
    snapshot = WeightSnapshot(model)
    names = set(snapshot._tensors)
    assert ("lm_head.weight" in names) != ("transformer.wte.weight" in names)
    with torch.no_grad():
        model.lm_head.weight[3, 2] += 1.0
    assert snapshot.first_change(model) in {"lm_head.weight", "transformer.wte.weight"}


def test_a_replaced_tensor_is_a_change(tiny_gpt2):
    model = _model(tiny_gpt2)
    snapshot = WeightSnapshot(model)
    model.transformer.h[0].mlp.c_fc.bias = torch.nn.Parameter(model.transformer.h[0].mlp.c_fc.bias.detach() * 1.0)
    assert snapshot.first_change(model) is None  # same bytes in a new tensor: restored
    model.transformer.h[0].mlp.c_fc.bias = torch.nn.Parameter(model.transformer.h[0].mlp.c_fc.bias.detach() + 1e-6)
    assert snapshot.first_change(model) == "transformer.h.0.mlp.c_fc.bias"


def test_odd_sized_and_offset_tensors_are_compared_bytewise(tiny_gpt2):
    """A tensor whose byte size is not a multiple of 8 (or that starts mid-word) is compared byte by byte."""
    model = _model(tiny_gpt2)
    model.register_buffer("odd", torch.arange(7, dtype=torch.uint8))
    model.register_buffer("offset", torch.arange(10, dtype=torch.float32)[1:9])
    snapshot = WeightSnapshot(model)
    assert snapshot.first_change(model) is None
    model.odd[6] = 99
    assert snapshot.first_change(model) == "odd"
    model.odd[6] = 6
    model.offset[7] = -1.0
    assert snapshot.first_change(model) == "offset"
