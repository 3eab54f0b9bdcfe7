"""MEND's training math on top of the method's (`editing/mend.py`): running layers k..L from a cached
layer input with the update applied, the precompute of the frozen model's part, the normalisation
statistics and one step's losses."""

from __future__ import annotations

import torch

from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.training.mend_data import EDIT, LOC, Example

# --- running the model from a cached layer input ---------------------------------------------------


class _Passthrough(torch.nn.Module):
    """Stands in for a skipped decoder layer: returns the hidden states unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def forward_from_layer(model, layout, first: int, hidden_in: torch.Tensor, input_ids, attention_mask) -> torch.Tensor:
    """Final hidden states when layer `first` receives `hidden_in` (the layers below it are skipped).

    The model's own forward still builds masks and position embeddings from `input_ids`; layers
    0..first-1 are swapped for pass-throughs and a pre-hook hands `hidden_in` to layer `first`.
    """
    from bizsre_tasks.editing.common import hidden_states

    layers = layout.module("layers")
    originals = [layers[i] for i in range(first)]

    def inject(module, args, kwargs):
        if args:
            return (hidden_in.to(args[0].dtype),) + tuple(args[1:]), kwargs
        kwargs["hidden_states"] = hidden_in.to(kwargs["hidden_states"].dtype)
        return args, kwargs

    handle = layers[first].register_forward_pre_hook(inject, with_kwargs=True)
    try:
        for i in range(first):
            layers[i] = _Passthrough()
        return hidden_states(model, input_ids, attention_mask)
    finally:
        for i, original in enumerate(originals):
            layers[i] = original
        handle.remove()


class _Updates:
    """Forward hooks adding each row's own low-rank update: out += (x Aᵀ) D, i.e. (W + DᵀA) x."""

    def __init__(self, modules: dict[int, torch.nn.Module], factors: dict[int, tuple[torch.Tensor, torch.Tensor]], row_example: torch.Tensor):
        self.factors, self.row_example = factors, row_example
        self._handles = [module.register_forward_hook(self._hook(layer)) for layer, module in modules.items()]

    def _hook(self, layer):
        def hook(module, args, output):
            a, d = self.factors[layer]  # (B, n, in), (B, n, out)
            a, d = a[self.row_example], d[self.row_example]
            x = args[0]
            return output + torch.bmm(torch.bmm(x.to(a.dtype), a.transpose(1, 2)), d).to(output.dtype)

        return hook

    def close(self):
        for handle in self._handles:
            handle.remove()


# --- precompute ------------------------------------------------------------------------------------


def _head(model):
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None), getattr(model.config, "final_logit_softcapping", None)


def _full_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    from bizsre_tasks.editing.common import head_logits

    return head_logits(model, hidden).float()


def _candidate_logits(model, hidden: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Logits of `cand` (P, K) token ids at `hidden` (P, d), exactly as the head computes them."""
    weight, bias, cap = _head(model)
    logits = torch.einsum("pd,pkd->pk", hidden.float(), weight[cand.long()].float())
    if bias is not None:
        logits = logits + bias[cand.long()].float()
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def precompute_chunk(model, tokenizer, layout, layers, examples: list[Example], vocab_k: int, device) -> list[dict]:
    """Everything the frozen model contributes to the training of these examples (see module docstring)."""
    from bizsre_tasks.editing.common import (
        build_batch,
        hidden_states,
        requires_grad_only,
    )
    from bizsre_tasks.editing.mend import Capture, edited_modules, select_tokens

    first = min(layers)
    owners, kinds, prompts, targets = [], [], [], []
    for e, example in enumerate(examples):
        for kind, prompt, target in example.rows:
            owners.append(e)
            kinds.append(kind)
            prompts.append(prompt)
            targets.append(target)
    batch = build_batch(tokenizer, prompts, targets, device)
    modules = edited_modules(layout, layers)
    entry: dict[str, torch.Tensor] = {}

    def keep_input(module, args, kwargs):
        entry["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach()

    handle = layout.module("layers")[first].register_forward_pre_hook(keep_input, with_kwargs=True)
    params = [m.weight for m in modules.values()]

    # Every real target position of every row, flattened: the head runs only there (no padding).
    row_of, slot_of = batch.target_mask.nonzero(as_tuple=True)
    flat_positions = batch.positions[row_of, slot_of]
    flat_targets = batch.target_ids[row_of, slot_of]
    is_edit = torch.tensor([kinds[r] == EDIT for r in row_of.tolist()], device=row_of.device)
    try:
        with torch.enable_grad(), requires_grad_only(params), Capture(modules) as capture:
            final = hidden_states(model, batch.input_ids, batch.attention_mask)
            picked = final[row_of, flat_positions]
            edit_logits = _full_logits(model, picked[is_edit])
            token_nll = torch.logsumexp(edit_logits, dim=-1) - edit_logits.gather(1, flat_targets[is_edit].unsqueeze(1)).squeeze(1)
            # Each edit row's loss is its mean token NLL, as at edit time; summing rows keeps their δ apart.
            counts = batch.target_mask.sum(1).float()
            loss = (token_nll / counts[row_of[is_edit]]).sum()
            outputs = [capture.outputs[layer] for layer in layers]
            grads = torch.autograd.grad(loss, outputs, allow_unused=True)
            inputs = {layer: capture.inputs[layer] for layer in layers}
    finally:
        handle.remove()
    with torch.no_grad():
        flat_logits = torch.empty(len(row_of), edit_logits.shape[-1], device=edit_logits.device)
        flat_logits[is_edit] = edit_logits.detach()
        if (~is_edit).any():
            flat_logits[~is_edit] = _full_logits(model, picked[~is_edit].detach())
        flat_hidden = picked.detach()
    results = [{"rows": [], "u": {}, "d": {}} for _ in examples]
    with torch.no_grad():
        for r, (e, kind) in enumerate(zip(owners, kinds)):
            length = int(batch.attention_mask[r].sum())
            n_targets = int(batch.target_mask[r].sum())
            positions = batch.positions[r, :n_targets]
            target_ids = batch.target_ids[r, :n_targets]
            row = {
                "kind": kind,
                "ids": batch.input_ids[r, :length].to(torch.int32).cpu(),
                "hidden": entry["hidden"][r, :length].float().cpu(),
                "positions": positions.cpu(),
                "targets": target_ids.cpu(),
            }
            mine = row_of == r
            if vocab_k > 0:
                logits = flat_logits[mine]
                k = min(vocab_k, logits.shape[-1])
                cand = logits.topk(k, dim=-1).indices
                for p, target in enumerate(target_ids.tolist()):
                    if not bool((cand[p] == target).any()):
                        cand[p, -1] = target  # the target is always a candidate
                masked = logits.scatter(1, cand, float("-inf"))
                row["cand"] = cand.to(torch.int32).cpu()
                row["target_index"] = (cand == target_ids.unsqueeze(1)).float().argmax(1).cpu()
                row["rest"] = torch.logsumexp(masked, dim=-1).cpu()  # -inf when K covers the vocabulary
                if kind == LOC:
                    row["pre"] = logits.gather(1, cand).cpu()
            elif kind == LOC:
                row["pre_hidden"] = flat_hidden[mine].float().cpu()
            results[e]["rows"].append(row)
            if kind == EDIT:
                for layer, grad in zip(layers, grads):
                    grad = grad if grad is not None else torch.zeros_like(outputs[layers.index(layer)])
                    u, d = select_tokens(inputs[layer][r].float(), grad[r].float(), batch.attention_mask[r])
                    results[e]["u"][layer] = u.cpu()
                    results[e]["d"][layer] = d.cpu()
    return results


def statistics(cache: list[dict], layers) -> dict[int, tuple[torch.Tensor, ...]]:
    """Per-layer mean and standard deviation of u and δ over all training tokens (float64 sums)."""
    stats = {}
    for layer in layers:
        out = []
        for key in ("u", "d"):
            count, total, squares = 0, None, None
            for item in cache:
                x = item[key][layer].double()
                if len(x) == 0:
                    continue
                total = x.sum(0) if total is None else total + x.sum(0)
                squares = (x * x).sum(0) if squares is None else squares + (x * x).sum(0)
                count += len(x)
            if count == 0:
                raise ConfigurationError("MEND training: no gradient was captured for any training example")
            mean = total / count
            std = (squares / count - mean * mean).clamp(min=0).sqrt()
            # Dimensions that never vary would divide by ~0; floor them relative to the typical scale.
            std = std.clamp(min=1e-3 * float(std.mean()) + 1e-30)
            out += [mean.float(), std.float()]
        stats[layer] = tuple(out)
    return stats


# --- one optimisation step -------------------------------------------------------------------------


def _pad(tensors: list[torch.Tensor], value=0) -> torch.Tensor:
    width = max(t.shape[0] for t in tensors)
    shape = (len(tensors), width) + tuple(tensors[0].shape[1:])
    out = torch.full(shape, value, dtype=tensors[0].dtype, device=tensors[0].device)  # the editor's factors live on the GPU
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out


def step_losses(model, layout, editor, items: list[dict], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Edit loss, locality KL and token accuracy of the edits of `items` (each applied to its own rows)."""
    from bizsre_tasks.editing.mend import edited_modules

    layers = list(editor.config.layers)
    factors = {}
    for layer in layers:
        parts = [editor.factors(layer, item["u"][layer].to(device), item["d"][layer].to(device)) for item in items]
        factors[layer] = (_pad([a for a, _ in parts]), _pad([d for _, d in parts]))
    rows = [(e, row) for e, item in enumerate(items) for row in item["rows"]]
    row_example = torch.tensor([e for e, _ in rows], device=device)
    input_ids = _pad([row["ids"].long() for _, row in rows], pad_id).to(device)
    attention_mask = _pad([torch.ones(len(row["ids"]), dtype=torch.long) for _, row in rows]).to(device)
    hidden_in = _pad([row["hidden"] for _, row in rows]).to(device)
    hooks = _Updates(edited_modules(layout, layers), factors, row_example)
    try:
        final = forward_from_layer(model, layout, min(layers), hidden_in, input_ids, attention_mask)
    finally:
        hooks.close()
    edit_losses, kls, correct, total = [], [], 0, 0
    for r, (_, row) in enumerate(rows):
        h = final[r, row["positions"].to(device)]
        if "cand" in row:
            z = _candidate_logits(model, h, row["cand"].to(device))
            rest = row["rest"].to(device).unsqueeze(1)
            log_probs = torch.log_softmax(torch.cat([z, rest], dim=1), dim=1)
            target_index = row["target_index"].to(device)
        else:
            log_probs = torch.log_softmax(_full_logits(model, h), dim=1)
            target_index = row["targets"].to(device)
        if row["kind"] == LOC:
            if "cand" in row:
                pre = torch.log_softmax(torch.cat([row["pre"].to(device), rest], dim=1), dim=1)
            else:
                with torch.no_grad():
                    pre = torch.log_softmax(_full_logits(model, row["pre_hidden"].to(device)), dim=1)
            pre = torch.nan_to_num(pre, neginf=-1e30)  # a -inf "rest" bucket has zero mass
            kl = (pre.exp() * (pre - torch.nan_to_num(log_probs, neginf=-1e30))).sum(1)
            kls.append(kl.mean())
        else:
            picked = log_probs.gather(1, target_index.long().unsqueeze(1)).squeeze(1)
            edit_losses.append(-picked.mean())
            if row["kind"] == EDIT:
                correct += int((log_probs.argmax(1) == target_index).sum())
                total += len(target_index)
    zero = torch.zeros((), device=device)
    return {
        "edit": torch.stack(edit_losses).mean() if edit_losses else zero,
        "loc": torch.stack(kls).mean() if kls else zero,
        "acc": torch.tensor(correct / max(total, 1)),
    }


def _check_forward_from_layer(model, tokenizer, layout, layers, example: Example, item: dict, device) -> None:
    """The training shortcut must reproduce the full forward pass; stop rather than train on garbage."""
    from bizsre_tasks.editing.common import build_batch, hidden_states

    _, prompt, target = example.rows[0]
    batch = build_batch(tokenizer, [prompt], [target], device)
    with torch.no_grad():
        full = hidden_states(model, batch.input_ids, batch.attention_mask)
        row = item["rows"][0]
        short = forward_from_layer(model, layout, min(layers), row["hidden"].unsqueeze(0).to(device), batch.input_ids, batch.attention_mask)
    scale = full.abs().max().clamp(min=1e-6)
    if ((full - short).abs().max() / scale) > 1e-3:
        raise ConfigurationError(
            f"MEND training: running architecture '{layout.model_type}' from a cached layer input does not reproduce its "
            "forward pass; this architecture is not supported by the MEND trainer"
        )


