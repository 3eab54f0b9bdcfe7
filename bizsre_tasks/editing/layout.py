"""Where the parts editing methods touch live in each architecture: a table of module-name templates.

`{layer}` stands for the layer index. A family missing here (or a part missing from a family) can be
supplied in hparams under `layout:`, for example
    layout: {layers: model.layers, mlp_out: "model.layers.{layer}.mlp.down_proj", ...}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bizsre_tasks.errors import ConfigurationError

PARTS = ("layers", "mlp", "mlp_in", "mlp_out", "post_mlp_norm", "embed", "final_norm", "lm_head")
# Parts an architecture may legitimately lack (GPT-2 has no norm after its MLP).
OPTIONAL_PARTS = ("post_mlp_norm",)

_LLAMA_LIKE = {
    "layers": "model.layers",
    "mlp": "model.layers.{layer}.mlp",
    "mlp_in": "model.layers.{layer}.mlp.up_proj",
    "mlp_out": "model.layers.{layer}.mlp.down_proj",
    "embed": "model.embed_tokens",
    "final_norm": "model.norm",
    "lm_head": "lm_head",
}

LAYOUT_TEMPLATES: dict[str, dict[str, str]] = {
    "gemma3_text": {**_LLAMA_LIKE, "post_mlp_norm": "model.layers.{layer}.post_feedforward_layernorm"},
    "gemma2": {**_LLAMA_LIKE, "post_mlp_norm": "model.layers.{layer}.post_feedforward_layernorm"},
    "gemma": dict(_LLAMA_LIKE),
    "llama": dict(_LLAMA_LIKE),
    "qwen2": dict(_LLAMA_LIKE),
    "qwen3": dict(_LLAMA_LIKE),
    "mistral": dict(_LLAMA_LIKE),
    "gpt2": {
        "layers": "transformer.h",
        "mlp": "transformer.h.{layer}.mlp",
        "mlp_in": "transformer.h.{layer}.mlp.c_fc",
        "mlp_out": "transformer.h.{layer}.mlp.c_proj",
        "embed": "transformer.wte",
        "final_norm": "transformer.ln_f",
        "lm_head": "lm_head",
    },
}


@dataclass
class ModelLayout:
    model: torch.nn.Module
    model_type: str
    templates: dict[str, str]

    @classmethod
    def for_model(cls, model: torch.nn.Module, overrides: dict[str, Any] | None = None) -> ModelLayout:
        model_type = getattr(getattr(model, "config", None), "model_type", "unknown")
        templates = dict(LAYOUT_TEMPLATES.get(model_type, {}))
        for key, value in (overrides or {}).items():
            if key not in PARTS:
                raise ConfigurationError(f"hparams layout: unknown part '{key}'; known parts: {', '.join(PARTS)}")
            templates[key] = str(value)
        return cls(model=model, model_type=model_type, templates=templates)

    def name(self, part: str, layer: int | None = None) -> str:
        template = self.templates.get(part)
        if template is None:
            known = ", ".join(sorted(LAYOUT_TEMPLATES))
            raise ConfigurationError(
                f"architecture '{self.model_type}' has no module template for '{part}' (known families: {known}). "
                f"Add it in hparams, e.g. layout: {{{part}: \"model.layers.{{layer}}.mlp.down_proj\"}}"
            )
        return template.format(layer=layer) if layer is not None else template

    def has(self, part: str) -> bool:
        return part in self.templates

    def module(self, part: str, layer: int | None = None) -> torch.nn.Module:
        name = self.name(part, layer)
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise ConfigurationError(
                f"architecture '{self.model_type}': module '{name}' (template '{part}') does not exist in this model"
            ) from None

    def optional_module(self, part: str, layer: int | None = None) -> torch.nn.Module | None:
        return self.module(part, layer) if self.has(part) else None

    @property
    def num_layers(self) -> int:
        return len(self.module("layers"))

    def check_layer(self, layer: int, label: str) -> None:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise ConfigurationError(f"hparams '{label}' expects a layer index 0..{self.num_layers - 1}, got {layer!r}")
        if not 0 <= layer < self.num_layers:
            raise ConfigurationError(f"hparams '{label}': layer {layer!r} is out of range; this model has layers 0..{self.num_layers - 1}")

    def weight_out_in(self, part: str, layer: int) -> torch.Tensor:
        """The weight of a linear part as an (out_features, in_features) view that writes through.

        GPT-2's Conv1D stores (in, out); its transpose is returned so methods never special-case it.
        """
        module = self.module(part, layer)
        weight = module.weight
        if type(module).__name__ == "Conv1D":
            return weight.T
        return weight

    def weight_parameter(self, part: str, layer: int) -> torch.nn.Parameter:
        return self.module(part, layer).weight
