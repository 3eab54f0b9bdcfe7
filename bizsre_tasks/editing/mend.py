"""MEND (Mitchell et al. 2022, "Fast Model Editing at Scale"): a trained hypernetwork edits in one step.

For a linear layer the fine-tuning gradient of one sequence is a sum of rank-1 outer products
δ_t u_tᵀ (u_t: the layer's input at token t, δ_t: the loss gradient with respect to its output).
MEND feeds each pair, normalised with statistics of the training data, through a small residual
low-rank MLP g([u; δ]) -> [ũ; δ̃] and edits the weight by ΔW = -lr · Σ_t δ̃_t ũ_tᵀ with a learned
per-layer lr. The MLP is shared by layers of the same shape (with per-layer scale and shift) and
starts as the identity, so an untrained MEND is one normalised gradient step.

At edit time: one forward and backward of the edit's target NLL (gradients only for the edited
weights, logits only at target positions), the hypernetwork maps the captured (u, δ) to the update,
which is added in place and undone bit for bit by `WeightEdit`. The hypernetwork is trained by
`bizsre_tasks.training.mend_training` and loaded here from its checkpoint folder (`checkpoint=DIR`,
`load_checkpoint`), without importing the trainer.

Gemma's MLP output passes through `post_feedforward_layernorm`; δ is taken at the output of the
down projection itself (before that norm), which is exactly the gradient of its weight.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bizsre_tasks.editing import checkpoints
from bizsre_tasks.editing.base import (
    AppliedEdit,
    EditFailedError,
    EditingMethod,
    EditRequest,
    WeightBackup,
    WeightEdit,
)
from bizsre_tasks.editing.common import build_batch, logits_at, requires_grad_only
from bizsre_tasks.editing.layout import ModelLayout
from bizsre_tasks.errors import ConfigurationError

METHOD = "mend"
EDITED_PART = "mlp_out"


# --- the hypernetwork ------------------------------------------------------------------------------


class MendBlock(nn.Module):
    """z + s_l ⊙ U ReLU(V z + b) + o_l: low rank, per-layer scale/shift, identity at initialisation (U = 0).

    The non-linearity sits between the two factors (not after the scale/shift, as the paper writes it):
    with U = 0 the paper's form feeds ReLU exactly 0, whose gradient is 0, and would never leave the identity.
    """

    def __init__(self, dim: int, rank: int, n_layers: int):
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=True)
        self.up = nn.Linear(rank, dim, bias=False)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        self.scale = nn.Parameter(torch.ones(n_layers, dim))
        self.shift = nn.Parameter(torch.zeros(n_layers, dim))

    def forward(self, z: torch.Tensor, slot: int) -> torch.Tensor:
        return z + self.scale[slot] * self.up(torch.relu(self.down(z))) + self.shift[slot]


class MendNet(nn.Module):
    """g: [û; δ̂] -> [ũ; δ̃] for the layers of one weight shape."""

    def __init__(self, in_dim: int, out_dim: int, rank: int, n_blocks: int, n_layers: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        dim = in_dim + out_dim
        self.blocks = nn.ModuleList(MendBlock(dim, min(rank, dim), n_layers) for _ in range(n_blocks))

    def forward(self, u: torch.Tensor, delta: torch.Tensor, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.cat([u, delta], dim=-1)
        for block in self.blocks:
            z = block(z, slot)
        return z[..., : self.in_dim], z[..., self.in_dim :]


@dataclass(frozen=True)
class MendConfig:
    """Architecture of the hypernetwork; stored in the checkpoint."""

    layers: tuple[int, ...]
    shapes: tuple[tuple[int, int], ...]  # (out_features, in_features) of each edited weight
    rank: int = 256
    n_blocks: int = 2
    share: bool = True
    init_lr: float = 1e-4

    def to_json(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "shapes": [list(s) for s in self.shapes], "rank": self.rank,
                "n_blocks": self.n_blocks, "share": self.share, "init_lr": self.init_lr}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MendConfig:
        return cls(layers=tuple(int(x) for x in data["layers"]), shapes=tuple((int(a), int(b)) for a, b in data["shapes"]),
                   rank=int(data["rank"]), n_blocks=int(data["n_blocks"]), share=bool(data["share"]),
                   init_lr=float(data["init_lr"]))


class MendEditor(nn.Module):
    """Normalisation statistics, one `MendNet` per weight shape (or per layer), learned log edit rates."""

    def __init__(self, config: MendConfig):
        super().__init__()
        self.config = config
        self.groups: dict[int, tuple[str, int]] = {}  # layer -> (net key, slot inside that net)
        members: dict[str, list[int]] = {}
        for layer, (out_dim, in_dim) in zip(config.layers, config.shapes):
            key = f"{in_dim}x{out_dim}" if config.share else f"layer{layer}"
            members.setdefault(key, []).append(layer)
            self.groups[layer] = (key, len(members[key]) - 1)
        shape_of = dict(zip(config.layers, config.shapes))
        self.nets = nn.ModuleDict()
        for key, layers in members.items():
            out_dim, in_dim = shape_of[layers[0]]
            self.nets[key] = MendNet(in_dim, out_dim, config.rank, config.n_blocks, len(layers))
        # Edit rates live in log space: always positive, and Adam moves them multiplicatively.
        self.log_lr = nn.Parameter(torch.full((len(config.layers),), math.log(config.init_lr)))
        for layer, (out_dim, in_dim) in zip(config.layers, config.shapes):
            self.register_buffer(f"u_mean_{layer}", torch.zeros(in_dim))
            self.register_buffer(f"u_std_{layer}", torch.ones(in_dim))
            self.register_buffer(f"d_mean_{layer}", torch.zeros(out_dim))
            self.register_buffer(f"d_std_{layer}", torch.ones(out_dim))

    def set_statistics(self, layer: int, u_mean, u_std, d_mean, d_std) -> None:
        for name, value in (("u_mean", u_mean), ("u_std", u_std), ("d_mean", d_mean), ("d_std", d_std)):
            getattr(self, f"{name}_{layer}").copy_(value)

    def lr(self, layer: int) -> torch.Tensor:
        return self.log_lr[self.config.layers.index(layer)].exp()

    def factors(self, layer: int, u: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, D) with ΔW = Dᵀ A: A = -lr·ũ (n, in), D = δ̃ (n, out) for the n captured tokens."""
        u_hat = (u - getattr(self, f"u_mean_{layer}")) / getattr(self, f"u_std_{layer}")
        d_hat = (delta - getattr(self, f"d_mean_{layer}")) / getattr(self, f"d_std_{layer}")
        key, slot = self.groups[layer]
        u_tilde, d_tilde = self.nets[key](u_hat, d_hat, slot)
        return -self.lr(layer) * u_tilde, d_tilde


# --- capturing (u, δ) ------------------------------------------------------------------------------


def edited_modules(layout: ModelLayout, layers: tuple[int, ...] | list[int]) -> dict[int, nn.Module]:
    return {layer: layout.module(EDITED_PART, layer) for layer in layers}


def weight_shapes(layout: ModelLayout, layers) -> tuple[tuple[int, int], ...]:
    return tuple(tuple(layout.weight_out_in(EDITED_PART, layer).shape) for layer in layers)


class Capture:
    """Forward hooks keeping each edited module's input (u) and output (to differentiate the loss by)."""

    def __init__(self, modules: dict[int, nn.Module]):
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._handles = [module.register_forward_hook(self._hook(layer)) for layer, module in modules.items()]

    def _hook(self, layer: int):
        def hook(module, args, output):
            self.inputs[layer] = args[0].detach()
            self.outputs[layer] = output

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def per_row_nll(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """Mean NLL over each row's target tokens (-100 = padding), one value per row."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    mask = target_ids != -100
    picked = log_probs.gather(-1, target_ids.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * mask).sum(1) / mask.sum(1).clamp(min=1)


def select_tokens(u: torch.Tensor, delta: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (u, δ) pairs of one row that carry gradient: real tokens whose δ is not exactly zero.

    Causality makes δ zero after the last target position (and, in the last layer, before the first),
    and such pairs would only add noise once normalised.
    """
    keep = attention_mask.bool() & (delta.abs().sum(-1) > 0)
    return u[keep], delta[keep]


# --- the editing method ----------------------------------------------------------------------------


# --- the checkpoint (written by bizsre_tasks.training.mend_training) -----------------------------------


def load_checkpoint(folder: str | os.PathLike, model, layout, edit_lang: str):
    """The trained `MendEditor` for `model`, after checking method, language, base model and shapes.

    The folder format and the method/language/base-model checks are the shared ones
    (`bizsre_tasks.editing.checkpoints`); MEND adds its own check that the edited layers exist and
    have the shapes the hypernetwork was trained for.
    """
    info, tensors = checkpoints.load_checkpoint(folder, METHOD, model=model, edit_lang=edit_lang)
    try:
        config = MendConfig.from_json(info.config["mend"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"MEND checkpoint {folder}: its config lacks the hypernetwork description ({exc})") from None
    for layer in config.layers:
        if not (0 <= layer < layout.num_layers):
            raise ConfigurationError(
                f"MEND checkpoint {folder} edits layer {layer}, but this model has layers 0..{layout.num_layers - 1}: "
                f"it was trained for base model {info.base_model_name}"
            )
    if weight_shapes(layout, config.layers) != config.shapes:
        raise ConfigurationError(f"MEND checkpoint {folder}: the edited weights of this model have other shapes than in training")
    editor = MendEditor(config)
    try:
        editor.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ConfigurationError(f"MEND checkpoint {folder}: {checkpoints.WEIGHTS} does not fit its config ({exc})") from None
    return editor, info


class Mend(EditingMethod):
    name = "mend"
    modifies_weights = True
    default_hparams = {
        # Checkpoint folder written by `bizsre train mend` / scripts/train_mend.py; model_args
        # checkpoint=DIR takes precedence over this key.
        "checkpoint": "",
        # Multiplies the learned per-layer edit rates (1.0 = as trained).
        "lr_scale": 1.0,
        # An update with ||ΔW||_F > max_update_ratio · ||W||_F counts as exploding: EditFailedError.
        "max_update_ratio": 1.0,
    }

    def __init__(self, context, hparams):
        super().__init__(context, hparams)
        self.editor: MendEditor | None = None
        self.checkpoint_info = None  # training.checkpoints.CheckpointInfo once loaded

    def checkpoint_dir(self) -> str:
        chosen = self.context.checkpoint or self.hparams.get("checkpoint") or ""
        if not chosen:
            raise ConfigurationError(
                "method=mend needs a trained MEND checkpoint: train one with `bizsre train mend --edit-lang "
                f"{self.context.edit_lang} --out DIR` (or scripts/train_mend.py), then pass checkpoint=DIR in model_args "
                "or `checkpoint: DIR` in the hparams file"
            )
        return str(chosen)

    def validate_hparams(self) -> None:
        if not self.hparams["lr_scale"] > 0:
            raise ConfigurationError(f"hparams 'lr_scale' must be > 0, got {self.hparams['lr_scale']}")
        if not self.hparams["max_update_ratio"] > 0:
            raise ConfigurationError(f"hparams 'max_update_ratio' must be > 0, got {self.hparams['max_update_ratio']}")
        # Load and check the checkpoint now, so that a wrong one stops the run before any evaluation.
        self._load()

    def _load(self) -> None:
        if self.editor is not None:
            return
        editor, info = load_checkpoint(self.checkpoint_dir(), self.model, self.layout, self.context.edit_lang)
        self.editor = editor.to(self.context.device).eval()
        self.editor.requires_grad_(False)
        self.checkpoint_info = info

    def prepare(self) -> None:
        self._load()

    @property
    def layers(self) -> tuple[int, ...]:
        return self.editor.config.layers

    def apply(self, request: EditRequest) -> AppliedEdit:
        self._load()
        device = self.context.device
        batch = build_batch(self.tokenizer, [request.prompt], [request.target_text], device)
        modules = edited_modules(self.layout, self.layers)
        parameters = [module.weight for module in modules.values()]
        with torch.enable_grad(), requires_grad_only(parameters), Capture(modules) as capture:
            logits = logits_at(self.model, batch.input_ids, batch.attention_mask, batch.positions)
            loss = per_row_nll(logits, batch.target_ids).sum()
            if not torch.isfinite(loss):
                raise EditFailedError(f"MEND: edit loss is {loss.item()}")
            outputs = [capture.outputs[layer] for layer in self.layers]
            grads = torch.autograd.grad(loss, outputs)
        updates = {}
        with torch.no_grad():
            for layer, grad in zip(self.layers, grads):
                u, delta = select_tokens(capture.inputs[layer][0].float(), grad[0].float(), batch.attention_mask[0])
                a, d = self.editor.factors(layer, u, delta)
                updates[layer] = (d.T @ a) * self.hparams["lr_scale"]  # (out, in)
        views = {str(layer): self.layout.weight_out_in(EDITED_PART, layer) for layer in self.layers}
        backup = WeightBackup(views)
        try:
            with torch.no_grad():
                for layer in self.layers:
                    weight = views[str(layer)]
                    update = updates[layer]
                    if not torch.isfinite(update).all():
                        raise EditFailedError(f"MEND: non-finite update for layer {layer}")
                    ratio = (update.norm() / weight.float().norm().clamp(min=1e-12)).item()
                    if ratio > self.hparams["max_update_ratio"]:
                        raise EditFailedError(
                            f"MEND: exploding update in layer {layer} (|ΔW|/|W| = {ratio:.3g} > max_update_ratio "
                            f"{self.hparams['max_update_ratio']})"
                        )
                    weight.add_(update.to(weight.dtype))
        except BaseException:
            backup.restore()
            raise
        return WeightEdit(backup)
