"""FT-L (`ft`) and Knowledge Neurons (`kn`): restoration, effect, constraints, configuration errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bizsre_tasks.editing import ft as ft_module
from bizsre_tasks.editing.base import EditFailedError, EditingContext, EditRequest
from bizsre_tasks.editing.common import (
    build_batch,
    encode_prompt,
    logits_at,
    mean_target_nll,
    target_nll,
)
from bizsre_tasks.editing.ft import UpperStack
from bizsre_tasks.editing.layout import ModelLayout
from bizsre_tasks.editing.registry import build_method
from bizsre_tasks.errors import ConfigurationError

REQUEST = EditRequest(prompt="Question: When was the IAAF Combined Events Challenge founded?\nAnswer:", target="2006",
                      subject="IAAF Combined Events Challenge", lang="en")
REQUEST_ZH = EditRequest(prompt="问题：IAAF综合项目挑战赛的创立时间是什么时候？\n答案：", target="2006年",
                         subject="IAAF综合项目挑战赛", lang="zh", target_separator="")


def _load(folder):
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return EditingContext(model=model, tokenizer=tokenizer, layout=ModelLayout.for_model(model), device=torch.device("cpu"))


def _snapshot(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _assert_bitwise_equal(model, snapshot):
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, snapshot[name]), f"{name} not restored"
        assert tensor.view(-1).view(torch.uint8).equal(snapshot[name].view(-1).view(torch.uint8))


@pytest.fixture(params=["tiny_gemma", "tiny_llama", "tiny_gpt2"])
def tiny_context(request):
    return _load(request.getfixturevalue(request.param))


# --- shared machinery -------------------------------------------------------------------------
def test_upper_stack_reproduces_full_forward(tiny_context):
    ctx = tiny_context
    batch = build_batch(ctx.tokenizer, [REQUEST.prompt, REQUEST_ZH.prompt], [REQUEST.target_text, REQUEST_ZH.target_text])
    reference = logits_at(ctx.model, batch.input_ids, batch.attention_mask, batch.positions)
    for first in range(ctx.layout.num_layers):
        stack = UpperStack(ctx.model, ctx.layout, first, batch)
        assert stack.cached_input is not None, "layer inputs were not recorded; the fast path is off"
        assert torch.allclose(stack.logits(), reference, atol=1e-5)


# --- FT-L ---------------------------------------------------------------------------------------
def test_last_prompt_loss_takes_one_softmax_per_row_with_the_same_loss_and_gradient(tiny_context, monkeypatch):
    """FT's `last_prompt` loss scores every target token at one position: one softmax per row, the loss and
    its gradient those of the textbook logits (and of one softmax per token)."""
    import dataclasses

    from bizsre_tasks.editing.tensors import head_softmax

    ctx = tiny_context
    batch = build_batch(ctx.tokenizer, [REQUEST.prompt, REQUEST_ZH.prompt], [REQUEST.target_text, REQUEST_ZH.target_text])
    batch = dataclasses.replace(batch, positions=torch.where(batch.target_mask, batch.positions[:, :1], 0))
    weight = ctx.layout.weight_parameter("mlp_out", 1)
    softmaxes = []
    original = head_softmax.log_normaliser
    monkeypatch.setattr(head_softmax, "log_normaliser", lambda head, hidden: softmaxes.append(len(hidden)) or original(head, hidden))

    def loss_and_grad(compute):
        weight.requires_grad_(True)
        weight.grad = None
        stack = UpperStack(ctx.model, ctx.layout, 1, batch)
        loss = compute(stack)
        loss.backward()
        grad = weight.grad.clone()
        weight.grad = None
        weight.requires_grad_(False)
        return loss.detach(), grad

    textbook = loss_and_grad(lambda stack: mean_target_nll(stack.logits(), batch))
    shared = loss_and_grad(lambda stack: stack.target_nll(head_softmax.HeadObjective(ctx.model)))

    def per_token_loss(stack):
        assert stack.one_position_per_row
        stack.one_position_per_row = False  # the route before: one softmax per target token
        return stack.target_nll(head_softmax.HeadObjective(ctx.model))

    per_token = loss_and_grad(per_token_loss)
    for other in (shared, per_token):
        assert torch.allclose(other[0], textbook[0], atol=1e-5) and torch.allclose(other[1], textbook[1], atol=1e-5)
    if head_softmax._head(ctx.model) is not None:  # the one-pass route: rows per softmax call
        assert softmaxes == [2, batch.target_ids.numel()]


def test_ft_restores_bitwise(tiny_context):
    method = build_method("ft", tiny_context, {"layers": [1, 2], "steps": 5, "norm_constraint": 0.01, "early_stop_nll": 0.0})
    before = _snapshot(tiny_context.model)
    edit = method.apply(REQUEST)
    changed = [name for name, tensor in tiny_context.model.state_dict().items() if not torch.equal(tensor, before[name])]
    assert changed and all("mlp" in name for name in changed)
    edit.restore()
    _assert_bitwise_equal(tiny_context.model, before)
    assert not any(p.requires_grad for p in tiny_context.model.parameters())


@pytest.mark.parametrize("request_", [REQUEST, REQUEST_ZH], ids=["en", "zh"])
def test_ft_raises_target_probability_and_keeps_linf_bound(tiny_gemma, request_):
    ctx = _load(tiny_gemma)
    eps = 0.1
    method = build_method("ft", ctx, {"layers": [2], "steps": 20, "lr": 0.03, "norm_constraint": eps, "early_stop_nll": 0.0})
    batch = build_batch(ctx.tokenizer, [request_.prompt], [request_.target_text])
    original = ctx.layout.weight_parameter("mlp_out", 2).detach().clone()
    with torch.no_grad():
        nll_before = target_nll(ctx.model, batch).item()
    edit = method.apply(request_)
    with torch.no_grad():
        nll_after = target_nll(ctx.model, batch).item()
    delta = (ctx.layout.weight_parameter("mlp_out", 2).detach() - original).abs().max().item()
    edit.restore()
    assert nll_after < nll_before - 0.1, (nll_before, nll_after)  # a random tiny head caps what any edit can reach
    assert 0 < delta <= eps * (1 + 1e-5)


def test_ft_target_excludes_bos(tiny_gemma):
    """The target tokens scored are the answer's own tokens, never a BOS."""
    ctx = _load(tiny_gemma)
    batch = build_batch(ctx.tokenizer, [REQUEST.prompt], [REQUEST.target_text])
    targets = batch.target_ids[batch.target_mask].tolist()
    assert ctx.tokenizer.bos_token_id not in targets
    assert ctx.tokenizer.decode(targets) == REQUEST.target_text


def test_ft_early_stop_leaves_model_untouched_when_already_learnt(tiny_gemma):
    ctx = _load(tiny_gemma)
    method = build_method("ft", ctx, {"layers": [1], "early_stop_nll": 1e9})
    before = _snapshot(ctx.model)
    edit = method.apply(REQUEST)
    _assert_bitwise_equal(ctx.model, before)
    edit.restore()


def test_ft_nan_loss_restores_then_raises(tiny_gemma, monkeypatch):
    ctx = _load(tiny_gemma)
    method = build_method("ft", ctx, {"layers": [1], "steps": 6, "norm_constraint": 0.05, "lr": 0.01, "early_stop_nll": 0.0})
    real = ft_module.UpperStack.target_nll
    calls = {"n": 0}

    def poisoned(stack, objective):
        calls["n"] += 1
        loss = real(stack, objective)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(ft_module.UpperStack, "target_nll", poisoned)
    before = _snapshot(ctx.model)
    with pytest.raises(EditFailedError):
        method.apply(REQUEST)
    assert calls["n"] == 4  # the poisoned step was reached
    _assert_bitwise_equal(ctx.model, before)


# --- Knowledge Neurons --------------------------------------------------------------------------
def test_kn_restores_bitwise(tiny_context):
    method = build_method("kn", tiny_context, {"ig_steps": 4, "ig_batch": 5})
    before = _snapshot(tiny_context.model)
    edit = method.apply(REQUEST)
    changed = [name for name, tensor in tiny_context.model.state_dict().items() if not torch.equal(tensor, before[name])]
    assert changed and all("mlp" in name for name in changed)
    edit.restore()
    _assert_bitwise_equal(tiny_context.model, before)


def test_kn_prefix_cache_matches_whole_prompts(tiny_context):
    method = build_method("kn", tiny_context, {"ig_steps": 5, "ig_batch": 7})
    ids = encode_prompt(tiny_context.tokenizer, REQUEST.prompt)
    layers = method.kn_layers
    activations, _ = method._observe(ids, layers)
    cached = method._integrated_gradients(ids, layers, activations, 7)
    method._prefix_cache = lambda prompt_ids: None
    whole = method._integrated_gradients(ids, layers, activations, 7)
    for layer in layers:
        assert torch.allclose(cached[layer], whole[layer], rtol=1e-4, atol=1e-10)


def test_kn_integrated_gradients_completeness(tiny_gemma):
    """IG's completeness: a layer's attributions sum to P(answer | a) - P(answer | 0)."""
    ctx = _load(tiny_gemma)
    method = build_method("kn", ctx, {"layers": [3], "ig_steps": 64})
    ids = encode_prompt(ctx.tokenizer, REQUEST.prompt)
    activations, logits = method._observe(ids, [3])
    token = int(logits.argmax())
    attribution = method._integrated_gradients(ids, [3], activations, token)[3]
    module = ctx.layout.module("mlp_out", 3)
    handle = module.register_forward_pre_hook(lambda m, args: (torch.cat([args[0][:, :-1], torch.zeros_like(args[0][:, -1:])], 1),))
    with torch.no_grad():
        zeroed = logits_at(ctx.model, torch.tensor([ids]), None, torch.tensor([[len(ids) - 1]]))[0, 0]
    handle.remove()
    expected = torch.softmax(logits, -1)[token] - torch.softmax(zeroed, -1)[token]
    assert attribution.sum().item() == pytest.approx(expected.item(), rel=0.1, abs=1e-6)


def test_kn_selection_threshold_top_k_and_shared_filter(tiny_gemma):
    method = build_method("kn", _load(tiny_gemma), {"threshold": 0.5, "top_k": 2, "max_shared": 0.5})
    attributions = {2: torch.tensor([1.0, 0.6, 0.4, 0.9]), 3: torch.tensor([0.55, -1.0, 0.0, 0.0])}
    activations = {2: torch.ones(4), 3: torch.ones(4)}
    shared = {2: torch.tensor([0.9, 0.0, 0.0, 0.0]), 3: torch.zeros(4)}  # neuron 0 of layer 2 fires on any question
    assert [(layer, index) for layer, index, _ in method._select(attributions, activations, shared)] == [(2, 3), (2, 1)]
    assert [(layer, index) for layer, index, _ in method._select(attributions)] == [(2, 0), (2, 3)]


def test_kn_edit_moves_towards_new_answer(tiny_gemma):
    ctx = _load(tiny_gemma)
    method = build_method("kn", ctx, {"ig_steps": 4, "scale": 4.0, "top_k": 20, "threshold": 0.05})
    ids = encode_prompt(ctx.tokenizer, REQUEST.prompt)
    new_id = ctx.tokenizer(REQUEST.target_text, add_special_tokens=False)["input_ids"][0]
    position = torch.tensor([[len(ids) - 1]])
    with torch.no_grad():
        before = torch.log_softmax(logits_at(ctx.model, torch.tensor([ids]), None, position)[0, 0], -1)
    edit = method.apply(REQUEST)
    with torch.no_grad():
        after = torch.log_softmax(logits_at(ctx.model, torch.tensor([ids]), None, position)[0, 0], -1)
    edit.restore()
    old_id = int(before.argmax())
    assert after[new_id] - after[old_id] > before[new_id] - before[old_id]


# --- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, hparams",
    [
        ("ft", {"layers": [4]}),
        ("ft", {"layers": [-1]}),
        ("ft", {"layers": 2}),
        ("ft", {"layers": ["2"]}),
        ("ft", {"layers": [1, 1]}),
        ("ft", {"lr": "fast"}),
        ("ft", {"lr": 0.0}),
        ("ft", {"steps": 0}),
        ("ft", {"steps": 2.5}),
        ("ft", {"norm_constraint": -1.0}),
        ("ft", {"learning_rate": 0.1}),
        ("kn", {"layers": [9]}),
        ("kn", {"threshold": 1.5}),
        ("kn", {"ig_steps": 0}),
        ("kn", {"top_k": "ten"}),
        ("kn", {"attribute_to": "both"}),
        ("kn", {"target_tokens": "last"}),
    ],
)
def test_bad_hparams_raise_configuration_error(tiny_gemma, method, hparams):
    ctx = _load(tiny_gemma)
    with pytest.raises(ConfigurationError):
        build_method(method, ctx, hparams)


def test_family_defaults_resolve(tiny_gemma, tiny_gpt2):
    gemma = build_method("ft", _load(tiny_gemma), {"layers": []})
    assert gemma.edit_layers == [2]  # [] = the middle layer
    kn = build_method("kn", _load(tiny_gpt2), {})
    assert kn.kn_layers == [2, 3]  # the upper half


# --- end to end on the real default model ---------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method", ["ft", "kn"])
def test_end_to_end_through_lm_eval(method, shared_test_file):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import bizsre_tasks.editing_wrapper  # noqa: F401  (registers edited-hf)
    from bizsre_tasks.tasks.task_generation import BUNDLED_DIR

    model_args = {"method": method, "edit_lang": "en", "protocol": "teacher_forced", "test_file": str(shared_test_file),
                  "verify_restore": True}
    results = lm_eval.simple_evaluate(
        model="edited-hf",
        model_args=model_args,
        tasks=["bizsre_reliability", "bizsre_locality_en"],
        limit=2,
        task_manager=TaskManager(include_path=str(BUNDLED_DIR), metadata=model_args),
    )
    scores = results["results"]
    assert 0.0 <= scores["bizsre_reliability"]["f1,none"] <= 1.0
    assert 0.0 <= scores["bizsre_locality_en"]["f1,none"] <= 1.0
    if method == "ft":
        assert scores["bizsre_reliability"]["f1,none"] >= 0.5
