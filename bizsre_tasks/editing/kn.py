"""`kn`: Knowledge Neurons (Dai et al. 2022, "Knowledge Neurons in Pretrained Transformers").

1. Attribution. The "neurons" are the inputs of `mlp_out` (the MLP's intermediate activations) at
   the prompt's last position. For each attributed layer, the whole activation vector is scaled
   from 0 to its observed value in `ig_steps` steps and the gradient of the answer's probability
   is integrated along that path (integrated gradients, Riemann sum). The answer is the new
   target's first token by default (`attribute_to: new`); the paper attributes the known fact
   (`attribute_to: old`, here the unedited argmax, which in the default model is often a generic
   token and picks neurons that carry no fact):
       attr_i = a_i * mean_k dP(answer | a := k/m * a) / da_i.
   All steps of all layers run as one batch. The perturbation sits at the last position only and
   attention is causal, so the prompt's earlier positions are run once and reused as a KV cache;
   each row of the batch is a single token (in the benchmark's naive mode, the whole prompt).
2. Selection: neurons whose attribution exceeds `threshold` x the largest one, at most `top_k`.
   The paper refines this set by keeping neurons shared across several prompts of the same fact,
   which removes neurons that merely react to the wording. Bi-ZsRE gives one edit prompt, so we
   instead drop neurons that are about as active on unrelated questions asked with the same
   template (mean |activation| over `reference_questions` > `max_shared` x |activation here|).
   Without this filter the top neurons are ones that fire on every answer position, and editing
   them broke every other answer (locality_en F1 0.33 -> 0.88 on the first 6 test cases).
3. Update ("updating facts"): each selected neuron's value vector (its column of mlp_out's
   (out, in) weight) moves away from the old answer's embedding and towards the new one's,
   v_i += sign(a_i) * c * (lambda_new * e_new - lambda_old * e_old), with e the (tied) output
   embeddings pulled back through the gains of the final norm and, in post-norm models such as
   Gemma, of the norm after the MLP (the transposed Jacobian of those diagonal gains: the direction
   that raises the new answer's logit fastest per unit change of the MLP output). The paper's
   lambdas are absolute in BERT's space, where embeddings and value vectors have similar norms;
   here only their ratio sets the direction, and every selected neuron's update has the norm
   `scale` x the layer's mean value-vector norm.
The "old" answer is the unedited model's argmax after the prompt (Bi-ZsRE gives no ground truth).
"""

from __future__ import annotations

import copy
import logging
from typing import Any, ClassVar

import torch

from bizsre_tasks import languages
from bizsre_tasks.editing.base import (
    AppliedEdit,
    EditFailedError,
    EditingMethod,
    EditRequest,
    WeightBackup,
    WeightEdit,
)
from bizsre_tasks.editing.common import (
    encode_prompt,
    encode_target,
    head_logits,
    naive_mode,
)
from bizsre_tasks.editing.ft import check_layer_list, check_positive
from bizsre_tasks.editing.model_cache import cache_argument, returned_cache
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.tasks import prompts

logger = logging.getLogger(__name__)

CHOICES = {"attribute_to": ("old", "new"), "target_tokens": ("first", "all")}

def reference_questions(lang: str) -> list[str]:
    """Unrelated questions whose activations tell which neurons fire on any question (see the docstring),
    in the edit's language (the languages table's)."""
    return list(languages.get(lang).reference_questions)


def norm_gain(module: torch.nn.Module | None, dim: int, like: torch.Tensor) -> torch.Tensor:
    """The elementwise gain of a normalisation layer (ones when there is none or it cannot be read)."""
    ones = torch.ones(dim, dtype=like.dtype, device=like.device)
    if module is None:
        return ones
    if isinstance(module, torch.nn.LayerNorm):
        return module.weight.detach() if module.weight is not None else ones
    with torch.no_grad():
        # An RMS norm of the all-ones vector is its gain (Gemma's 1 + w, Llama's w).
        gain = module(ones.view(1, dim)).view(dim).to(like.dtype)
    return gain if torch.isfinite(gain).all() and gain.abs().max() > 0 else ones


class KnowledgeNeurons(EditingMethod):
    name = "kn"
    modifies_weights = True
    default_hparams: ClassVar[dict[str, Any]] = {
        # Layers whose neurons are attributed; [] = the upper half of the model.
        "layers": [],
        "ig_steps": 20,  # integrated-gradient steps
        # Keep neurons with attribution > threshold * max attribution, at most top_k of them.
        "threshold": 0.2,
        "top_k": 10,  # at most this many neurons
        # Drop neurons whose mean |activation| on unrelated questions exceeds this fraction of theirs here (0 = no filter).
        "max_shared": 0.5,
        # Whose probability the attribution explains: the new answer's first token, or the unedited
        # argmax ("old", the paper's choice; here often a generic token such as " The").
        "attribute_to": "new",
        "lambda_old": 1.0,  # weight of the old answer's embedding in the update direction (away from it)
        "lambda_new": 8.0,  # weight of the new answer's embedding in the update direction (towards it)
        # Norm of each selected neuron's value-vector update, in units of the layer's mean value-vector norm.
        "scale": 0.5,
        # Embedding of the new answer: its first token (the paper's single-token answers) or the mean of all.
        "target_tokens": "first",
        # Rows (IG steps x layers) per forward pass; bounds memory (each row holds a vocabulary of logits).
        "ig_batch": 64,
    }
    family_hparams: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, context, hparams):
        super().__init__(context, hparams)
        self._shared_cache: dict = {}

    def validate_hparams(self) -> None:
        check_layer_list(self, "layers")
        check_positive(self, "threshold", "scale")
        check_positive(self, "lambda_old", "lambda_new", "max_shared", allow_zero=True)
        for key in ("ig_steps", "top_k", "ig_batch"):
            if not isinstance(self.hparams[key], int) or self.hparams[key] < 1:
                raise ConfigurationError(f"hparams '{key}' for method 'kn' must be an integer >= 1, got {self.hparams[key]!r}")
        if self.hparams["threshold"] > 1:
            raise ConfigurationError(f"hparams 'threshold' for method 'kn' is a fraction of the largest attribution (0..1], got {self.hparams['threshold']}")
        for key, allowed in CHOICES.items():
            if self.hparams[key] not in allowed:
                raise ConfigurationError(f"hparams '{key}' for method 'kn' must be one of {', '.join(allowed)}, got {self.hparams[key]!r}")

    @property
    def kn_layers(self) -> list[int]:
        layers = list(self.hparams["layers"])
        if layers:
            return sorted(layers)
        count = self.layout.num_layers
        return list(range(count // 2, count))

    # --- passes -------------------------------------------------------------------------------
    def _hook_all(self, layers: list[int], make_pre) -> list:
        """A forward pre-hook on every layer's mlp_out (its input is the neurons' activations)."""
        return [self.layout.module("mlp_out", layer).register_forward_pre_hook(make_pre(layer)) for layer in layers]

    @torch.no_grad()
    def _observe(self, prompt_ids: list[int], layers: list[int]):
        """Neuron activations at the last position of each layer, and the next-token logits."""
        activations = {}

        def pre(layer):
            def hook(module, args):
                activations[layer] = args[0][0, -1].detach().clone()

            return hook

        handles = self._hook_all(layers, pre)
        try:
            ids = torch.tensor([prompt_ids], device=self.context.device)
            hidden = self.model.base_model(input_ids=ids, use_cache=False).last_hidden_state
            logits = head_logits(self.model, hidden[:, -1])[0]
        finally:
            for handle in handles:
                handle.remove()
        return activations, logits

    def _shared_activation(self, lang: str, layers: list[int]) -> dict[int, torch.Tensor]:
        """Mean |activation| of every neuron at the last position of unrelated questions (cached per language)."""
        cache = self._shared_cache
        key = (lang, tuple(layers))
        if key not in cache:
            questions = reference_questions(lang)
            total: dict[int, torch.Tensor] = {}
            for question in questions:
                activations, _ = self._observe(encode_prompt(self.tokenizer, prompts.build_prompt(question, lang)), layers)
                for layer, value in activations.items():
                    total[layer] = total.get(layer, 0) + value.abs()
            cache[key] = {layer: value / len(questions) for layer, value in total.items()}
        return cache[key]

    def _prefix_cache(self, prompt_ids: list[int]):
        """KV cache of all prompt tokens but the last (None when the prompt is one token or caching fails)."""
        if len(prompt_ids) < 2:
            return None
        try:
            with torch.no_grad():
                ids = torch.tensor([prompt_ids[:-1]], device=self.context.device)
                return returned_cache(self.model.base_model(input_ids=ids, use_cache=True))
        except Exception as exc:  # architectures without a usable cache: run full prompts instead
            logger.info("kn: no prefix cache (%s); attribution runs whole prompts", exc)
            return None

    def _integrated_gradients(self, prompt_ids, layers, activations, token: int) -> dict[int, torch.Tensor]:
        steps = self.hparams["ig_steps"]
        device = self.context.device
        rows = [(layer, (k + 1) / steps) for layer in layers for k in range(steps)]
        grads = {layer: torch.zeros_like(activations[layer]) for layer in layers}
        # The benchmark's textbook path reuses nothing: every row runs the whole prompt.
        cache = None if naive_mode() else self._prefix_cache(prompt_ids)
        chunk = self.hparams["ig_batch"]
        # No progress bar: one edit takes seconds and the wrapper already shows progress per case.
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            size = len(part)
            leaves: dict[int, tuple[list[int], torch.Tensor]] = {}
            for layer in layers:
                index = [r for r, (row_layer, _) in enumerate(part) if row_layer == layer]
                if index:
                    alphas = torch.tensor([part[r][1] for r in index], device=device, dtype=activations[layer].dtype)
                    leaf = (alphas[:, None] * activations[layer][None]).requires_grad_(True)
                    leaves[layer] = (index, leaf)

            def pre(layer):
                def hook(module, args):
                    if layer not in leaves:
                        return None
                    index, leaf = leaves[layer]
                    scaled = args[0].clone()
                    scaled[index, -1] = leaf.to(scaled.dtype)
                    return (scaled, *args[1:])

                return hook

            handles = self._hook_all(layers, pre)
            try:
                with torch.enable_grad():
                    if cache is not None:
                        past = copy.deepcopy(cache)
                        past.batch_repeat_interleave(size)
                        ids = torch.tensor([[prompt_ids[-1]]] * size, device=device)
                        mask = torch.ones((size, len(prompt_ids)), dtype=torch.long, device=device)
                        out = self.model.base_model(input_ids=ids, attention_mask=mask, use_cache=True, **cache_argument(self.model.base_model, past))
                    else:
                        ids = torch.tensor([prompt_ids] * size, device=device)
                        out = self.model.base_model(input_ids=ids, use_cache=False)
                    probs = torch.softmax(head_logits(self.model, out.last_hidden_state[:, -1]).float(), dim=-1)
                    objective = probs[:, token].sum()
                    found = list(leaves)
                    gradients = torch.autograd.grad(objective, [leaves[layer][1] for layer in found])
            finally:
                for handle in handles:
                    handle.remove()
            for layer, gradient in zip(found, gradients):
                grads[layer] += gradient.sum(0).detach()
        return {layer: activations[layer] * grads[layer] / steps for layer in layers}

    def _select(self, attributions, activations=None, shared=None) -> list[tuple[int, int, float]]:
        """(layer, neuron, attribution) of the selected neurons, largest attribution first."""
        eligible = {}
        for layer, attr in attributions.items():
            mask = attr > 0
            if shared is not None and self.hparams["max_shared"] > 0:
                mask &= shared[layer] <= self.hparams["max_shared"] * activations[layer].abs()
            eligible[layer] = mask
        best = max((float(attr[eligible[layer]].max()) for layer, attr in attributions.items() if eligible[layer].any()), default=0.0)
        if not best > 0:
            return []
        kept = []
        for layer, attr in attributions.items():
            chosen = eligible[layer] & (attr > self.hparams["threshold"] * best)
            kept += [(layer, int(i), float(attr[i])) for i in chosen.nonzero().flatten()]
        kept.sort(key=lambda item: -item[2])
        return kept[: self.hparams["top_k"]]

    def _direction(self, layer: int, new_ids: list[int], old_id: int) -> torch.Tensor:
        embeddings = self.model.get_output_embeddings().weight.detach()
        e_new = embeddings[new_ids].mean(0)
        e_old = embeddings[old_id]
        direction = self.hparams["lambda_new"] * e_new - self.hparams["lambda_old"] * e_old
        dim = direction.shape[0]
        direction = direction * norm_gain(self.layout.module("final_norm"), dim, direction)
        direction = direction * norm_gain(self.layout.optional_module("post_mlp_norm", layer), dim, direction)
        length = direction.norm()
        if not torch.isfinite(length) or length == 0:
            raise EditFailedError("kn: the new and old answers have the same embedding direction")
        return direction / length

    # --- the edit -----------------------------------------------------------------------------
    def apply(self, request: EditRequest) -> AppliedEdit:
        layers = self.kn_layers
        prompt_ids = encode_prompt(self.tokenizer, request.prompt)
        target_ids = encode_target(self.tokenizer, request.target_text)
        if not target_ids:
            raise EditFailedError(f"kn: target {request.target_text!r} tokenises to nothing")
        activations, logits = self._observe(prompt_ids, layers)
        old_id = int(logits.argmax())
        token = old_id if self.hparams["attribute_to"] == "old" else target_ids[0]
        attributions = self._integrated_gradients(prompt_ids, layers, activations, token)
        shared = self._shared_activation(request.lang, layers) if self.hparams["max_shared"] > 0 else None
        selected = self._select(attributions, activations, shared)
        if not selected:
            raise EditFailedError("kn: no neuron has a large enough attribution specific to this prompt")
        new_ids = target_ids[:1] if self.hparams["target_tokens"] == "first" else target_ids
        by_layer: dict[int, list[int]] = {}
        for layer, index, _ in selected:
            by_layer.setdefault(layer, []).append(index)
        backup = WeightBackup({f"mlp_out.{layer}": self.layout.weight_parameter("mlp_out", layer) for layer in by_layer})
        try:
            for layer, neurons in by_layer.items():
                self._update_values(layer, neurons, activations[layer], new_ids, old_id)
        except BaseException:
            backup.restore()
            raise
        logger.debug("kn: edited neurons %s", selected)
        return WeightEdit(backup)

    @torch.no_grad()
    def _update_values(self, layer, neurons, activation, new_ids, old_id) -> None:
        weight = self.layout.weight_out_in("mlp_out", layer)  # (out, in): column i is neuron i's value vector
        index = torch.tensor(neurons, device=weight.device)
        typical = weight.norm(dim=0).mean()
        direction = self._direction(layer, new_ids, old_id).to(weight.dtype)
        # The sign makes the neuron's contribution a_i * v_i move the right way when a_i < 0 (gated MLPs).
        update = self.hparams["scale"] * typical * torch.sign(activation[index])[None, :] * direction[:, None]
        if not torch.isfinite(update).all():
            raise EditFailedError(f"kn: the update of layer {layer} is not finite")
        weight[:, index] += update
        if not torch.isfinite(weight[:, index]).all():
            raise EditFailedError(f"kn: the edited value vectors of layer {layer} are no longer finite")
