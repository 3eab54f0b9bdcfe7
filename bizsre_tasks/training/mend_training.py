"""Training the MEND hypernetwork (`bizsre train mend`, scripts/train_mend.py) and its checkpoint folder.

Training follows the paper: for each training fact, the (u, δ) pairs of its edit NLL go through the
hypernetwork, the resulting low-rank update is applied to the model, and the loss is
    c_edit · NLL(new target | edit prompt and rephrases, edited model)
  + c_loc  · KL(p_unedited || p_edited) on an unrelated prompt's answer positions.
Only the hypernetwork (and its per-layer edit rates) learn; the base model stays frozen.

Making it affordable on a CPU:
- Everything the frozen model computes before the first edited layer k is the same before and after
  an edit, so one pass over the data ("precompute", saved in shards) stores for every row the hidden
  state entering layer k, the edit's (u, δ) pairs, and the unedited logits it needs. Each training step
  then runs only layers k..L, with the update applied through forward hooks (output += x·Aᵀ·D, the
  low-rank form of (W + ΔW)x), so gradients reach the hypernetwork.
- The vocabulary head is the most expensive part of a step. With `--train-vocab K` (default 1024) the
  training losses use each position's K most likely tokens under the unedited model plus the target,
  and one bucket for the rest of the vocabulary whose mass is held at its unedited value. `--train-vocab
  0` uses the full vocabulary. Edits at evaluation always use the full vocabulary.
- Normalisation statistics of u and δ (per layer, per dimension) are the mean and standard deviation over
  every training token, computed once from the precompute: what the paper's running averages converge to.

Data per training record (all prompts through `bizsre_tasks.prompts`, exactly as evaluation builds them):
- edit row: the question in the edit language with the new answer; its NLL also enters the edit loss;
- generality rows: the record's rephrase (flat schema) and, with `--aligned-file`, line i of an aligned
  file (e.g. train_qa_en.tsv for Chinese training) in `--aligned-lang`: a cross-lingual rephrase;
  question<TAB>answer files have no rephrase, so without an aligned file the edit prompt is the only
  generality signal;
- locality row: the record's `loc`/`loc_ans` (flat schema); question<TAB>answer files have none, so the
  question and answer of another record (index i + N/2) are used, alternating between the edit language
  and the aligned language when an aligned file is given. Only the answer positions matter (KL between
  the unedited and edited distributions there), so the answer text only fixes where the KL is taken.

Checkpoint folder (`--out DIR`, the shared format of `bizsre_tasks.training.checkpoints`):
    bizsre_checkpoint.json  method "mend", edit language, base model name + fingerprint, training data
                            fingerprints; config: hypernetwork (`mend`), training options, the run
                            description; metrics: learned edit rates, timings, loss summary
    weights.safetensors     hypernetwork weights, normalisation statistics, log edit rates
    _training/              while training: run description, precompute shards, last saved state
                            (removed when training finishes unless --keep-state: the shards are large)
The manifest is written last, so a folder without it is an unfinished run; running the same command
again continues from the last saved state (every `--save-every` steps) and, for a fixed seed, ends
with the same checkpoint as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bizsre_tasks import languages
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.training.checkpoints import MANIFEST, STATE_DIR, WEIGHTS, CheckpointInfo, read_manifest, save_checkpoint

METHOD = "mend"
EDIT, GEN, LOC = 0, 1, 2

DEFAULTS: dict[str, Any] = {
    "layers": None,  # default: the last 3 layers
    "rank": 256,
    "n_blocks": 2,
    "share": True,
    "init_lr": 1e-4,
    "lr": 1e-4,
    "lr_lr": 1e-2,
    "c_edit": 1.0,
    "c_loc": 1.0,
    "batch_size": 4,
    "epochs": 1,
    "steps": None,
    "train_vocab": 1024,
    "precompute_batch": 4,
    "clip": 10.0,
    "save_every": 25,
    "aligned_file": None,
    "aligned_lang": None,
    "threads": 0,
    "device": "auto",
    "keep_state": False,
    "overwrite": False,
    "stop_after": None,
    "train_size": 1000,
    "edit_lang": "en",
    "seed": 1234,
    "pretrained": None,
    "train_file": None,
    "out": None,
    "quiet": False,
}


# --- command-line options --------------------------------------------------------------------------


def _layers(text: str) -> list[int]:
    try:
        return [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers expects comma-separated layer indices, got {text!r}") from None


class _TolerantGroup:
    """add_argument that skips flags the parser already has, so callers may define shared ones first."""

    def __init__(self, parser: argparse.ArgumentParser, group):
        self.parser, self.group = parser, group

    def add_argument(self, *flags, **kwargs):
        if any(flag in self.parser._option_string_actions for flag in flags):
            return None
        return self.group.add_argument(*flags, **kwargs)


def configure_mend_arguments(parser: argparse.ArgumentParser) -> None:
    """MEND-specific options (the common ones - pretrained, edit-lang, train-size, out, train-file,
    seed - are added by the caller, or by `build_parser`). Options the caller already defines (for
    example --steps or --epochs shared with SERAC) are left to the caller's definition."""
    group = _TolerantGroup(parser, parser.add_argument_group("MEND"))
    group.add_argument("--layers", type=_layers, default=None, help="edited layers (mlp_out), e.g. 15,16,17 (default: the last 3)")
    group.add_argument("--rank", type=int, default=DEFAULTS["rank"], help="rank of the hypernetwork's low-rank blocks (default 256)")
    group.add_argument("--n-blocks", type=int, default=DEFAULTS["n_blocks"], help="residual blocks in the hypernetwork (default 2)")
    group.add_argument("--per-layer", dest="share", action="store_false", default=True, help="one hypernetwork per layer instead of one shared by layers of the same shape")
    group.add_argument("--init-lr", type=float, default=DEFAULTS["init_lr"], help="initial per-layer edit rate (learned; default 1e-4)")
    group.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="Adam learning rate of the hypernetwork (default 1e-4)")
    group.add_argument("--lr-lr", type=float, default=DEFAULTS["lr_lr"], help="Adam learning rate of the log edit rates (default 1e-2)")
    group.add_argument("--c-edit", type=float, default=DEFAULTS["c_edit"], help="weight of the edit (reliability + generality) loss (default 1.0)")
    group.add_argument("--c-loc", type=float, default=DEFAULTS["c_loc"], help="weight of the locality KL (default 1.0)")
    group.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="independent edits per optimisation step (default 4)")
    group.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="passes over the training records (default 1)")
    group.add_argument("--steps", type=int, default=None, help="optimisation steps (overrides --epochs)")
    group.add_argument("--train-vocab", type=int, default=DEFAULTS["train_vocab"], help="candidate tokens per position in the training losses; 0 = full vocabulary (default 1024)")
    group.add_argument("--precompute-batch", type=int, default=DEFAULTS["precompute_batch"], help="records per forward pass of the precompute (default 4)")
    group.add_argument("--clip", type=float, default=DEFAULTS["clip"], help="gradient-norm clipping (default 10)")
    group.add_argument("--save-every", type=int, default=DEFAULTS["save_every"], help="save the resumable state every N steps (default 25)")
    group.add_argument("--aligned-file", default=None, help="file whose line i states record i's fact in another language (cross-lingual generality, e.g. train_qa_en.tsv for zh)")
    group.add_argument("--aligned-lang", default=None, help="language of --aligned-file (default: en, or zh when editing in en)")
    group.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    group.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    group.add_argument("--keep-state", action="store_true", help="keep the precompute and state folder after training")
    group.add_argument("--overwrite", action="store_true", help="discard an existing checkpoint or unfinished run in --out")
    group.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a killed run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_mend", description="Train a MEND hypernetwork for edited-hf method=mend.")
    parser.add_argument("--pretrained", default=None, help="base model folder or name (default: the embedded Gemma 3 270M)")
    parser.add_argument("--edit-lang", default="en", help="language of the edit prompts (default en)")
    parser.add_argument("--train-size", type=int, default=DEFAULTS["train_size"], help="number of training records used (first N; default 1000)")
    parser.add_argument("--out", required=True, help="checkpoint folder to write (resumes an unfinished run there)")
    parser.add_argument("--train-file", default=None, help="training file (flat JSON or question<TAB>answer); default $BIZSRE_TRAIN_FILE")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed; same seed, data and options give the same checkpoint on CPU (default 1234)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    configure_mend_arguments(parser)
    return parser


def _opt(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name, None)
    return DEFAULTS[name] if value is None else value


# --- training examples -----------------------------------------------------------------------------


@dataclass
class Example:
    rows: list[tuple[int, str, str]] = field(default_factory=list)  # (kind, prompt, target text)


def _prompt_and_target(question: str, answer: str, lang: str) -> tuple[str, str]:
    from bizsre_tasks.prompts import answer_separator, build_prompt, prompt_template

    return build_prompt(question, lang), answer_separator(prompt_template(lang)) + answer


def build_examples(records, lang: str, aligned=None, aligned_lang: str | None = None) -> list[Example]:
    """One `Example` per record: edit row, generality rows, one locality row (see the module docstring)."""
    n = len(records)
    examples = []
    for i, record in enumerate(records):
        example = Example()
        example.rows.append((EDIT, *_prompt_and_target(record.src, record.alt, lang)))
        if record.rephrase:
            example.rows.append((GEN, *_prompt_and_target(record.rephrase, record.alt, lang)))
        if aligned is not None:
            example.rows.append((GEN, *_prompt_and_target(aligned[i].src, aligned[i].alt, aligned_lang)))
        if record.loc and record.loc_ans:
            example.rows.append((LOC, *_prompt_and_target(record.loc, record.loc_ans, lang)))
        elif n > 1:
            j = (i + n // 2) % n
            if j == i:
                j = (i + 1) % n
            if aligned is not None and i % 2 == 1:
                example.rows.append((LOC, *_prompt_and_target(aligned[j].src, aligned[j].alt, aligned_lang)))
            else:
                example.rows.append((LOC, *_prompt_and_target(records[j].src, records[j].alt, lang)))
        examples.append(example)
    return examples


# --- fingerprints and the checkpoint folder --------------------------------------------------------


def file_fingerprint(path: str | os.PathLike | None) -> str | None:
    if not path:
        return None
    from bizsre_tasks.training.checkpoints import data_fingerprint

    return data_fingerprint(path)


def load_checkpoint(folder: str | os.PathLike, model, layout, edit_lang: str):
    """The trained `MendEditor` for `model`, after checking method, language, base model and shapes.

    The folder format and the method/language/base-model checks are the shared ones
    (`bizsre_tasks.training.checkpoints`); MEND adds its own check that the edited layers exist and
    have the shapes the hypernetwork was trained for.
    """
    from bizsre_tasks.editing.mend import MendConfig, MendEditor, weight_shapes
    from bizsre_tasks.training import checkpoints

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
        raise ConfigurationError(f"MEND checkpoint {folder}: {WEIGHTS} does not fit its config ({exc})") from None
    return editor, info


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
    from bizsre_tasks.editing.common import build_batch, hidden_states, requires_grad_only
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
    out = torch.full(shape, value, dtype=tensors[0].dtype)
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


# --- the training run ------------------------------------------------------------------------------


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _schedule(n: int, batch_size: int, total_steps: int, seed: int) -> list[list[int]]:
    """Example indices of every step: one seeded permutation per epoch, concatenated."""
    order: list[int] = []
    epoch = 0
    while len(order) < total_steps * batch_size:
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        order += torch.randperm(n, generator=generator).tolist()
        epoch += 1
    return [order[s * batch_size : (s + 1) * batch_size] for s in range(total_steps)]


def train(args: argparse.Namespace) -> Path:
    """Train a MEND hypernetwork and write its checkpoint folder to `args.out`; returns the folder."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bizsre_tasks import data_loading
    from bizsre_tasks.default_model import DEFAULT_MODEL_ALIAS, resolve_pretrained
    from bizsre_tasks.editing.layout import ModelLayout
    from bizsre_tasks.editing.mend import MendConfig, MendEditor, weight_shapes

    started = time.time()
    opt = {name: _opt(args, name) for name in DEFAULTS}
    if not opt["out"]:
        raise ConfigurationError("MEND training needs --out DIR (the checkpoint folder to write)")
    out = Path(opt["out"]).expanduser()
    lang = str(opt["edit_lang"])
    quiet = bool(opt["quiet"])
    for name in ("train_size", "batch_size", "rank", "n_blocks", "precompute_batch", "save_every"):
        if int(opt[name]) < 1:
            raise ConfigurationError(f"--{name.replace('_', '-')} must be >= 1, got {opt[name]}")
    if opt["train_vocab"] < 0:
        raise ConfigurationError("--train-vocab must be >= 0")
    if opt["threads"]:
        torch.set_num_threads(int(opt["threads"]))
    device = _resolve_device(str(opt["device"]))

    train_file = data_loading.resolve_train_file(opt["train_file"])
    if train_file is None:
        raise ConfigurationError(f"MEND training needs a training file: pass --train-file or set ${data_loading.TRAIN_FILE_ENV}")
    records = data_loading.load_train_records(train_file)
    aligned = aligned_lang = None
    if opt["aligned_file"]:
        aligned = data_loading.load_train_records(opt["aligned_file"])
        if len(aligned) != len(records):
            raise ConfigurationError(
                f"--aligned-file {opt['aligned_file']} has {len(aligned)} records but {train_file} has {len(records)}: "
                "line i of the aligned file must state the fact of record i"
            )
        aligned_lang = opt["aligned_lang"] or languages.counterpart(lang)
    size = min(int(opt["train_size"]), len(records))
    records = records[:size]
    aligned = aligned[:size] if aligned is not None else None
    examples = build_examples(records, lang, aligned, aligned_lang)

    pretrained = resolve_pretrained(opt["pretrained"])
    model_name = str(opt["pretrained"] or DEFAULT_MODEL_ALIAS)
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    model = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32).to(device)
    model.eval()
    model.requires_grad_(False)
    layout = ModelLayout.for_model(model)
    n_layers = layout.num_layers
    layers = list(opt["layers"]) if opt["layers"] else list(range(max(0, n_layers - 3), n_layers))
    for layer in layers:
        layout.check_layer(layer, "--layers")
    layers = sorted(set(layers))
    config = MendConfig(layers=tuple(layers), shapes=weight_shapes(layout, layers), rank=int(opt["rank"]),
                        n_blocks=int(opt["n_blocks"]), share=bool(opt["share"]), init_lr=float(opt["init_lr"]))
    steps_per_epoch = math.ceil(size / int(opt["batch_size"]))
    total_steps = int(opt["steps"]) if opt["steps"] else int(opt["epochs"]) * steps_per_epoch
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    from bizsre_tasks.editing.encoders import model_fingerprint

    base = {"name": model_name, "path": str(pretrained), "fingerprint": model_fingerprint(model)}
    data = {
        "file": str(train_file), "fingerprint": file_fingerprint(train_file), "records_used": size,
        "aligned_file": str(opt["aligned_file"]) if opt["aligned_file"] else None,
        "aligned_fingerprint": file_fingerprint(opt["aligned_file"]), "aligned_lang": aligned_lang,
    }
    training = {key: opt[key] for key in ("lr", "lr_lr", "c_edit", "c_loc", "batch_size", "train_vocab", "precompute_batch", "clip", "seed")}
    training.update(steps=total_steps, epochs=total_steps / steps_per_epoch)
    run = {"edit_lang": lang, "base_fingerprint": base["fingerprint"], "data": data, "mend": config.to_json(), "training": training}

    state_dir = out / STATE_DIR
    if opt["overwrite"] and out.exists():
        for name in (MANIFEST, WEIGHTS):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(state_dir, ignore_errors=True)
    if (out / MANIFEST).is_file():
        existing = read_manifest(out) or {}
        if existing.get("method") == METHOD and existing.get("config", {}).get("run") == json.loads(json.dumps(run)):
            _say(quiet, f"MEND checkpoint {out} already holds this training run; nothing to do")
            return out
        raise ConfigurationError(f"{out} already holds a checkpoint from other settings; choose another --out or pass --overwrite")
    run_file = state_dir / "run.json"
    if run_file.is_file():
        if json.loads(run_file.read_text(encoding="utf-8")) != json.loads(json.dumps(run)):
            raise ConfigurationError(
                f"{out} holds an unfinished MEND training run with other settings; rerun with the same options to resume it, "
                "or pass --overwrite to start over"
            )
    state_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(run, indent=2, ensure_ascii=False), encoding="utf-8")

    # 1. Precompute, in shards that survive an interruption (their compute time is kept with them).
    timing_file = state_dir / "precompute_seconds.json"
    precompute_seconds = json.loads(timing_file.read_text()) if timing_file.is_file() else 0.0
    shard_size = int(opt["precompute_batch"]) * 16
    cache: list[dict] = []
    progress = tqdm(total=size, desc=f"MEND precompute ({lang})", unit="record", disable=quiet)
    for start in range(0, size, shard_size):
        path = state_dir / f"shard_{start:07d}.pt"
        stop = min(start + shard_size, size)
        if path.is_file():
            shard = torch.load(path, weights_only=False)
            progress.update(len(shard))
        else:
            t0 = time.time()
            shard = []
            for begin in range(start, stop, int(opt["precompute_batch"])):
                chunk = examples[begin : min(begin + int(opt["precompute_batch"]), stop)]
                shard += precompute_chunk(model, tokenizer, layout, layers, chunk, int(opt["train_vocab"]), device)
                progress.update(len(chunk))
            _atomic_save(shard, path)
            precompute_seconds += time.time() - t0
            timing_file.write_text(json.dumps(precompute_seconds))
        cache += shard
    progress.close()
    _check_forward_from_layer(model, tokenizer, layout, layers, examples[0], cache[0], device)

    # 2. The hypernetwork, its normalisation statistics, the optimiser; resume if a state exists.
    torch.manual_seed(int(opt["seed"]))
    random.seed(int(opt["seed"]))
    editor = MendEditor(config).to(device)
    for layer, values in statistics(cache, layers).items():
        editor.set_statistics(layer, *values)
    net_params = [p for name, p in editor.named_parameters() if name != "log_lr"]
    optimizer = torch.optim.Adam([{"params": net_params, "lr": float(opt["lr"])}, {"params": [editor.log_lr], "lr": float(opt["lr_lr"])}])
    state_path = state_dir / "train_state.pt"
    step, history, train_seconds = 0, [], 0.0
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        editor.load_state_dict(state["editor"])
        optimizer.load_state_dict(state["optimizer"])
        step, history, train_seconds = state["step"], state["history"], state["train_seconds"]
        torch.set_rng_state(state["torch_rng"])
        _say(quiet, f"resuming MEND training at step {step}/{total_steps}")
    schedule = _schedule(size, int(opt["batch_size"]), total_steps, int(opt["seed"]))

    def save_state():
        _atomic_save({"editor": editor.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "history": history,
                      "train_seconds": train_seconds, "torch_rng": torch.get_rng_state()}, state_path)

    progress = tqdm(total=total_steps, initial=step, desc=f"MEND training ({lang})", unit="step", disable=quiet)
    t0 = time.time()
    stopped_early = False
    while step < total_steps:
        items = [cache[i] for i in schedule[step]]
        with torch.enable_grad():
            losses = step_losses(model, layout, editor, items, pad_id, device)
            loss = float(opt["c_edit"]) * losses["edit"] + float(opt["c_loc"]) * losses["loc"]
            if not torch.isfinite(loss):
                raise RuntimeError(f"MEND training diverged at step {step} (loss {loss.item()}); lower --lr / --init-lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(editor.parameters(), float(opt["clip"]))
        optimizer.step()
        step += 1
        history.append({"step": step, "edit": round(losses["edit"].item(), 5), "loc": round(losses["loc"].item(), 5), "acc": round(losses["acc"].item(), 4)})
        recent = history[-20:]
        progress.set_postfix(edit=f"{sum(h['edit'] for h in recent) / len(recent):.3f}", loc=f"{sum(h['loc'] for h in recent) / len(recent):.3f}",
                             acc=f"{sum(h['acc'] for h in recent) / len(recent):.2f}", lr=f"{editor.log_lr.exp().mean().item():.2e}")
        progress.update(1)
        if step % int(opt["save_every"]) == 0 or step == total_steps:
            train_seconds += time.time() - t0
            t0 = time.time()
            save_state()
        if opt["stop_after"] is not None and step >= int(opt["stop_after"]) and step < total_steps:
            stopped_early = True
            break
    progress.close()
    if stopped_early:
        _say(quiet, f"stopped after step {step} (state saved at the last multiple of --save-every)")
        return out

    def mean_of(key, part):
        return round(sum(h[key] for h in part) / max(len(part), 1), 4)

    first, last = history[: max(1, len(history) // 10)], history[-max(1, len(history) // 10):]
    train_data = [{"path": data["file"], "fingerprint": data["fingerprint"], "records": size, "role": "train"}]
    if data["aligned_file"]:
        train_data.append({"path": data["aligned_file"], "fingerprint": data["aligned_fingerprint"], "records": size,
                           "role": "aligned", "lang": aligned_lang})
    info = CheckpointInfo(
        method=METHOD,
        base_model_name=model_name,
        base_model_fingerprint=base["fingerprint"],
        edit_lang=lang,
        train_data=train_data,
        config={"mend": config.to_json(), "training": training, "run": run},
        metrics={
            "edit_lrs": {str(layer): editor.lr(layer).item() for layer in layers},
            "precompute_seconds": round(precompute_seconds, 1),
            "train_seconds": round(train_seconds, 1),
            "this_run_seconds": round(time.time() - started, 1),
            "loss_first_10pct": {k: mean_of(k, first) for k in ("edit", "loc", "acc")},
            "loss_last_10pct": {k: mean_of(k, last) for k in ("edit", "loc", "acc")},
        },
    )
    save_checkpoint(out, info, editor.state_dict())
    if not opt["keep_state"]:
        shutil.rmtree(state_dir, ignore_errors=True)
    _say(quiet, f"MEND checkpoint written to {out} (precompute {precompute_seconds:.0f} s, training {train_seconds:.0f} s)")
    return out


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


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)


def main(argv: list[str] | None = None) -> int:
    from bizsre_tasks.errors import BizsreError

    args = build_parser().parse_args(argv)
    try:
        train(args)
    except BizsreError as exc:
        print(f"train_mend: error: {exc}", flush=True)
        return 2
    return 0
