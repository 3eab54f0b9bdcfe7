"""MEMIT (Meng et al. 2023, "Mass-Editing Memory in a Transformer"): one edit spread over a window
of consecutive MLP output projections.

1. Target: δ is optimised at the MLP output of the window's LAST layer exactly as in ROME
   (`value_delta`); the residual stream after that layer with δ applied is the target z.
   Optimising at the MLP output rather than in the residual stream keeps the target reachable on
   post-norm architectures (Gemma's post_feedforward_layernorm, gains up to ~700): a residual-stream
   target written straight into the projection would be rescaled by that norm.
2. Spreading: for each layer l of the window, bottom to top, with the edits of the layers below
   already in place, the remaining gap z − h (at the last layer) is divided by the number of layers
   left; that share r is the change wanted in layer l's contribution to the residual stream. Where
   a norm follows the MLP, r is mapped through it: the new MLP output m* solves
   norm(m*) ≈ norm(m) + r (a small least-squares problem); otherwise m* = m + r.
3. Update (MEMIT's batched least squares, one column per context row of the edit):
   ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹ with K the keys, R = M* − M and C = E[k kᵀ] (see `second_moments`).
   λ (`mom2_weight`) trades how much of r each layer takes against how much other keys move.
"""

from __future__ import annotations

from typing import Any

import torch

from bizsre_tasks.editing.base import EditFailedError, EditRequest, WeightEdit
from bizsre_tasks.editing.common import naive_mode
from bizsre_tasks.editing.kv.second_moments import regularised
from bizsre_tasks.editing.kv.value_delta import DeltaAtSubject, EditBatch, first_output
from bizsre_tasks.editing.rome import SHARED_HPARAMS, KeyValueEditor, auto_layer
from bizsre_tasks.editing.tensors.body import forward_until
from bizsre_tasks.errors import ConfigurationError

# The automatic window: this many consecutive layers ending at ROME's automatic layer (on the 270M
# Gemma: 3,4,5; measured against 4,5,6, which generalised worse in Chinese and localised worse).
AUTO_WINDOW = 3


def run_until(model, layers: torch.nn.ModuleList, batch: EditBatch, last: int) -> torch.Tensor:
    """Forward up to and including layer `last` (nothing above it, no LM head); returns that layer's
    output hidden state at the subject column of every row."""
    with torch.no_grad():
        return forward_until(lambda: batch.forward(model), layers[last],
                             capture=lambda output: first_output(output)[:, batch.split].detach(),
                             stop=not naive_mode())  # the benchmark's textbook path runs the whole model


def pre_norm_target(norm: torch.nn.Module | None, values: torch.Tensor, change: torch.Tensor, iterations: int = 100,
                    proximity: float = 1e-3) -> torch.Tensor:
    """MLP outputs m* with norm(m*) ≈ norm(values) + change, rows independent.

    A scale-invariant norm (RMSNorm) maps a whole ray of m* to the same output; the proximity term
    picks the point nearest the current output, so the update does not also rescale the value
    (which would leak into every other key the update touches)."""
    values, change = values.float(), change.float()
    if norm is None:
        return values + change
    with torch.no_grad():
        wanted = norm(values) + change
        out_scale = wanted.pow(2).sum(-1, keepdim=True).clamp(min=1e-12)
        in_scale = values.pow(2).sum(-1, keepdim=True).clamp(min=1e-12)
    shift = torch.zeros_like(values, requires_grad=True)
    optimiser = torch.optim.LBFGS([shift], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        miss = ((norm(values + shift) - wanted) ** 2 / out_scale).sum()
        loss = miss + proximity * (shift.pow(2) / in_scale).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return (values + shift).detach()


class Memit(KeyValueEditor):
    name = "memit"
    default_hparams: dict[str, Any] = {
        "layers": None,  # consecutive layers to edit; None: automatic (see AUTO_WINDOW)
        "mom2_weight": 100.0,  # λ in (λC + KKᵀ)⁻¹
        **SHARED_HPARAMS,
    }
    family_hparams: dict[str, dict[str, Any]] = {}

    def edit_layers(self) -> list[int]:
        layers = self.hparams["layers"]
        if layers is None:
            top = auto_layer(self.layout.model_type, self.layout.num_layers)
            return list(range(max(0, top - AUTO_WINDOW + 1), top + 1))
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ConfigurationError(f"hparams 'layers' must be a non-empty list of layer indices, got {layers!r}")
        for layer in layers:
            self.layout.check_layer(layer, "layers")
        if len(set(layers)) != len(layers):
            raise ConfigurationError(f"hparams 'layers' lists a layer twice: {layers}")
        return sorted(layers)

    def validate_hparams(self) -> None:
        super().validate_hparams()
        self._validate_solver_hparams()

    def _validate_solver_hparams(self) -> None:
        """Checks of the keys the per-layer solve uses (AlphaEdit replaces them)."""
        if not self.hparams["mom2_weight"] > 0:
            raise ConfigurationError(f"hparams 'mom2_weight' must be positive, got {self.hparams['mom2_weight']!r}")

    def _factor(self, layer: int, mom2: torch.Tensor) -> torch.Tensor:
        # MEMIT needs C itself (λC + KKᵀ changes with every edit); kept on the model's device, where the
        # per-edit solve runs (on a GPU a d×d float64 solve on the CPU would cost more than the edit)
        return regularised(mom2).to(self.context.device)

    def _layer_update(self, layer: int, keys: torch.Tensor, residuals: torch.Tensor) -> torch.Tensor:
        """ΔW (d_out, d_in), float64 on C's device, for one layer's keys K (n, d_in) and residuals R (n, d_out)."""
        cov = self._layer_stats[layer]
        keys, residuals = keys.to(cov.device), residuals.to(cov.device)
        system = self.hparams["mom2_weight"] * cov + keys.T @ keys
        return torch.linalg.solve(system, keys.T @ residuals).T  # ΔW = R K (λC + KᵀK)⁻¹

    def apply_many(self, requests: list[EditRequest]) -> WeightEdit:
        """All `requests` installed by one update per layer (MEMIT's batch edit: every case's keys are
        columns of the same least-squares problem); one handle restores them all."""
        if not requests:
            raise ConfigurationError("apply_many needs at least one request")
        self.ensure_prepared()
        return self._guarded(lambda: self._edit_many(requests))

    def _edit(self, request: EditRequest) -> None:
        self._edit_many([request])

    def _edit_many(self, requests: list[EditRequest]) -> None:
        layers = self.edit_layers()
        last = layers[-1]
        stack = self.layout.module("layers")
        computed = [self._delta(request) for request in requests]  # all against the weights before this update
        batch = self._batch([rows for rows, _ in computed])
        rewrite = batch.rewrite  # each case's rewrite rows; its KL row takes no part in the update
        deltas = torch.stack([result.delta for _, result in computed])[batch.row_case]  # each row its case's δ
        h_start = run_until(self.model, stack, batch, last)[rewrite]
        with DeltaAtSubject(self.layout.module("mlp_out", last), batch.split, lambda values: deltas):
            z = run_until(self.model, stack, batch, last)[rewrite]
        shares = []
        for i, layer in enumerate(layers):
            with DeltaAtSubject(self.layout.module("mlp_out", layer), batch.split) as probe:
                h = run_until(self.model, stack, batch, last)[rewrite]
            keys, values = probe.keys[rewrite].double(), probe.values[rewrite]
            change = (z - h) / (len(layers) - i)
            targets = pre_norm_target(self.layout.optional_module("post_mlp_norm", layer), values, change)
            residuals = (targets - values.float()).double()  # R: (n, d_out)
            if not torch.isfinite(residuals).all():
                raise EditFailedError(f"{self.name}: the target of layer {layer} is not finite")
            update = self._layer_update(layer, keys, residuals)
            weight = self.layout.weight_out_in("mlp_out", layer)
            self._check_update(layer, weight, update)
            with torch.no_grad():
                weight.add_(update.to(device=weight.device, dtype=weight.dtype))
            shares.append(float(update.norm() / weight.float().norm()))
        h_end = run_until(self.model, stack, batch, last)[rewrite]
        gap = float((z - h_end).norm() / (z - h_start).norm().clamp(min=1e-12))
        self.last_info = {"layers": layers, "nll": max(result.nll for _, result in computed),
                          "steps": max(result.steps for _, result in computed),
                          "delta_ratio": max(float(result.delta.norm() / result.values[0].float().norm()) for _, result in computed),
                          "update_ratios": shares, "remaining_gap": gap, "cases": len(requests)}
