"""AlphaEdit (Fang et al., ICLR 2025, "AlphaEdit: Null-Space Constrained Knowledge Editing for Language
Models"): MEMIT whose update at every edited layer only acts on key directions the preserved knowledge
does not use.

Everything up to the per-layer solve is MEMIT's (memit.py): δ at the window's last layer, the gap spread
over the layers bottom to top, residuals R mapped through the post-MLP norm. The solve differs:

- Preserved keys K0 are the corpus keys of the statistics C = E[k kᵀ] (`second_moments`). Their
  (approximate) null space is spanned by the eigenvectors Û of C whose eigenvalue is below
  `nullspace_threshold` × the mean eigenvalue (trace C / d). P = Û Ûᵀ.
- The update is ΔW = Δ P with Δ (K_p K_pᵀ P + K1 K1ᵀ P + L2·I) = R K1ᵀ P (keys as columns), K1 the
  keys of the edit(s) being made, K_p those of earlier edits of a sequence. Because the update is
  ΔW P, ΔW k0 = 0 exactly for any k0 with P k0 = 0: knowledge in the preserved span is untouched.
  It is solved in Û's coordinates (ΔW = Y Ûᵀ, an r×r system instead of d×d); that is the same ΔW.

Scaling: our C is a mean over keys (as the AlphaEdit code's), but key sizes differ between models,
so the threshold and L2 are relative to C's mean eigenvalue s, not absolute (the paper's code uses an
absolute 2e-2 and L2 = 10 on Llama 3 8B). On Gemma 3 270M with the 10,000-record training file,
layer 4 (2,048 key dimensions): threshold 2e-2 leaves 30 null directions, 5e-2 leaves 390 (carrying
0.66% of the key energy), 0.1 leaves 896 (2.5%). 5e-2 is the default: 30 directions are too few to
hold an edit. L2 = 1 (× s) keeps the fit of a typical edit key, whose null-space part alone has a
squared norm of tens of s, above ~95% (a scale argument, not a tuned value).

Sequences: between `begin_sequence()` and `end_sequence()` edits pile up; each applied edit's keys
are remembered per layer (K_p). `previous_edits: penalty` (the paper) adds ‖ΔW K_p‖² to the
objective; `protect` also removes K_p's directions from the null space, so later updates leave
earlier edits' keys exactly where they were (at the cost of null-space room).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from bizsre_tasks.editing.base import WeightEdit
from bizsre_tasks.editing.memit import Memit
from bizsre_tasks.editing.rome import SHARED_HPARAMS
from bizsre_tasks.errors import ConfigurationError

logger = logging.getLogger(__name__)

PREVIOUS_EDITS = ("penalty", "protect")


def nullspace_basis(mom2: torch.Tensor, threshold: float) -> torch.Tensor:
    """Û (d, r), float64: orthonormal eigenvectors of C with eigenvalue < threshold × mean eigenvalue."""
    eigenvalues, vectors = torch.linalg.eigh(mom2.double())
    scale = eigenvalues.mean().clamp(min=1e-30)
    return vectors[:, eigenvalues < threshold * scale].contiguous()


def without_span(basis: torch.Tensor, keys: torch.Tensor, tolerance: float = 1e-10) -> torch.Tensor:
    """`basis` (d, r) narrowed to its directions orthogonal to every row of `keys` (m, d)."""
    if keys.shape[0] == 0 or basis.shape[1] == 0:
        return basis
    inside = basis.T @ keys.T  # (r, m): the keys' coordinates in the basis
    left, singular, _ = torch.linalg.svd(inside, full_matrices=True)
    rank = int((singular > tolerance * singular.max().clamp(min=1e-300)).sum())
    return basis @ left[:, rank:]


def projected_update(basis: torch.Tensor, keys: torch.Tensor, residuals: torch.Tensor, l2: float,
                     previous: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW (d_out, d), float64: the minimiser of ‖K ΔWᵀ − R‖² + ‖K_p ΔWᵀ‖² + l2‖ΔW‖² among ΔW = ΔW P,
    P = basis basisᵀ; keys K (n, d) and residuals R (n, d_out) as rows, `previous` = K_pᵀ K_p (d, d)."""
    basis = basis.double()
    keys, residuals = keys.double().to(basis.device), residuals.double().to(basis.device)
    projected = keys @ basis  # (n, r)
    system = projected.T @ projected + l2 * torch.eye(basis.shape[1], dtype=torch.float64, device=basis.device)
    if previous is not None:
        system = system + basis.T @ previous @ basis
    coordinates = torch.linalg.solve(system, projected.T @ residuals)  # Y: (r, d_out)
    return (basis @ coordinates).T


class _SequenceEdit(WeightEdit):
    """An edit made inside a sequence: restoring it also forgets its keys."""

    def __init__(self, edit: WeightEdit, memory: list[dict[int, torch.Tensor]], entry: dict[int, torch.Tensor]):
        super().__init__(edit._backup)
        self._memory, self._entry = memory, entry

    def restore(self) -> None:
        super().restore()
        self._memory[:] = [entry for entry in self._memory if entry is not self._entry]


class AlphaEdit(Memit):
    name = "alphaedit"
    default_hparams: dict[str, Any] = {
        "layers": None,  # consecutive layers to edit; None: automatic (MEMIT's window)
        # eigen-directions of C with eigenvalue below this × C's mean eigenvalue form the null space the update acts in
        "nullspace_threshold": 0.05,
        "L2": 1.0,  # weight of ‖ΔW‖² in the solve, × C's mean eigenvalue
        # earlier edits of a sequence: ‖ΔW K_p‖² in the objective ("penalty", the paper's) or their keys also projected out ("protect")
        "previous_edits": "penalty",
        **SHARED_HPARAMS,
    }
    family_hparams: dict[str, dict[str, Any]] = {}

    def __init__(self, context, hparams):
        super().__init__(context, hparams)
        self._key_scale: dict[int, float] = {}
        self._sequence: list[dict[int, torch.Tensor]] | None = None  # per applied edit: layer -> its keys (n, d)
        self._pending: dict[int, torch.Tensor] = {}

    def _validate_solver_hparams(self) -> None:
        hp = self.hparams
        for key in ("nullspace_threshold", "L2"):
            value = hp[key]
            if not (value > 0 and value < float("inf")):
                raise ConfigurationError(f"hparams '{key}' must be a positive finite number, got {value!r}")
        if hp["previous_edits"] not in PREVIOUS_EDITS:
            raise ConfigurationError(f"hparams 'previous_edits' must be one of {', '.join(PREVIOUS_EDITS)}, got {hp['previous_edits']!r}")

    def _factor(self, layer: int, mom2: torch.Tensor) -> torch.Tensor:
        basis = nullspace_basis(mom2, self.hparams["nullspace_threshold"])
        if basis.shape[1] == 0:
            raise ConfigurationError(
                f"alphaedit: no key direction of layer {layer} has an eigenvalue below hparams 'nullspace_threshold' "
                f"({self.hparams['nullspace_threshold']}) × the mean eigenvalue; raise it")
        self._key_scale[layer] = float(torch.diagonal(mom2).double().mean())
        logger.info("alphaedit: layer %d null space has %d of %d directions", layer, basis.shape[1], basis.shape[0])
        return basis.to(self.context.device)  # the per-edit solve runs on the model's device

    def nullspace_dims(self) -> dict[int, int]:
        return {layer: int(basis.shape[1]) for layer, basis in self._layer_stats.items()}

    # --- sequences --------------------------------------------------------------------------------
    def begin_sequence(self) -> None:
        """From now on applied edits stay in place; each one's keys are remembered (K_p) until `end_sequence`."""
        self._sequence = []

    def end_sequence(self) -> None:
        """Forget the remembered keys; later edits are solved as single edits again."""
        self._sequence = None

    def _previous_keys(self, layer: int) -> torch.Tensor | None:
        if not self._sequence:
            return None
        return torch.cat([entry[layer] for entry in self._sequence])

    def _layer_update(self, layer: int, keys: torch.Tensor, residuals: torch.Tensor) -> torch.Tensor:
        basis, previous = self._layer_stats[layer], self._previous_keys(layer)
        gram = None
        if previous is not None:
            if self.hparams["previous_edits"] == "protect":
                basis = without_span(basis, previous)
            else:
                gram = previous.T @ previous
        self._pending[layer] = keys.detach().double().to(basis.device)
        return projected_update(basis, keys, residuals, self.hparams["L2"] * self._key_scale[layer], gram)

    def _guarded(self, run) -> WeightEdit:
        self._pending = {}
        edit = super()._guarded(run)
        if self._sequence is None:
            return edit
        entry, self._pending = self._pending, {}
        self._sequence.append(entry)
        return _SequenceEdit(edit, self._sequence, entry)
