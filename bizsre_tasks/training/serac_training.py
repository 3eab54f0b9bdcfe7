"""Training SERAC's scope classifier (`bizsre train serac`).

Data. Record i of the training file (edit language) gives a group of questions that one edit covers:
- its question `src` (the anchor: what an edit in memory looks like);
- its `rephrase` (flat schema only): a paraphrase, monolingual positive;
- with `--aligned-file F` (repeatable): the question and rephrase of line/record i of F, a file whose
  line i states the same fact in another language (the Bi-ZsRE train_qa_zh.tsv line i is the
  translation of zsre_train_en_10000.json record i): cross-lingual positives. Alignment is by line
  number, counting lines without an answer too.
Negatives: the record's `loc` (flat schema), and every other group's questions in the batch (other
facts, in both languages). question<TAB>answer files have neither rephrase nor loc, so a Chinese
training file needs an aligned file for positives; its negatives are the other records' questions.

Training. Features of every distinct question come from the frozen encoder once (the slow part,
saved in chunks, so a killed run keeps what it encoded); the head then trains on them with a
symmetric InfoNCE loss (anchors against positives, hard negatives and the other anchors). The
in-scope threshold maximises balanced accuracy (mean of true-positive and true-negative rates) on
held-out records (the `--val-size` records after the first `--train-size`).

Resuming. `--out DIR` holds `_training/` (run description, feature chunks, the last saved state every
`--save-every` steps). Running the same command again continues from there; batches are drawn from a
generator seeded by (seed, step), so a resumed run ends with the same checkpoint as an uninterrupted
one, and the same seed always gives the same checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from bizsre_tasks.editing.checkpoints import (
    STATE_DIR,
    CheckpointInfo,
    data_fingerprint,
    read_manifest,
    save_checkpoint,
)
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.tasks import data_loading, prompts
from bizsre_tasks.training.serac_options import DEFAULTS

logger = logging.getLogger(__name__)

METHOD = "serac"
FEATURE_CHUNK = 256
RUN_FILE = "run.json"
STATE_FILE = "state.pt"


@dataclass
class Group:
    """Questions one edit covers (anchor + positives) and questions it must not (hard negatives)."""

    anchor: str
    positives: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)


@dataclass
class Row:
    src: str | None
    rephrase: str | None = None
    loc: str | None = None


def read_rows(path: Path) -> list[Row]:
    """Questions of a training file by line (TSV) or record (JSON) index, so files stay aligned.

    Unlike `load_train_records`, TSV lines without an answer keep their index (as empty-question
    rows are kept as None): the scope classifier needs questions only.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() in (".tsv", ".txt"):
        if not path.is_file():
            raise data_loading.DataFormatError(path, "file not found")
        rows = []
        for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            columns = line.split("\t")
            if len(columns) > 2:
                raise data_loading.DataFormatError(path, f"expected question<TAB>answer, got {len(columns)} columns", record=index, field="line")
            question = columns[0].strip()
            rows.append(Row(src=question or None))
        if not any(row.src for row in rows):
            raise data_loading.DataFormatError(path, "contains no questions")
        return rows
    return [Row(record.src, record.rephrase, record.loc) for record in data_loading.load_train_records(path)]


def _clean(text: str | None) -> str | None:
    return prompts.clean_question(text) if text else None


def build_groups(main: list[Row], aligned: list[list[Row]]) -> list[Group]:
    groups = []
    for index, row in enumerate(main):
        if not row.src:
            continue
        group = Group(anchor=_clean(row.src))
        candidates = [row.rephrase]
        negatives = [row.loc]
        for other in aligned:
            if index < len(other):
                candidates += [other[index].src, other[index].rephrase]
                negatives.append(other[index].loc)
        group.positives = [q for q in dict.fromkeys(_clean(c) for c in candidates if c) if q and q != group.anchor]
        group.negatives = [q for q in dict.fromkeys(_clean(n) for n in negatives if n) if q]
        groups.append(group)
    return groups


def split_groups(groups: list[Group], train_size: int, val_size: int) -> tuple[list[Group], list[Group]]:
    """First `train_size` groups with positives for training, the next `val_size` for the threshold."""
    usable = [g for g in groups if g.positives]
    if not usable:
        raise ConfigurationError(
            "the training data has no positive pairs: use a flat JSON file with 'rephrase' fields, or give "
            "--aligned-file with the same questions in another language (e.g. train_qa_en.tsv for train_qa_zh.tsv)"
        )
    if len(usable) < train_size + val_size:
        val_size = max(1, min(val_size, len(usable) // 5)) if len(usable) > 1 else 0
        train_size = min(train_size, len(usable) - val_size)
    train, val = usable[:train_size], usable[train_size : train_size + val_size]
    if not train:
        raise ConfigurationError("not enough training records with positives")
    return train, val


# --- features -------------------------------------------------------------------------------------


def encode_all(encoder, texts: list[str], folder: Path, batch_size: int, quiet: bool) -> torch.Tensor:
    """Features of `texts` in fixed chunks saved to `folder`; chunks already there are reused."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [texts[start : start + FEATURE_CHUNK] for start in range(0, len(texts), FEATURE_CHUNK)]
    parts = []
    bar = tqdm(total=len(texts), desc="SERAC: encoding questions", unit="q", disable=quiet)
    for number, chunk in enumerate(chunks):
        path = folder / f"features-{number:05d}.pt"
        digest = hashlib.sha256("\n".join(chunk).encode()).hexdigest()[:16]
        features = None
        if path.is_file():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                if saved.get("digest") == digest:
                    features = saved["features"]
            except Exception:  # a chunk cut short by a kill: encode it again
                features = None
        if features is None:
            features = encoder.encode(chunk, batch_size=batch_size).float()
            staging = path.with_suffix(".tmp")
            torch.save({"digest": digest, "features": features}, staging)
            staging.replace(path)
        parts.append(features)
        bar.update(len(chunk))
    bar.close()
    return torch.cat(parts) if parts else torch.zeros((0, encoder.dim))


# --- training -------------------------------------------------------------------------------------


@dataclass
class IndexedGroups:
    """Groups as indices into the feature matrix."""

    anchors: torch.Tensor
    positives: list[list[int]]
    negatives: list[list[int]]

    @classmethod
    def build(cls, groups: list[Group], index: dict[str, int]) -> IndexedGroups:
        return cls(
            anchors=torch.tensor([index[g.anchor] for g in groups]),
            positives=[[index[q] for q in g.positives] for g in groups],
            negatives=[[index[q] for q in g.negatives] for g in groups],
        )


def batch_loss(head, features: torch.Tensor, data: IndexedGroups, batch: torch.Tensor, generator: torch.Generator, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over the batch: each anchor's positive against every other candidate."""
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=generator))]  # noqa: E731
    anchors = head(features[data.anchors[batch]])
    positives = head(features[torch.tensor([pick(data.positives[i]) for i in batch.tolist()])])
    hard = [pick(data.negatives[i]) for i in batch.tolist() if data.negatives[i]]
    size = len(batch)
    blocks = [positives, anchors] + ([head(features[torch.tensor(hard)])] if hard else [])
    candidates = torch.cat(blocks)
    logits = anchors @ candidates.T / temperature
    own_anchor = torch.arange(size) + size
    logits[torch.arange(size), own_anchor] = float("-inf")  # an anchor is not its own negative
    labels = torch.arange(size)
    forward = torch.nn.functional.cross_entropy(logits, labels)
    backward = torch.nn.functional.cross_entropy(positives @ anchors.T / temperature, labels)
    return (forward + backward) / 2


@torch.no_grad()
def choose_threshold(head, features: torch.Tensor, data: IndexedGroups, seed: int) -> tuple[float, dict[str, float]]:
    """Threshold maximising balanced accuracy on held-out pairs, and what it achieves."""
    vectors = head(features)
    pos, neg, hard = [], [], []
    count = len(data.anchors)
    generator = torch.Generator().manual_seed(seed)
    for i in range(count):
        anchor = vectors[data.anchors[i]]
        pos += [float(anchor @ vectors[j]) for j in data.positives[i]]
        hard += [float(anchor @ vectors[j]) for j in data.negatives[i]]
        if count > 1:
            others = torch.randint(count - 1, (3,), generator=generator).tolist()
            for other in others:
                other = other + (other >= i)  # any group but i
                neg.append(float(anchor @ vectors[data.anchors[other]]))
                neg += [float(anchor @ vectors[j]) for j in data.positives[other][:1]]
    negatives = neg + hard
    if not pos or not negatives:
        return 0.5, {"val_pairs": 0}
    p, n = torch.tensor(pos), torch.tensor(negatives)
    candidates = torch.cat([p, n]).sort().values
    best, best_t = -1.0, 0.5
    for t in candidates.tolist():
        score = ((p >= t).float().mean() + (n < t).float().mean()).item() / 2
        if score > best:
            best, best_t = score, t
    # Midway between the chosen value and the next lower score, so the boundary is not on a sample.
    lower = candidates[candidates < best_t]
    threshold = (best_t + float(lower.max())) / 2 if len(lower) else best_t - 1e-4
    metrics = {
        "val_balanced_accuracy": round(best, 4),
        "val_true_positive_rate": round(float((p >= threshold).float().mean()), 4),
        "val_true_negative_rate": round(float((n < threshold).float().mean()), 4),
        "val_hard_negative_rate": round(float((torch.tensor(hard) < threshold).float().mean()), 4) if hard else None,
        "val_positive_pairs": len(pos),
        "val_negative_pairs": len(negatives),
    }
    return threshold, metrics


# --- the command ------------------------------------------------------------------------------------


def _opt(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name, None)
    return DEFAULTS[name] if value is None else value


def _load_model(pretrained: str | None, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bizsre_tasks.default_model import resolve_pretrained

    path = resolve_pretrained(pretrained)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except OSError as exc:
        raise ConfigurationError(f"cannot load base model '{pretrained}': {exc}") from None
    model.to(device).eval().requires_grad_(False)
    return model, tokenizer, path


def _resolve_device(name: str | None) -> str:
    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@dataclass
class _Setup:
    """The checked options of one `train` call."""

    out: Path
    train_file: Path
    aligned_files: list[Path]
    edit_lang: str
    seed: int
    config: dict[str, Any]  # everything that shapes the checkpoint (all options but --save-every)
    quiet: bool
    overwrite: bool
    device: str
    pretrained: str | None
    save_every: int
    stop_after: int | None

    @property
    def state_dir(self) -> Path:
        return self.out / STATE_DIR


@dataclass
class _Encoder:
    """The frozen base model as the source of question features."""

    model_path: Path
    fingerprint: str
    encoder: Any


@dataclass
class _Run:
    """The run's description and key (the same key means the same checkpoint) and its data files."""

    data_files: list[dict]
    description: dict
    key: str


@dataclass
class _Data:
    """Training and held-out groups, and the features of every question in them."""

    train_groups: list[Group]
    val_groups: list[Group]
    texts: list[str]
    features: torch.Tensor
    encode_seconds: float
    train: IndexedGroups
    val: IndexedGroups


@dataclass
class _State:
    """The head, its optimiser and the progress so far: what `state.pt` holds."""

    head: Any  # ScopeHead
    optimiser: torch.optim.Optimizer
    path: Path
    step: int = 0
    losses: list[float] = field(default_factory=list)


def train(args: argparse.Namespace) -> Path:
    """Train the scope classifier and write the checkpoint folder `args.out`; returns the folder."""
    setup = _resolve_setup(args)
    encoder = _load_encoder(setup)
    run = _describe_run(setup, encoder)
    if not _prepare_run_folder(setup, run):
        return setup.out
    data = _load_data(setup, encoder.encoder)
    state = _initial_state(setup, data)
    train_seconds = _train_head(setup, data, state)
    if train_seconds is not None:
        _write_checkpoint(setup, encoder, run, data, state, train_seconds)
    return setup.out


def _resolve_setup(args: argparse.Namespace) -> _Setup:
    """Every option with its default, checked before anything slow starts; applies --threads."""
    quiet = bool(getattr(args, "quiet", False))
    if not getattr(args, "out", None):
        raise ConfigurationError("SERAC training needs --out DIR (the checkpoint folder to write)")
    out = Path(args.out).expanduser()
    train_file = data_loading.resolve_train_file(getattr(args, "train_file", None))
    if train_file is None:
        raise ConfigurationError(f"SERAC training needs a training file: --train-file F or ${data_loading.TRAIN_FILE_ENV}")
    aligned_files = [Path(p).expanduser() for p in (getattr(args, "aligned_file", None) or [])]
    edit_lang = str(getattr(args, "edit_lang", None) or "en")
    seed = int(_opt(args, "seed"))
    threads = int(getattr(args, "threads", 0) or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    config = {key: _opt(args, key) for key in DEFAULTS if key not in ("save_every",)}
    for key in ("train_size", "steps", "batch_size", "proj_dim"):
        if config[key] < 1:
            raise ConfigurationError(f"--{key.replace('_', '-')} must be >= 1")
    return _Setup(
        out=out, train_file=train_file, aligned_files=aligned_files, edit_lang=edit_lang, seed=seed, config=config, quiet=quiet,
        overwrite=bool(getattr(args, "overwrite", False)), device=_resolve_device(getattr(args, "device", None)),
        pretrained=getattr(args, "pretrained", None), save_every=int(getattr(args, "save_every", None) or DEFAULTS["save_every"]),
        stop_after=getattr(args, "stop_after", None),
    )


def _load_encoder(setup: _Setup) -> _Encoder:
    """The base model and the encoder built on it; `--encoder base` records the layer it chose in the config."""
    from bizsre_tasks.editing.layout import ModelLayout
    from bizsre_tasks.editing.tensors.encoders import build_encoder, model_fingerprint

    model, tokenizer, model_path = _load_model(setup.pretrained, setup.device)
    fingerprint = model_fingerprint(model)
    context = argparse.Namespace(model=model, tokenizer=tokenizer, layout=ModelLayout.for_model(model), device=torch.device(setup.device))
    encoder = build_encoder(setup.config["encoder"], context, setup.config["encoder_layer"], fingerprint)
    if setup.config["encoder"] == "base":
        setup.config["encoder_layer"] = encoder.layer
    return _Encoder(model_path, fingerprint, encoder)


def _describe_run(setup: _Setup, encoder: _Encoder) -> _Run:
    data_files = [{"path": str(setup.train_file), "fingerprint": data_fingerprint(setup.train_file), "role": "train"}]
    data_files += [{"path": str(p), "fingerprint": data_fingerprint(p), "role": "aligned"} for p in setup.aligned_files]
    description = {"method": METHOD, "edit_lang": setup.edit_lang, "base_model": encoder.fingerprint, "encoder": encoder.encoder.key,
                   "config": setup.config, "data": [d["fingerprint"] for d in data_files]}
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
    return _Run(data_files, description, key)


def _prepare_run_folder(setup: _Setup, run: _Run) -> bool:
    """Checks that a finished checkpoint or an unfinished run in the folder is this run (--overwrite: starts
    afresh) and records the run; False when the folder already holds this run's checkpoint (nothing to do)."""
    out = setup.out
    manifest = read_manifest(out)
    if manifest is not None:
        if manifest.get("config", {}).get("run_key") == run.key and not setup.overwrite:
            _say(setup.quiet, f"SERAC checkpoint {out} already holds this training run; nothing to do")
            return False
        if not setup.overwrite:
            raise ConfigurationError(f"{out} already holds a checkpoint from other settings; choose another --out or pass --overwrite")
    state_dir = setup.state_dir
    if state_dir.is_dir():
        previous = _read_json(state_dir / RUN_FILE)
        if previous.get("run_key") != run.key:
            if not setup.overwrite:
                raise ConfigurationError(
                    f"{out} holds an unfinished SERAC run with other settings; rerun with the same options to resume, "
                    "or pass --overwrite to start afresh"
                )
            shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / RUN_FILE).write_text(json.dumps(dict(run.description, run_key=run.key), indent=2), encoding="utf-8")
    return True


def _load_data(setup: _Setup, encoder) -> _Data:
    """Groups from the training (and aligned) files, then the features of every distinct question."""
    config = setup.config
    main_rows = read_rows(setup.train_file)
    aligned_rows = [read_rows(p) for p in setup.aligned_files]
    limit = config["train_size"] + config["val_size"]
    groups = build_groups(main_rows[: limit * 2], [rows[: limit * 2] for rows in aligned_rows])
    train_groups, val_groups = split_groups(groups, config["train_size"], config["val_size"])
    texts = sorted({q for g in train_groups + val_groups for q in [g.anchor, *g.positives, *g.negatives]}, key=lambda t: (len(t), t))
    index = {text: i for i, text in enumerate(texts)}
    started = time.time()
    features = encode_all(encoder, texts, setup.state_dir / f"features-{encoder.key}", config["encode_batch_size"], setup.quiet)
    encode_seconds = time.time() - started
    train_data = IndexedGroups.build(train_groups, index)
    val_data = IndexedGroups.build(val_groups, index) if val_groups else train_data
    return _Data(train_groups, val_groups, texts, features, encode_seconds, train_data, val_data)


def _initial_state(setup: _Setup, data: _Data) -> _State:
    """The head (seeded here, so a fixed seed gives the same weights) with statistics of the training
    features, and its optimiser; the last saved state when there is one."""
    from bizsre_tasks.editing.scope_classifier import ScopeHead

    config = setup.config
    torch.manual_seed(setup.seed)
    head = ScopeHead(data.features.shape[1], config["proj_dim"], config["hidden"])
    used = sorted(set(data.train.anchors.tolist()) | {i for options in data.train.positives for i in options})
    head.set_statistics(data.features[used])
    optimiser = torch.optim.AdamW(head.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    state = _State(head, optimiser, setup.state_dir / STATE_FILE)
    if state.path.is_file():
        saved = torch.load(state.path, map_location="cpu", weights_only=True)
        head.load_state_dict(saved["head"])
        optimiser.load_state_dict(saved["optimiser"])
        state.step, state.losses = int(saved["step"]), list(saved["losses"])
        _say(setup.quiet, f"SERAC: resuming {setup.out} at step {state.step}/{config['steps']}")
    return state


def _train_head(setup: _Setup, data: _Data, state: _State) -> float | None:
    """Steps from the saved one to the last, saving the state every --save-every steps, at the end and at
    --stop-after; the training seconds, or None when --stop-after ended it early."""
    config, stop_after = setup.config, setup.stop_after
    batch_size = min(config["batch_size"], len(data.train_groups))
    started = time.time()
    bar = tqdm(total=config["steps"], initial=state.step, desc="SERAC: training scope classifier", unit="step", disable=setup.quiet)
    state.head.train()
    for step in range(state.step, config["steps"]):
        generator = torch.Generator().manual_seed(setup.seed * 1_000_003 + step)
        batch = torch.randperm(len(data.train_groups), generator=generator)[:batch_size]
        loss = batch_loss(state.head, data.features, data.train, batch, generator, config["temperature"])
        if not torch.isfinite(loss):
            raise ConfigurationError(f"SERAC training diverged at step {step} (loss {loss.item()}); lower --lr")
        state.optimiser.zero_grad()
        loss.backward()
        state.optimiser.step()
        state.losses.append(round(loss.item(), 5))
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if done % setup.save_every == 0 or done == config["steps"] or (stop_after is not None and done >= stop_after):
            staging = state.path.with_suffix(".tmp")
            torch.save({"step": done, "head": state.head.state_dict(), "optimiser": state.optimiser.state_dict(), "losses": state.losses}, staging)
            staging.replace(state.path)
        if stop_after is not None and done >= stop_after and done < config["steps"]:
            bar.close()
            _say(setup.quiet, f"SERAC: stopped after step {done} (--stop-after); run again to resume")
            return None
    bar.close()
    return time.time() - started


def _write_checkpoint(setup: _Setup, encoder: _Encoder, run: _Run, data: _Data, state: _State, train_seconds: float) -> None:
    """The held-out threshold, then the checkpoint folder with its metrics."""
    head = state.head
    head.eval()
    threshold, metrics = choose_threshold(head, data.features, data.val, setup.seed)
    metrics.update(
        {
            "final_loss": round(sum(state.losses[-20:]) / max(1, len(state.losses[-20:])), 5),
            "encode_seconds": round(data.encode_seconds, 1),
            "train_seconds": round(train_seconds, 1),
            "train_groups": len(data.train_groups),
            "val_groups": len(data.val_groups),
            "texts_encoded": len(data.texts),
        }
    )
    records_used = len(data.train_groups) + len(data.val_groups)
    for entry in run.data_files:
        entry["records"] = records_used
    info = CheckpointInfo(
        method=METHOD,
        base_model_name=str(setup.pretrained or encoder.model_path),
        base_model_fingerprint=encoder.fingerprint,
        edit_lang=setup.edit_lang,
        train_data=run.data_files,
        config=dict(setup.config, threshold=threshold, encoder_key=encoder.encoder.key, dim=int(data.features.shape[1]), run_key=run.key),
        metrics=metrics,
    )
    tensors = {f"head.{name}": tensor for name, tensor in head.state_dict().items()}
    save_checkpoint(setup.out, info, tensors)
    _say(
        setup.quiet,
        f"SERAC checkpoint written to {setup.out}: threshold {threshold:.3f}, held-out balanced accuracy "
        f"{metrics.get('val_balanced_accuracy')} (encoding {data.encode_seconds:.0f} s, training {train_seconds:.0f} s)",
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)
