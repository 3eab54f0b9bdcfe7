"""The one-pass head objective (`editing/tensors/head_softmax.py`) against the full softmax it replaces."""

from __future__ import annotations

import pytest
import torch

from bizsre_tasks.editing.common import naive
from bizsre_tasks.editing.tensors import head_softmax


class _TinyHeadModel(torch.nn.Module):
    """Just enough of a causal LM for HeadObjective: an output projection and a config."""

    def __init__(self, vocab: int, width: int, bias: bool, softcap: float | None = None):
        super().__init__()
        self.lm_head = torch.nn.Linear(width, vocab, bias=bias)
        self.config = type("Config", (), {"final_logit_softcapping": softcap})()
        self.requires_grad_(False)

    def get_output_embeddings(self):
        return self.lm_head


def _exact(model, target_hidden, target_ids, drift_hidden, drift_reference):
    log_probs = torch.log_softmax(model.lm_head(torch.cat([target_hidden, drift_hidden])).float(), -1)
    n = target_hidden.shape[0]
    picked = log_probs[:n].gather(-1, target_ids[:, None]).squeeze(-1)
    original = torch.log_softmax(model.lm_head(drift_reference), -1)
    kl = (original.exp() * (original - log_probs[n:])).sum(-1)
    return picked, kl


@pytest.mark.parametrize("bias", [False, True])
def test_fast_route_matches_full_softmax_in_value_and_gradient(monkeypatch, bias):
    # A chunk smaller than the vocabulary exercises the running maximum across chunks.
    monkeypatch.setattr(head_softmax, "CHUNK_ROWS", 7)
    torch.manual_seed(0)
    model = _TinyHeadModel(vocab=50, width=16, bias=bias)
    model.lm_head.weight.mul_(60)  # logits in the hundreds: a naive exp would overflow without the running maximum
    start_targets, start_drift = torch.randn(5, 16), torch.randn(2, 16)
    target_ids = torch.randint(0, 50, (5,))
    shift = torch.randn(16) * 0.3

    objective = head_softmax.HeadObjective(model)
    assert objective.head is model.lm_head  # the fast route is the one under test
    objective(start_targets, target_ids, start_drift)  # records the original distribution
    fast_shift = shift.clone().requires_grad_(True)
    fast_picked, fast_kl = objective(start_targets + fast_shift, target_ids, start_drift + fast_shift)
    (fast_picked.sum() + fast_kl.sum()).backward()

    exact_shift = shift.clone().requires_grad_(True)
    exact_picked, exact_kl = _exact(model, start_targets + exact_shift, target_ids, start_drift + exact_shift, start_drift)
    (exact_picked.sum() + exact_kl.sum()).backward()

    torch.testing.assert_close(fast_picked, exact_picked, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_kl, exact_kl, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_shift.grad, exact_shift.grad, atol=1e-4, rtol=1e-4)
    assert float(exact_kl.max()) > 1e-3  # the shift moved a distribution: the KL term was really compared


def test_kl_is_zero_at_the_original_rows():
    torch.manual_seed(1)
    model = _TinyHeadModel(vocab=40, width=8, bias=False)
    objective = head_softmax.HeadObjective(model)
    hidden, drift = torch.randn(3, 8), torch.randn(1, 8)
    _, first = objective(hidden, torch.tensor([1, 2, 3]), drift)
    _, again = objective(hidden, torch.tensor([1, 2, 3]), drift)
    assert float(first.abs().max()) == 0.0 and float(again.abs().max()) < 1e-5


@pytest.mark.parametrize("case", ["softcap", "trained_head", "naive"])
def test_exact_route_where_the_shortcut_does_not_hold(case):
    torch.manual_seed(2)
    model = _TinyHeadModel(vocab=30, width=8, bias=False, softcap=30.0 if case == "softcap" else None)
    if case == "trained_head":
        model.lm_head.weight.requires_grad_(True)
    if case == "naive":
        with naive(model):
            objective = head_softmax.HeadObjective(model)
    else:
        objective = head_softmax.HeadObjective(model)
    assert objective.head is None
    hidden = torch.randn(2, 8)
    picked, kl = objective(hidden, torch.tensor([4, 5]), None)
    expected = torch.log_softmax(model.lm_head(hidden), -1)[[0, 1], [4, 5]]
    if case == "softcap":
        capped = torch.tanh(model.lm_head(hidden) / 30.0) * 30.0
        expected = torch.log_softmax(capped, -1)[[0, 1], [4, 5]]
    torch.testing.assert_close(picked, expected)
    assert kl is None


@pytest.mark.parametrize("bias", [False, True])
def test_chunked_argmax_matches_full_logits(monkeypatch, bias):
    monkeypatch.setattr(head_softmax, "CHUNK_ROWS", 6)
    torch.manual_seed(3)
    model = _TinyHeadModel(vocab=45, width=12, bias=bias)
    hidden = torch.randn(3, 4, 12)
    expected = model.lm_head(hidden).argmax(-1)
    assert torch.equal(head_softmax.head_argmax(model, hidden), expected)
    # A maximum in the last, partial chunk is found too.
    model.lm_head.weight[44] = hidden[0, 0] * 100
    assert int(head_softmax.head_argmax(model, hidden)[0, 0]) == 44
