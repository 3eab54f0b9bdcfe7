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

Data per training record (all prompts through `bizsre_tasks.tasks.prompts`, exactly as evaluation builds them):
- edit row: the question in the edit language with the new answer; its NLL also enters the edit loss;
- generality rows: the record's rephrase (flat schema) and, with `--aligned-file`, line i of an aligned
  file (e.g. train_qa_en.tsv for Chinese training) in `--aligned-lang`: a cross-lingual rephrase;
  question<TAB>answer files have no rephrase, so without an aligned file the edit prompt is the only
  generality signal;
- locality row: the record's `loc`/`loc_ans` (flat schema); question<TAB>answer files have none, so the
  question and answer of another record (index i + N/2) are used, alternating between the edit language
  and the aligned language when an aligned file is given. Only the answer positions matter (KL between
  the unedited and edited distributions there), so the answer text only fixes where the KL is taken.

Checkpoint folder (`--out DIR`, the shared format of `bizsre_tasks.editing.checkpoints`):
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

from bizsre_tasks import fingerprints, languages
from bizsre_tasks.editing.checkpoints import MANIFEST, STATE_DIR, WEIGHTS, CheckpointInfo, read_manifest, save_checkpoint
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.training.mend_data import EDIT, GEN, LOC, Example, build_examples  # noqa: F401  (also this module's API)
from bizsre_tasks.training.mend_losses import (  # noqa: F401  (also this module's API)
    _check_forward_from_layer,
    forward_from_layer,
    precompute_chunk,
    statistics,
    step_losses,
)
from bizsre_tasks.training.mend_options import DEFAULTS, _opt, build_parser, configure_mend_arguments  # noqa: F401

METHOD = "mend"


# --- fingerprints and the checkpoint folder --------------------------------------------------------


def file_fingerprint(path: str | os.PathLike | None) -> str | None:
    if not path:
        return None
    return fingerprints.file_fingerprint(path)


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


@dataclass
class _Setup:
    """The checked options of one `train` call and what follows directly from them."""

    opt: dict[str, Any]
    out: Path
    lang: str
    quiet: bool
    device: torch.device
    started: float

    @property
    def state_dir(self) -> Path:
        return self.out / STATE_DIR


@dataclass
class _Examples:
    train_file: Path
    examples: list[Example]
    size: int  # training records used
    aligned_lang: str | None


@dataclass
class _Base:
    """The frozen base model."""

    name: str  # as the user gave it (or the default alias), for the manifest
    path: Path
    model: Any
    tokenizer: Any
    layout: Any  # ModelLayout


@dataclass
class _Plan:
    """What the run will do, and its description: the same description means the same checkpoint."""

    layers: list[int]
    config: Any  # MendConfig
    size: int
    total_steps: int
    pad_id: int
    fingerprint: str  # of the base model
    data: dict
    training: dict
    description: dict  # "run" in the manifest's config and _training/run.json


@dataclass
class _State:
    """The hypernetwork, its optimiser and the progress so far: what `train_state.pt` holds."""

    editor: Any  # MendEditor
    optimizer: torch.optim.Optimizer
    path: Path
    step: int = 0
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0

    def save(self) -> None:
        _atomic_save({"editor": self.editor.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                      "history": self.history, "train_seconds": self.train_seconds, "torch_rng": torch.get_rng_state()}, self.path)


def train(args: argparse.Namespace) -> Path:
    """Train a MEND hypernetwork and write its checkpoint folder to `args.out`; returns the folder."""
    setup = _resolve_setup(args)
    examples = _load_examples(setup)
    base = _load_base_model(setup)
    plan = _plan_run(setup, examples, base)
    if not _prepare_run_folder(setup, plan.description):
        return setup.out
    cache, precompute_seconds = _precompute(setup, base, plan.layers, examples)
    _check_forward_from_layer(base.model, base.tokenizer, base.layout, plan.layers, examples.examples[0], cache[0], setup.device)
    state = _initial_state(setup, plan, cache)
    if _optimise(setup, base, plan, cache, state):
        _write_checkpoint(setup, base, plan, state, precompute_seconds, examples.aligned_lang)
    return setup.out


def _resolve_setup(args: argparse.Namespace) -> _Setup:
    """Every option with its default, checked before anything slow starts; applies --threads."""
    started = time.time()
    opt = {name: _opt(args, name) for name in DEFAULTS}
    if not opt["out"]:
        raise ConfigurationError("MEND training needs --out DIR (the checkpoint folder to write)")
    out = Path(opt["out"]).expanduser()
    lang = str(opt["edit_lang"])
    for name in ("train_size", "batch_size", "rank", "n_blocks", "precompute_batch", "save_every"):
        if int(opt[name]) < 1:
            raise ConfigurationError(f"--{name.replace('_', '-')} must be >= 1, got {opt[name]}")
    if opt["train_vocab"] < 0:
        raise ConfigurationError("--train-vocab must be >= 0")
    if opt["threads"]:
        torch.set_num_threads(int(opt["threads"]))
    return _Setup(opt, out, lang, bool(opt["quiet"]), _resolve_device(str(opt["device"])), started)


def _load_examples(setup: _Setup) -> _Examples:
    """The first --train-size records of the training file (and of the aligned file) as training examples."""
    from bizsre_tasks.tasks import data_loading

    opt = setup.opt
    train_file = data_loading.resolve_train_file(opt["train_file"])
    if train_file is None:
        raise ConfigurationError(f"MEND training needs a training file: pass --train-file or set ${data_loading.TRAIN_FILE_ENV}")
    indexed = data_loading.load_indexed_train_records(train_file)
    aligned = aligned_lang = None
    if opt["aligned_file"]:
        # By line/record index, unanswered lines included: files that leave out different lines stay aligned.
        aligned = data_loading.load_indexed_train_records(opt["aligned_file"])
        if len(aligned) != len(indexed):
            raise ConfigurationError(
                f"--aligned-file {opt['aligned_file']} has {len(aligned)} records but {train_file} has {len(indexed)}: "
                "line i of the aligned file must state the fact of record i"
            )
        aligned_lang = opt["aligned_lang"] or languages.counterpart(setup.lang)
    kept = [i for i, record in enumerate(indexed) if record is not None][: int(opt["train_size"])]
    size = len(kept)
    records = [indexed[i] for i in kept]
    aligned = [aligned[i] for i in kept] if aligned is not None else None
    return _Examples(train_file, build_examples(records, setup.lang, aligned, aligned_lang), size, aligned_lang)


def _load_base_model(setup: _Setup) -> _Base:
    """The base model in float32 on the training device, frozen."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bizsre_tasks.default_model import DEFAULT_MODEL_ALIAS, resolve_pretrained
    from bizsre_tasks.editing.layout import ModelLayout

    pretrained = resolve_pretrained(setup.opt["pretrained"])
    name = str(setup.opt["pretrained"] or DEFAULT_MODEL_ALIAS)
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    model = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32).to(setup.device)
    model.eval()
    model.requires_grad_(False)
    return _Base(name, pretrained, model, tokenizer, ModelLayout.for_model(model))


def _mend_config(opt: dict[str, Any], layout) -> tuple[list[int], Any]:
    """The edited layers (default: the last three) and the hypernetwork's configuration."""
    from bizsre_tasks.editing.mend import MendConfig, weight_shapes

    n_layers = layout.num_layers
    layers = list(opt["layers"]) if opt["layers"] else list(range(max(0, n_layers - 3), n_layers))
    for layer in layers:
        layout.check_layer(layer, "--layers")
    layers = sorted(set(layers))
    config = MendConfig(layers=tuple(layers), shapes=weight_shapes(layout, layers), rank=int(opt["rank"]),
                        n_blocks=int(opt["n_blocks"]), share=bool(opt["share"]), init_lr=float(opt["init_lr"]))
    return layers, config


def _plan_run(setup: _Setup, examples: _Examples, base: _Base) -> _Plan:
    from bizsre_tasks.editing.tensors.encoders import model_fingerprint

    opt = setup.opt
    layers, config = _mend_config(opt, base.layout)
    steps_per_epoch = math.ceil(examples.size / int(opt["batch_size"]))
    total_steps = int(opt["steps"]) if opt["steps"] else int(opt["epochs"]) * steps_per_epoch
    pad_id = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
    fingerprint = model_fingerprint(base.model)
    data = {
        "file": str(examples.train_file), "fingerprint": file_fingerprint(examples.train_file), "records_used": examples.size,
        "aligned_file": str(opt["aligned_file"]) if opt["aligned_file"] else None,
        "aligned_fingerprint": file_fingerprint(opt["aligned_file"]), "aligned_lang": examples.aligned_lang,
    }
    training = {key: opt[key] for key in ("lr", "lr_lr", "c_edit", "c_loc", "batch_size", "train_vocab", "precompute_batch", "clip", "seed")}
    training.update(steps=total_steps, epochs=total_steps / steps_per_epoch)
    description = {"edit_lang": setup.lang, "base_fingerprint": fingerprint, "data": data, "mend": config.to_json(), "training": training}
    return _Plan(layers, config, examples.size, total_steps, pad_id, fingerprint, data, training, description)


def _prepare_run_folder(setup: _Setup, description: dict) -> bool:
    """Clears the folder with --overwrite, checks that a finished checkpoint or an unfinished run there is this
    run, and records the run; False when the folder already holds this run's checkpoint (nothing to do)."""
    out, state_dir = setup.out, setup.state_dir
    as_json = json.loads(json.dumps(description))  # as read back from a file (tuples become lists)
    if setup.opt["overwrite"] and out.exists():
        for name in (MANIFEST, WEIGHTS):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(state_dir, ignore_errors=True)
    if (out / MANIFEST).is_file():
        existing = read_manifest(out) or {}
        if existing.get("method") == METHOD and existing.get("config", {}).get("run") == as_json:
            _say(setup.quiet, f"MEND checkpoint {out} already holds this training run; nothing to do")
            return False
        raise ConfigurationError(f"{out} already holds a checkpoint from other settings; choose another --out or pass --overwrite")
    run_file = state_dir / "run.json"
    if run_file.is_file():
        if json.loads(run_file.read_text(encoding="utf-8")) != as_json:
            raise ConfigurationError(
                f"{out} holds an unfinished MEND training run with other settings; rerun with the same options to resume it, "
                "or pass --overwrite to start over"
            )
    state_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(description, indent=2, ensure_ascii=False), encoding="utf-8")
    return True


def _precompute(setup: _Setup, base: _Base, layers: list[int], examples: _Examples) -> tuple[list[dict], float]:
    """Every example's precompute and the seconds it took, in shards that survive an interruption (their
    compute time is kept with them)."""
    from tqdm.auto import tqdm

    state_dir, size, batch = setup.state_dir, examples.size, int(setup.opt["precompute_batch"])
    timing_file = state_dir / "precompute_seconds.json"
    precompute_seconds = json.loads(timing_file.read_text()) if timing_file.is_file() else 0.0
    shard_size = batch * 16
    cache: list[dict] = []
    progress = tqdm(total=size, desc=f"MEND precompute ({setup.lang})", unit="record", disable=setup.quiet)
    for start in range(0, size, shard_size):
        path = state_dir / f"shard_{start:07d}.pt"
        stop = min(start + shard_size, size)
        if path.is_file():
            shard = torch.load(path, weights_only=False)
            progress.update(len(shard))
        else:
            t0 = time.time()
            shard = []
            for begin in range(start, stop, batch):
                chunk = examples.examples[begin : min(begin + batch, stop)]
                shard += precompute_chunk(base.model, base.tokenizer, base.layout, layers, chunk, int(setup.opt["train_vocab"]), setup.device)
                progress.update(len(chunk))
            _atomic_save(shard, path)
            precompute_seconds += time.time() - t0
            timing_file.write_text(json.dumps(precompute_seconds))
        cache += shard
    progress.close()
    return cache, precompute_seconds


def _initial_state(setup: _Setup, plan: _Plan, cache: list[dict]) -> _State:
    """The hypernetwork (seeded here, so a fixed seed gives the same weights), its normalisation statistics and
    optimiser; the last saved state when there is one."""
    from bizsre_tasks.editing.mend import MendEditor

    torch.manual_seed(int(setup.opt["seed"]))
    random.seed(int(setup.opt["seed"]))
    editor = MendEditor(plan.config).to(setup.device)
    for layer, values in statistics(cache, plan.layers).items():
        editor.set_statistics(layer, *values)
    net_params = [p for name, p in editor.named_parameters() if name != "log_lr"]
    optimizer = torch.optim.Adam([{"params": net_params, "lr": float(setup.opt["lr"])}, {"params": [editor.log_lr], "lr": float(setup.opt["lr_lr"])}])
    state = _State(editor, optimizer, setup.state_dir / "train_state.pt")
    if state.path.is_file():
        saved = torch.load(state.path, weights_only=False)
        editor.load_state_dict(saved["editor"])
        optimizer.load_state_dict(saved["optimizer"])
        state.step, state.history, state.train_seconds = saved["step"], saved["history"], saved["train_seconds"]
        torch.set_rng_state(saved["torch_rng"])
        _say(setup.quiet, f"resuming MEND training at step {state.step}/{plan.total_steps}")
    return state


def _optimise(setup: _Setup, base: _Base, plan: _Plan, cache: list[dict], state: _State) -> bool:
    """Steps from the saved one to the last, saving the state every --save-every steps and at the end;
    False when --stop-after ended it early."""
    from tqdm.auto import tqdm

    opt = setup.opt
    schedule = _schedule(plan.size, int(opt["batch_size"]), plan.total_steps, int(opt["seed"]))
    progress = tqdm(total=plan.total_steps, initial=state.step, desc=f"MEND training ({setup.lang})", unit="step", disable=setup.quiet)
    t0 = time.time()
    stopped_early = False
    while state.step < plan.total_steps:
        _train_step(setup, base, plan, [cache[i] for i in schedule[state.step]], state)
        progress.set_postfix(**_recent_losses(state))
        progress.update(1)
        if state.step % int(opt["save_every"]) == 0 or state.step == plan.total_steps:
            state.train_seconds += time.time() - t0
            t0 = time.time()
            state.save()
        if opt["stop_after"] is not None and state.step >= int(opt["stop_after"]) and state.step < plan.total_steps:
            stopped_early = True
            break
    progress.close()
    if stopped_early:
        _say(setup.quiet, f"stopped after step {state.step} (state saved at the last multiple of --save-every)")
    return not stopped_early


def _train_step(setup: _Setup, base: _Base, plan: _Plan, items: list[dict], state: _State) -> None:
    """One optimiser step on `items`; its losses go into the history."""
    opt = setup.opt
    with torch.enable_grad():
        losses = step_losses(base.model, base.layout, state.editor, items, plan.pad_id, setup.device)
        loss = float(opt["c_edit"]) * losses["edit"] + float(opt["c_loc"]) * losses["loc"]
        if not torch.isfinite(loss):
            raise RuntimeError(f"MEND training diverged at step {state.step} (loss {loss.item()}); lower --lr / --init-lr")
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
    torch.nn.utils.clip_grad_norm_(state.editor.parameters(), float(opt["clip"]))
    state.optimizer.step()
    state.step += 1
    state.history.append({"step": state.step, "edit": round(losses["edit"].item(), 5), "loc": round(losses["loc"].item(), 5),
                          "acc": round(losses["acc"].item(), 4)})


def _recent_losses(state: _State) -> dict[str, str]:
    """The progress bar's postfix: mean losses of the last 20 steps and the mean edit rate."""
    recent = state.history[-20:]
    return {"edit": f"{sum(h['edit'] for h in recent) / len(recent):.3f}", "loc": f"{sum(h['loc'] for h in recent) / len(recent):.3f}",
            "acc": f"{sum(h['acc'] for h in recent) / len(recent):.2f}", "lr": f"{state.editor.log_lr.exp().mean().item():.2e}"}


def _write_checkpoint(setup: _Setup, base: _Base, plan: _Plan, state: _State, precompute_seconds: float, aligned_lang: str | None) -> None:
    """The checkpoint folder with its metrics; the run's state folder is removed unless --keep-state."""

    def mean_of(key, part):
        return round(sum(h[key] for h in part) / max(len(part), 1), 4)

    history, data = state.history, plan.data
    first, last = history[: max(1, len(history) // 10)], history[-max(1, len(history) // 10):]
    train_data = [{"path": data["file"], "fingerprint": data["fingerprint"], "records": plan.size, "role": "train"}]
    if data["aligned_file"]:
        train_data.append({"path": data["aligned_file"], "fingerprint": data["aligned_fingerprint"], "records": plan.size,
                           "role": "aligned", "lang": aligned_lang})
    info = CheckpointInfo(
        method=METHOD,
        base_model_name=base.name,
        base_model_fingerprint=plan.fingerprint,
        edit_lang=setup.lang,
        train_data=train_data,
        config={"mend": plan.config.to_json(), "training": plan.training, "run": plan.description},
        metrics={
            "edit_lrs": {str(layer): state.editor.lr(layer).item() for layer in plan.layers},
            "precompute_seconds": round(precompute_seconds, 1),
            "train_seconds": round(state.train_seconds, 1),
            "this_run_seconds": round(time.time() - setup.started, 1),
            "loss_first_10pct": {k: mean_of(k, first) for k in ("edit", "loc", "acc")},
            "loss_last_10pct": {k: mean_of(k, last) for k in ("edit", "loc", "acc")},
        },
    )
    save_checkpoint(setup.out, info, state.editor.state_dict())
    if not setup.opt["keep_state"]:
        shutil.rmtree(setup.state_dir, ignore_errors=True)
    _say(setup.quiet, f"MEND checkpoint written to {setup.out} (precompute {precompute_seconds:.0f} s, training {state.train_seconds:.0f} s)")


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
