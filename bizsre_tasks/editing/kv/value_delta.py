"""The value change δ that ROME and MEMIT install: for one case, or for several cases at once.

δ is added to the output of one MLP projection (layer L) at the subject's last token and optimised so
that the model continues the prompt (alone and behind a few generated prefixes) with the new target
(NLL of the target tokens), while a KL term keeps the next-token distribution of a neutral prompt
("{subject} is a") close to the original and a decay term keeps δ small.

Speed:
- Gradients are enabled only on δ (θ, scaled by the RMS of the original value).
- Every row of the batch is left padded so that the subject token sits in the same column: the
  columns before it cannot be reached by δ, so they run once into a key/value cache and each step
  runs only the columns from the subject on. Within those, the layers below L compute the same thing
  every step and are replayed from the first step (`LayerReplay`).
- The LM head runs only at the target positions and the KL positions, in one pass over its weight
  (`head_softmax`), and each case stops once its worst target token's NLL is below `nll_stop`.
- Several cases are optimised in one batch (`optimise_deltas`): every case keeps its own θ and its
  own Adam optimiser and its loss does not depend on the other cases' rows, so each δ is the one it
  would get alone (up to float rounding); the cases share every forward pass and every read of the
  262k-row head. A case that has converged leaves the batch with its rows, cache and recordings.
In `common.naive_mode()` (the benchmark's textbook path) neither the prefix cache nor the replay is used.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from bizsre_tasks.editing.base import EditFailedError, EditingMethod, EditRequest
from bizsre_tasks.editing.common import (
    encode_prompt,
    encode_target,
    find_subject_last_token,
    naive_mode,
)
from bizsre_tasks.editing.model_cache import cache_argument, returned_cache
from bizsre_tasks.editing.tensors.head_softmax import HeadObjective

logger = logging.getLogger(__name__)


# --- the edit batch -------------------------------------------------------------------------------
@dataclass
class CaseRows:
    """One case's token rows: rewrite rows (context prefix + prompt + target), then its KL row if any."""

    rows: list[list[int]]
    subjects: list[int]  # index of the subject's last token in each row
    n_rewrite: int
    target: list[int]
    target_starts: list[int]  # per rewrite row: index whose logits predict the first target token
    kl_end: int | None  # index of the KL row's last token


def case_rows(tokenizer, request: EditRequest, prefixes: list[str], kl_prompt: str, kl_at_subject: bool = False) -> CaseRows:
    """Tokenise one edit; raises EditFailedError when its target tokenises to nothing. The KL is taken at
    the neutral prompt's last token, or with `kl_at_subject` at its subject's last token (the seed's choice)."""
    target = encode_target(tokenizer, request.target_text)
    if not target:
        raise EditFailedError(f"target {request.target_text!r} tokenises to nothing")
    rows, subjects, starts = [], [], []
    for prefix in [""] + prefixes:
        prompt = prefix + request.prompt
        prompt_ids = encode_prompt(tokenizer, prompt)
        rows.append(prompt_ids + target)
        subjects.append(find_subject_last_token(tokenizer, prompt, request.subject))
        starts.append(len(prompt_ids) - 1)
    kl_end = None
    if kl_prompt:
        text = kl_prompt.format(subject=request.subject)
        ids = encode_prompt(tokenizer, text)
        rows.append(ids)
        subjects.append(find_subject_last_token(tokenizer, text, request.subject))
        kl_end = subjects[-1] if kl_at_subject else len(ids) - 1
    return CaseRows(rows, subjects, len(starts), target, starts, kl_end)


@dataclass
class EditBatch:
    """The rows of one or more cases, each case's rewrite rows followed by its KL row.

    Every row is left padded so that its subject token sits in column `split`: the columns before it
    do not depend on δ, so they are computed once (a key/value cache) and each step runs only columns
    `split`.. . Explicit position ids keep the padding invisible. Target tokens and KL positions are
    listed flat (row, column), so cases with targets of different lengths share the batch.
    """

    input_ids: torch.Tensor  # (B, W)
    attention_mask: torch.Tensor  # (B, W)
    position_ids: torch.Tensor  # (B, W)
    split: int  # column of every row's subject (last) token
    row_case: torch.Tensor  # (B,) case number of each row
    rewrite: torch.Tensor  # (B,) True for rewrite rows, False for KL rows
    target_row: torch.Tensor  # (N,) one entry per target token of every rewrite row
    target_col: torch.Tensor  # (N,) column whose logits predict that token
    target_id: torch.Tensor  # (N,)
    kl_row: torch.Tensor  # (K,)
    kl_col: torch.Tensor  # (K,)

    @property
    def n_rewrite(self) -> int:
        """Rewrite rows (in a one-case batch they are rows 0..n_rewrite-1)."""
        return int(self.rewrite.sum())

    def cases(self) -> list[int]:
        return sorted(set(self.row_case.tolist()))

    def forward(self, model, start: int = 0, cache=None, use_cache: bool = False):
        """The transformer body on columns start.. (the earlier ones come from `cache`)."""
        return model.base_model(
            input_ids=self.input_ids[:, start:], attention_mask=self.attention_mask,
            position_ids=self.position_ids[:, start:], use_cache=use_cache, **cache_argument(model.base_model, cache),
        )

    def prefix_cache(self, model):
        """Key/value cache of the columns before `split` (None if the model returns none)."""
        if self.split == 0:
            return None
        with torch.no_grad():
            outputs = model.base_model(
                input_ids=self.input_ids[:, : self.split], attention_mask=self.attention_mask[:, : self.split],
                position_ids=self.position_ids[:, : self.split], use_cache=True,
            )
        return returned_cache(outputs)

    def keep_cases(self, keep: set[int]) -> tuple[EditBatch, torch.Tensor, torch.Tensor]:
        """The batch restricted to the rows of the cases in `keep`, with the kept row indices and the
        kept KL entries (a mask over the old KL list), to select the same rows elsewhere."""
        kept = torch.tensor([case in keep for case in self.row_case.tolist()], device=self.row_case.device)
        rows = kept.nonzero().squeeze(1)
        renumber = torch.full_like(self.row_case, -1)
        renumber[rows] = torch.arange(len(rows), device=rows.device)
        targets, kl_kept = kept[self.target_row], kept[self.kl_row]
        batch = EditBatch(
            self.input_ids[rows], self.attention_mask[rows], self.position_ids[rows], self.split,
            self.row_case[rows], self.rewrite[rows],
            renumber[self.target_row[targets]], self.target_col[targets], self.target_id[targets],
            renumber[self.kl_row[kl_kept]], self.kl_col[kl_kept],
        )
        return batch, rows, kl_kept


def build_edit_batch(cases: list[CaseRows], pad_id: int, device) -> EditBatch:
    """Stack the rows of `cases` (case i gets case number i) into one left-padded batch."""
    rows = [row for case in cases for row in case.rows]
    subjects = [subject for case in cases for subject in case.subjects]
    split = max(subjects)
    pads = [split - subject for subject in subjects]
    width = max(pad + len(row) for pad, row in zip(pads, rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (pad, row) in enumerate(zip(pads, rows)):
        input_ids[b, pad : pad + len(row)] = torch.tensor(row)
        attention_mask[b, pad : pad + len(row)] = 1
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    row_case, rewrite, target_row, target_col, target_id, kl_row, kl_col = [], [], [], [], [], [], []
    first = 0
    for number, case in enumerate(cases):
        for i in range(len(case.rows)):
            row_case.append(number)
            rewrite.append(i < case.n_rewrite)
        for i, start in enumerate(case.target_starts):
            b = first + i
            for t, token in enumerate(case.target):
                target_row.append(b)
                target_col.append(pads[b] + start + t)
                target_id.append(token)
        if case.kl_end is not None:
            b = first + case.n_rewrite
            kl_row.append(b)
            kl_col.append(pads[b] + case.kl_end)
        first += len(case.rows)

    def long(values):
        return torch.tensor(values, dtype=torch.long, device=device)

    return EditBatch(
        input_ids.to(device), attention_mask.to(device), position_ids.to(device), split, long(row_case),
        torch.tensor(rewrite, dtype=torch.bool, device=device), long(target_row), long(target_col), long(target_id),
        long(kl_row), long(kl_col),
    )


# --- hooks ----------------------------------------------------------------------------------------
def first_output(output):
    return output[0] if isinstance(output, tuple) else output


def _hidden(outputs) -> torch.Tensor:
    return outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]


def _select_rows(value, rows: torch.Tensor):
    """`value` (a tensor with the batch first, or a tuple of them) restricted to `rows`."""
    if isinstance(value, torch.Tensor):
        return value[rows]
    if isinstance(value, tuple):
        return tuple(_select_rows(item, rows) for item in value)
    return value


class LayerReplay:
    """Run the layers below `upto` once, then replay their recorded outputs.

    While δ is optimised the input never changes and δ only acts from layer `upto` on, so the
    layers below compute the same thing every step. `record()` captures their outputs during one
    forward; inside `with replay:` those layers return the recordings without computing anything.
    """

    def __init__(self, layers: torch.nn.ModuleList, upto: int):
        self.layers = [layers[i] for i in range(upto)]
        self.outputs: list[Any] = [None] * upto
        self._handles: list = []
        self._saved: list = []

    def record(self):
        def hook_for(index):
            def hook(module, args, output):
                self.outputs[index] = output
            return hook

        self._handles = [layer.register_forward_hook(hook_for(i)) for i, layer in enumerate(self.layers)]
        return self

    def stop_recording(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.outputs = [_select_rows(output, rows) for output in self.outputs]

    def __enter__(self):
        self.stop_recording()
        self._saved = [layer.__dict__.get("forward") for layer in self.layers]
        for layer, output in zip(self.layers, self.outputs):
            layer.forward = lambda *args, _output=output, **kwargs: _output
        return self

    def __exit__(self, *exc):
        for layer, saved in zip(self.layers, self._saved):
            if saved is None:
                del layer.forward
            else:
                layer.forward = saved
        return False


class DeltaAtSubject:
    """Forward hooks on `mlp_out` of one layer: record its input (the key) and output (the value) at
    column `column` of every row and add δ = make_delta(values) there (one vector for every row, or
    one row per batch row; None: add nothing)."""

    def __init__(self, module: torch.nn.Module, column: int, make_delta=None):
        self.module = module
        self.column = column
        self.make_delta = make_delta
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self._handles: list = []

    def __enter__(self):
        def pre_hook(module, args):
            self.keys = args[0][:, self.column].detach()

        def hook(module, args, output):
            self.values = output[:, self.column].detach()
            if self.make_delta is None:
                return None
            delta = self.make_delta(self.values).to(output.dtype)
            if delta.dim() == 2:
                delta = delta.unsqueeze(1)  # (B, 1, d): one δ per row
            mask = torch.zeros(output.shape[1], 1, dtype=output.dtype, device=output.device)
            mask[self.column] = 1
            return output + mask * delta

        self._handles = [self.module.register_forward_pre_hook(pre_hook), self.module.register_forward_hook(hook)]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return False


# --- the optimisation -----------------------------------------------------------------------------
@dataclass
class DeltaResult:
    delta: torch.Tensor  # (d_out,) the change of the layer output at the subject token
    keys: torch.Tensor  # (rows, d_in) keys of the case's rows (rewrite rows first)
    values: torch.Tensor  # (rows, d_out) original outputs of the case's rows
    nll: float
    steps: int


class _CaseState:
    """One case's θ, its scale and its optimiser."""

    def __init__(self, value: torch.Tensor, lr: float, relative_lr: bool = True, clamp_norm_factor: float = 4.0):
        v = value.detach().float()
        self.v_norm = v.norm().clamp(min=1e-6)
        self.theta = torch.zeros_like(v, requires_grad=True)
        if relative_lr:
            # δ = scale·θ with scale the RMS of the original value, so θ's coordinates are O(1) whatever
            # the layer's output size; θ is the only tensor with a gradient.
            self.scale = self.v_norm / math.sqrt(v.numel())
            self.limit = clamp_norm_factor * math.sqrt(v.numel())  # |θ| ≤ limit  ⇔  |δ| ≤ factor·|v|
        else:  # the seed's Adam on δ itself: the step size is absolute, whatever the layer's scale
            self.scale = torch.ones((), dtype=v.dtype, device=v.device)
            self.limit = clamp_norm_factor * float(self.v_norm)
        self.optimiser = torch.optim.Adam([self.theta], lr=lr)
        self.steps = 0

    def delta(self) -> torch.Tensor:
        return self.scale * self.theta

    def decay(self, form: str) -> torch.Tensor:
        """(|δ|/|v|)², or the seed's |δ|/|v|² (`weight_decay_form: norm_over_value_squared`)."""
        if form == "norm_over_value_squared":
            return self.scale * self.theta.norm() / self.v_norm**2
        return (self.scale * self.theta.norm() / self.v_norm) ** 2


def optimise_delta(method: EditingMethod, batch: EditBatch, layer: int) -> DeltaResult:
    """δ for a one-case batch; raises EditFailedError when it cannot be found."""
    (result,) = optimise_deltas(method, batch, layer)
    if isinstance(result, EditFailedError):
        raise result
    return result


def optimise_deltas(method: EditingMethod, batch: EditBatch, layer: int) -> list[DeltaResult | EditFailedError]:
    """δ for `mlp_out` of `layer` for every case of `batch` (see the module docstring), in case order;
    a case whose loss stops being finite gets an EditFailedError instead."""
    hp = method.hparams
    model, layout = method.model, method.layout
    naive = naive_mode()  # the benchmark's textbook path reuses nothing
    replay = LayerReplay(layout.module("layers"), 0 if naive else layer)
    n_cases = len(batch.cases())
    states: list[_CaseState] = []
    results: list[DeltaResult | EditFailedError | None] = [None] * n_cases
    live = {"batch": batch}

    def make_delta(values: torch.Tensor) -> torch.Tensor:
        if not states:  # the first forward holds every row: each case's own prompt row sets its scale
            first_rows = [int((batch.row_case == c).nonzero()[0]) for c in range(n_cases)]
            states.extend(
                _CaseState(values[row], hp["lr"], hp.get("relative_lr", True), hp["clamp_norm_factor"]) for row in first_rows
            )
        row_case = live["batch"].row_case
        deltas = torch.stack([state.delta() for state in states])
        return deltas[row_case] if n_cases > 1 else deltas[0]

    # The columns before the subject, once: δ cannot reach them. Without a cache, every step runs all columns.
    prefix_cache = None if naive else batch.prefix_cache(model)
    start = batch.split if prefix_cache is not None else 0
    objective = HeadObjective(model, reverse_kl=hp.get("kl_direction", "original_edited") == "edited_original")
    original_keys = original_values = None
    with DeltaAtSubject(layout.module("mlp_out", layer), batch.split - start, make_delta) as probe, torch.enable_grad():
        replay.record()
        for step in range(hp["steps"] + 1):
            current = live["batch"]
            cache = copy.deepcopy(prefix_cache)  # each forward appends to the cache it is given
            if step == 0:
                # The first forward runs every layer and records what later steps replay; keys and
                # original values do not depend on δ, so they are taken here for every case.
                outputs = current.forward(model, start, cache, use_cache=cache is not None)
                replay.stop_recording()
                original_keys, original_values = probe.keys, probe.values
            else:
                with replay:
                    outputs = current.forward(model, start, cache, use_cache=cache is not None)
            hidden = _hidden(outputs)
            target_hidden = hidden[current.target_row, current.target_col - start]
            kl_hidden = hidden[current.kl_row, current.kl_col - start] if len(current.kl_row) else None
            # The head only at those rows; KL(original ‖ edited) at the neutral prompt's last token.
            log_probs, kl = objective(target_hidden, current.target_id, kl_hidden)
            token_nll = -log_probs
            rows = current.row_case.shape[0]
            row_nll = torch.zeros(rows, dtype=token_nll.dtype, device=token_nll.device).index_add(0, current.target_row, token_nll)
            row_nll = row_nll / torch.bincount(current.target_row, minlength=rows).clamp(min=1)
            token_case, kl_case = current.row_case[current.target_row], current.row_case[current.kl_row]
            loss, stepping = None, []
            for case in current.cases():
                state = states[case]
                nll = row_nll[(current.row_case == case) & current.rewrite].mean()
                nll_value = float(nll.detach())
                if not math.isfinite(nll_value):
                    results[case] = EditFailedError(f"target NLL became {nll_value} while optimising the edit at layer {layer}")
                    continue
                # Stop on the worst token: one unlearnt token breaks the answer however low the mean is.
                worst = float(token_nll.detach()[token_case == case].max())
                logger.debug("δ step %d, case %d: mean NLL %.3f, worst token NLL %.3f", step, case, nll_value, worst)
                if worst < hp["nll_stop"] or step == hp["steps"]:
                    results[case] = _finish(state, batch, case, original_keys, original_values, nll_value, layer)
                    continue
                case_loss = nll
                if kl is not None and hp["kl_factor"] > 0:
                    case_loss = case_loss + hp["kl_factor"] * kl[kl_case == case].mean()
                case_loss = case_loss + hp["weight_decay"] * state.decay(hp.get("weight_decay_form", "ratio_squared"))
                if float(case_loss.detach()) < hp.get("total_loss_stop", 0.0):  # the seed's rule: the whole loss is small
                    results[case] = _finish(state, batch, case, original_keys, original_values, nll_value, layer)
                    continue
                loss = case_loss if loss is None else loss + case_loss
                stepping.append(state)
            if not stepping:
                break
            for state in stepping:
                state.optimiser.zero_grad()
            loss.backward()
            for state in stepping:
                state.optimiser.step()
                state.steps += 1
                with torch.no_grad():
                    norm = state.theta.norm()
                    if norm > state.limit:  # |δ| ≤ clamp_norm_factor·|v|
                        state.theta.mul_(state.limit / norm)
            if len(stepping) < len(current.cases()):
                # Finished cases leave the batch: their rows, cached columns, recordings and KL references.
                live["batch"], kept_rows, kept_kl = current.keep_cases({c for c, r in enumerate(results) if r is None})
                if prefix_cache is not None:
                    prefix_cache.batch_select_indices(kept_rows)
                replay.keep_rows(kept_rows)
                objective.keep_drift_rows(kept_kl)
    return results


def _finish(state: _CaseState, batch: EditBatch, case: int, keys, values, nll: float, layer: int) -> DeltaResult | EditFailedError:
    delta = state.delta().detach()
    if not torch.isfinite(delta).all():
        return EditFailedError(f"the optimised value change at layer {layer} is not finite")
    rows = (batch.row_case == case).nonzero().squeeze(1)
    return DeltaResult(delta, keys[rows], values[rows], nll, state.steps)
