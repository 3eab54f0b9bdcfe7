"""AlphaEdit: the null-space projection keeps preserved keys' outputs, end-to-end edits restore bitwise,
sequences keep earlier edits, apply_many (MEMIT and AlphaEdit) is one update, hparams are checked."""

from __future__ import annotations

import pytest
import torch

from bizsre_tasks.editing.alphaedit import (
    nullspace_basis,
    projected_update,
    without_span,
)
from bizsre_tasks.editing_wrapper import model_checksum
from bizsre_tasks.errors import ConfigurationError
from tests.test_rome_memit import OTHER_REQUEST, TINY_REQUEST, _method, _nll

# The tiny models' key statistics (bundled sample, 64 key dimensions) have no eigenvalue below 0.1 × the
# mean; at 0.3 about 18 directions are left for the update.
TINY = {"layers": [1, 2], "nullspace_threshold": 0.3, "L2": 0.01}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIZSRE_CACHE_DIR", str(tmp_path / "cache"))


def _spy_updates(method):
    """Record every (layer, keys, float64 update) the method solves for."""
    seen = []
    solve = method._layer_update

    def spy(layer, keys, residuals):
        update = solve(layer, keys, residuals)
        seen.append((layer, keys.detach().double().cpu(), update))
        return update

    method._layer_update = spy
    return seen


# --- (a) the projection on a known null space -------------------------------------------------------
def test_projection_keeps_preserved_keys_and_moves_the_edited_one():
    torch.manual_seed(0)
    d, d_out, rank = 16, 8, 10
    span = torch.linalg.qr(torch.randn(d, rank, dtype=torch.float64))[0]  # preserved keys live here
    preserved = torch.randn(200, rank, dtype=torch.float64) @ span.T
    mom2 = preserved.T @ preserved / 200
    basis = nullspace_basis(mom2, 1e-8)
    assert basis.shape == (d, d - rank)
    weight = torch.randn(d_out, d, dtype=torch.float64)
    key = torch.randn(1, d, dtype=torch.float64)
    residual = torch.randn(1, d_out, dtype=torch.float64)
    update = projected_update(basis, key, residual, l2=1e-6)
    # preserved outputs: (W + ΔW) k0 == W k0 to float64 precision
    moved = ((weight + update) @ preserved.T - weight @ preserved.T).abs().max()
    assert moved < 1e-10 * preserved.abs().max(), moved
    # the edited key reaches its target W k1 + r
    miss = ((weight + update) @ key.T - (weight @ key.T + residual.T)).norm()
    assert miss < 1e-3 * residual.norm(), miss
    # without the projection (P = I) the preserved outputs do move: the check above can fail
    plain = projected_update(torch.eye(d, dtype=torch.float64), key, residual, l2=1e-6)
    assert (plain @ preserved.T).abs().max() > 1e-2

    # The r×r solve equals the paper's form Δ = R K1ᵀ P (K_p K_pᵀ P + K1 K1ᵀ P + L2·I)⁻¹ (keys as columns).
    keys, residuals, previous = torch.randn(3, d, dtype=torch.float64), torch.randn(3, d_out, dtype=torch.float64), torch.randn(4, d, dtype=torch.float64)
    projector = basis @ basis.T
    system = previous.T @ previous @ projector + keys.T @ keys @ projector + 0.5 * torch.eye(d, dtype=torch.float64)
    paper = residuals.T @ keys @ projector @ torch.linalg.inv(system)
    ours = projected_update(basis, keys, residuals, 0.5, previous.T @ previous)
    assert torch.allclose(ours, paper, atol=1e-10, rtol=1e-8)
    # protecting earlier keys: a narrowed basis makes the update vanish on them exactly
    narrowed = without_span(basis, previous[:2])
    assert narrowed.shape == (d, d - rank - 2)
    assert (projected_update(narrowed, keys, residuals, 0.5) @ previous[:2].T).abs().max() < 1e-10


# --- (b) end to end on a post-norm Gemma and a Llama -------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_gemma", "tiny_llama"])
def test_alphaedit_edits_inside_the_null_space_and_restores_bitwise(fixture, request):
    method, model, tokenizer = _method("alphaedit", request.getfixturevalue(fixture), TINY)
    statistics = {}
    factor = method._factor
    method._factor = lambda layer, mom2: (statistics.setdefault(layer, mom2), factor(layer, mom2))[1]
    method.ensure_prepared()
    assert all(dims > 0 for dims in method.nullspace_dims().values())
    before_sum, before = model_checksum(model), _nll(model, tokenizer)
    seen = _spy_updates(method)
    applied = method.apply(TINY_REQUEST)
    after = _nll(model, tokenizer)
    assert model_checksum(model) != before_sum
    assert after < before - 0.1, (before, after, method.last_info)
    assert [layer for layer, _, _ in seen] == [1, 2]
    for layer, _, update in seen:
        # the preserved span, from C itself: eigenvectors with eigenvalue ≥ threshold × mean eigenvalue
        eigenvalues, vectors = torch.linalg.eigh(statistics[layer])
        kept = vectors[:, eigenvalues >= TINY["nullspace_threshold"] * eigenvalues.mean()]
        assert 0 < kept.shape[1] < kept.shape[0]
        assert update.norm() > 0
        assert (update @ kept).norm() < 1e-10 * update.norm()  # ΔW k0 = 0 for every preserved direction
    applied.restore()
    assert model_checksum(model) == before_sum
    assert _nll(model, tokenizer) == before


# --- (c) sequences -------------------------------------------------------------------------------------
@pytest.mark.parametrize("previous_edits", ["protect", "penalty"])
def test_sequence_keeps_earlier_edits_and_end_forgets(tiny_gemma, previous_edits):
    method, model, _ = _method("alphaedit", tiny_gemma, {**TINY, "previous_edits": previous_edits})
    seen = _spy_updates(method)
    original = model_checksum(model)
    # B on top of A outside a sequence: an update that does not know A
    first = method.apply(TINY_REQUEST)
    seen.clear()
    method.apply(OTHER_REQUEST).restore()
    unaware = [update for _, _, update in seen]
    first.restore()
    assert model_checksum(model) == original

    seen.clear()
    method.begin_sequence()
    first = method.apply(TINY_REQUEST)
    keys_a = {layer: keys for layer, keys, _ in seen}
    seen.clear()
    second = method.apply(OTHER_REQUEST)
    assert len(method._sequence) == 2
    for (layer, _, update), blind in zip(seen, unaware):
        leak = (update @ keys_a[layer].T).norm() / (update.norm() * keys_a[layer].norm())  # B's update on A's keys
        if previous_edits == "protect":
            assert leak < 1e-10, (layer, leak)  # A's outputs unchanged to float precision
        else:  # the paper's soft penalty: much less than the update that does not know A
            assert leak < 0.05 * (blind @ keys_a[layer].T).norm() / (blind.norm() * keys_a[layer].norm()), layer
    second.restore()
    assert len(method._sequence) == 1  # a restored edit's keys are forgotten

    method.end_sequence()  # A stays in place, its keys are forgotten: B is solved as outside a sequence
    seen.clear()
    method.apply(OTHER_REQUEST).restore()
    assert all(torch.equal(a, b) for a, b in zip(unaware, [update for _, _, update in seen]))
    first.restore()
    assert model_checksum(model) == original


# --- (d) several edits in one update -----------------------------------------------------------------------
@pytest.mark.parametrize("name,hparams", [("memit", {"layers": [1, 2], "mom2_weight": 10.0}), ("alphaedit", TINY)])
def test_apply_many_is_one_update_for_all_requests(tiny_gemma, name, hparams):
    method, model, tokenizer = _method(name, tiny_gemma, hparams)
    requests = [TINY_REQUEST, OTHER_REQUEST]
    before_sum = model_checksum(model)
    before = [_nll(model, tokenizer, request) for request in requests]
    seen = _spy_updates(method)
    applied = method.apply_many(requests)
    rows = [len(method._rows(request).rows) - 1 for request in requests]  # rewrite rows (the KL row is not a key)
    assert [layer for layer, _, _ in seen] == [1, 2]  # one solve per layer for both cases
    assert all(keys.shape[0] == sum(rows) for _, keys, _ in seen)
    after = [_nll(model, tokenizer, request) for request in requests]
    assert all(a < b - 0.1 for a, b in zip(after, before)), (before, after)
    assert method.last_info["cases"] == 2
    applied.restore()
    assert model_checksum(model) == before_sum


# --- (e) hyperparameter checks ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hparams,message",
    [
        ({"nullspace_threshold": -0.1}, "'nullspace_threshold' must be a positive"),
        ({"nullspace_threshold": 0.0}, "'nullspace_threshold' must be a positive"),
        ({"nullspace_threshold": float("inf")}, "'nullspace_threshold' must be a positive"),
        ({"L2": -1.0}, "'L2' must be a positive"),
        ({"L2": 0}, "'L2' must be a positive"),
        ({"previous_edits": "forget"}, "'previous_edits' must be one of"),
        ({"nullspace_threshold": "big"}, "'nullspace_threshold'.*expects float"),
        ({"mom2_weight": 1.0}, "unknown key 'mom2_weight'"),
        ({"layers": [1, 9]}, "out of range"),
    ],
)
def test_bad_hparams_are_configuration_errors(tiny_gemma, hparams, message):
    with pytest.raises(ConfigurationError, match=message):
        _method("alphaedit", tiny_gemma, {"layers": [1, 2], **hparams}, sharpen=False)


def test_empty_null_space_is_a_configuration_error(tiny_gemma):
    method, _, _ = _method("alphaedit", tiny_gemma, {"layers": [1, 2], "nullspace_threshold": 1e-6}, sharpen=False)
    with pytest.raises(ConfigurationError, match="nullspace_threshold"):
        method.ensure_prepared()
