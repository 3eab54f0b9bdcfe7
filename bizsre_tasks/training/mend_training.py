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
from pathlib import Path

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


def train(args: argparse.Namespace) -> Path:
    """Train a MEND hypernetwork and write its checkpoint folder to `args.out`; returns the folder."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bizsre_tasks.default_model import DEFAULT_MODEL_ALIAS, resolve_pretrained
    from bizsre_tasks.editing.layout import ModelLayout
    from bizsre_tasks.editing.mend import MendConfig, MendEditor, weight_shapes
    from bizsre_tasks.tasks import data_loading

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

    from bizsre_tasks.editing.tensors.encoders import model_fingerprint

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
