"""Second moments C = E[k kᵀ] of the keys entering an MLP output projection, for ROME and MEMIT.

ROME and MEMIT protect what a layer already stores by weighting their updates with C⁻¹, where the
keys k are the inputs of the MLP output projection (`mlp_out`) over a text corpus. Computing C means
running the model over the whole corpus, so it is done once and cached on disk:

    <cache_root>/stats/<model slug>/layer<L>-<corpus fingerprint>.pt

Each file also records the model fingerprint (a hash of the weights from the embedding up to layer
L, the weights the keys depend on), the corpus fingerprint, the key width and the statistics
version. A file that cannot be read, has the wrong shape, non-finite values or a fingerprint that
does not match is recomputed. All missing layers are collected in one pass over the corpus: one
forward per batch feeds every layer's hook, the forward stops after the last needed layer and the
LM head is never run.

Corpus: a list of files. `.tsv` files hold question<TAB>answer lines, `.json` files use the flat
training schema or the test schema (see `data_loading`); question/answer pairs are rendered with
the evaluation prompt template of their language, so the keys look like the ones met at test time.
Any other file is plain text, one sample per line. Without a corpus the bundled demo sample is
used, with a warning: 20 cases make a nearly singular C (on the default model ROME still scored within
1 F1 point of the 10,000-record training file; docs/paper-hparams.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from bizsre_tasks import languages
from bizsre_tasks.editing.tensors.body import forward_until
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.tasks import data_loading, prompts

logger = logging.getLogger(__name__)

# Bump when the recipe changes (corpus rendering, accumulation), so older caches are recomputed.
STATS_VERSION = 1
# Relative ridge added before inverting C: rare key directions would otherwise blow C⁻¹ up.
RIDGE = 1e-4


# --- corpus ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Corpus:
    texts: tuple[str, ...]
    fingerprint: str
    description: str


def _guess_lang(text: str) -> str:
    """Prompt language for a question: by script, since TSV lines carry no language tag."""
    return languages.guess_from_script(text)


def render_qa(question: str, answer: str) -> str:
    lang = _guess_lang(question)
    template = prompts.prompt_template(lang)
    return template.format(question=prompts.clean_question(question)) + prompts.answer_separator(template) + answer


def _texts_from_json(path: Path) -> list[str]:
    try:
        records = data_loading.load_train_records(path)
    except data_loading.DataFormatError as train_error:
        try:
            test_set = data_loading.load_test_set(path)
        except data_loading.DataFormatError as test_error:
            raise ConfigurationError(
                f"statistics corpus {path}: neither the flat training schema ({train_error}) nor the test schema ({test_error})"
            ) from None
        texts = []
        for case in test_set.cases:
            for part in case.parts.values():
                texts += [render_qa(part.src, part.alt), render_qa(part.loc, part.loc_ans)]
        return texts
    texts = []
    for record in records:
        texts.append(render_qa(record.src, record.alt))
        if record.loc and record.loc_ans:
            texts.append(render_qa(record.loc, record.loc_ans))
    return texts


def _texts_from_file(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigurationError(f"statistics corpus file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _texts_from_json(path)
    if suffix == ".tsv":
        return [render_qa(record.src, record.alt) for record in data_loading.load_train_records(path)]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"statistics corpus {path}: not UTF-8 text ({exc})") from None
    return [line.strip() for line in lines if line.strip()]


def load_corpus(paths: list[str | os.PathLike] | None, max_samples: int = 0) -> Corpus:
    """Texts of the corpus files (the bundled sample when `paths` is empty), thinned to `max_samples`."""
    if paths:
        files = [Path(p).expanduser() for p in paths]
    else:
        logger.warning(
            "no corpus for the key statistics (set hparams stats_corpus, train_file or $%s); using the bundled "
            "20-case sample (on the default model within 1 F1 point of the 10,000-record training file for ROME on "
            "50 cases, docs/paper-hparams.md; unmeasured for other models). hparams stats_fallback: generated uses "
            "texts the model generates itself instead",
            data_loading.TRAIN_FILE_ENV,
        )
        files = [data_loading.SAMPLE_TEST_FILE]
    digest = hashlib.sha256(f"v{STATS_VERSION}|max{max_samples}".encode())
    texts: list[str] = []
    for path in files:
        file_texts = _texts_from_file(path)
        digest.update(hashlib.sha256("\n".join(file_texts).encode()).digest())
        texts += file_texts
    if not texts:
        raise ConfigurationError(f"statistics corpus {', '.join(map(str, files))} holds no text")
    if max_samples and len(texts) > max_samples:
        # An even stride keeps every file and language represented.
        stride = len(texts) / max_samples
        texts = [texts[int(i * stride)] for i in range(max_samples)]
    return Corpus(tuple(texts), digest.hexdigest()[:16], ", ".join(str(p) for p in files))


def generated_corpus(model, tokenizer, layout, lang: str, *, count: int, length: int, seed: int = 0,
                     cache_dir=None, progress: bool = True) -> Corpus:
    """Texts the model generates itself in `lang` (see `generated_corpus`), generated once and cached."""
    from bizsre_tasks.editing.kv import generated_corpus as generation

    # The weights decide the texts, not where they are stored: the key of a shipped corpus holds on every machine.
    model_key = model_fingerprint(layout, layout.num_layers - 1)
    texts, fingerprint = generation.generated_texts(
        model, tokenizer, lang, model_key, stats_dir(cache_dir) / "generated", count=count, length=length, seed=seed, progress=progress
    )
    digest = hashlib.sha256(f"v{STATS_VERSION}|generated|{fingerprint}".encode()).hexdigest()[:16]
    return Corpus(tuple(texts), digest, f"{count} texts of {length} tokens generated by the model in '{lang}'")


def corpus_paths(hparam_paths: list | None, train_file: str | None) -> list[str]:
    """hparams `stats_corpus`, else the run's train file (model_args train_file or $BIZSRE_TRAIN_FILE; several
    files may be joined with the OS path separator), else nothing (the sample fallback)."""
    if hparam_paths:
        return [str(p) for p in hparam_paths]
    resolved = data_loading.resolve_train_file(train_file)
    if resolved is None:
        return []
    return [part for part in str(resolved).split(os.pathsep) if part]


# --- fingerprints and cache files -----------------------------------------------------------------
def model_fingerprint(layout, layer: int) -> str:
    """Hash of what layer `layer`'s keys depend on: layers 0..layer and (a sample of) the embedding."""
    digest = hashlib.sha256(f"{layout.model_type}|{layer}".encode())

    def feed(tensor: torch.Tensor) -> None:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())

    embed = layout.module("embed").weight
    feed(embed[:: max(1, embed.shape[0] // 512)])  # every ~512th row: the full table is 170M values
    layers = layout.module("layers")
    for index in range(layer + 1):
        for _, parameter in sorted(layers[index].named_parameters()):
            feed(parameter)
    return digest.hexdigest()[:24]


def _slug(model_name: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_name.rstrip("/\\")).name or "model").strip("-") or "model"
    return f"{base[:48]}-{hashlib.sha256(model_name.encode()).hexdigest()[:8]}"


def stats_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    from bizsre_tasks.default_model import cache_root

    return (Path(cache_dir) if cache_dir else cache_root()) / "stats"


def cache_path(model_name: str, layer: int, corpus: Corpus, cache_dir=None) -> Path:
    return stats_dir(cache_dir) / _slug(model_name) / f"layer{layer}-{corpus.fingerprint}.pt"


def _load_cached(path: Path, expected: dict) -> torch.Tensor | None:
    """The cached matrix, or None (with the reason logged) when it is absent, unreadable or stale."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        meta, mom2 = payload["meta"], payload["mom2"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is simply recomputed
        logger.warning("key statistics %s are unreadable (%s); recomputing", path, exc)
        return None
    dim = expected["dim"]
    problems = [f"{key} {meta.get(key)!r} != {value!r}" for key, value in expected.items() if meta.get(key) != value]
    if not isinstance(mom2, torch.Tensor) or tuple(mom2.shape) != (dim, dim):
        problems.append(f"shape {tuple(getattr(mom2, 'shape', ()))} != {(dim, dim)}")
    elif not torch.isfinite(mom2).all():
        problems.append("non-finite values")
    if problems:
        logger.warning("key statistics %s are stale or corrupt (%s); recomputing", path, "; ".join(problems))
        return None
    return mom2


def _save(path: Path, mom2: torch.Tensor, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"mom2": mom2, "meta": meta}, staging)
    os.replace(staging, path)  # atomic: a crash never leaves a half-written cache behind


# --- collection -----------------------------------------------------------------------------------
def key_width(layout, layer: int) -> int:
    return layout.weight_out_in("mlp_out", layer).shape[1]


@torch.no_grad()
def collect_second_moments(model, tokenizer, layout, layers: list[int], corpus: Corpus, *, batch_tokens: int = 4096,
                           max_length: int = 64, progress: bool = True) -> dict[int, tuple[torch.Tensor, int]]:
    """Σ k kᵀ / n (float64) and n for each layer, from one pass over the corpus."""
    from tqdm.auto import tqdm

    layers = sorted(set(layers))
    device = next(model.parameters()).device
    sums = {layer: torch.zeros(key_width(layout, layer), key_width(layout, layer), dtype=torch.float64) for layer in layers}
    counts = dict.fromkeys(layers, 0)
    state: dict[str, torch.Tensor] = {}

    def hook_for(layer: int):
        def hook(module, args):
            keys = args[0][state["mask"]].float()
            sums[layer] += (keys.T @ keys).double().cpu()
            counts[layer] += keys.shape[0]
        return hook

    encoded = [tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"] for text in corpus.texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths: little padding
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    handles = [layout.module("mlp_out", layer).register_forward_pre_hook(hook_for(layer)) for layer in layers]
    bar = tqdm(total=len(order), desc=f"key statistics (layers {','.join(map(str, layers))})", unit="text", disable=not progress)
    try:
        start = 0
        while start < len(order):
            width = len(encoded[order[start]])
            end = start
            while end < len(order) and (end - start + 1) * max(width, len(encoded[order[end]])) <= batch_tokens:
                width = max(width, len(encoded[order[end]]))
                end += 1
            end = max(end, start + 1)
            rows = [encoded[i] for i in order[start:end]]
            width = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for b, row in enumerate(rows):
                input_ids[b, : len(row)] = torch.tensor(row)
                mask[b, : len(row)] = 1
            state["mask"] = mask.bool().to(device)
            # nothing above the last needed layer (nor the LM head) is computed
            forward_until(lambda: model.base_model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False),
                          layout.module("mlp_out", layers[-1]), pre=True)
            bar.update(len(rows))
            start = end
    finally:
        bar.close()
        for handle in handles:
            handle.remove()
    return {layer: (sums[layer] / max(counts[layer], 1), counts[layer]) for layer in layers}


def second_moments(model, tokenizer, layout, layers: list[int], corpus: Corpus, model_name: str, *,
                   cache_dir=None, max_length: int = 64, progress: bool = True) -> dict[int, torch.Tensor]:
    """C for each layer (float64, on the CPU): from the cache where valid, else computed in one pass and cached."""
    result: dict[int, torch.Tensor] = {}
    expected: dict[int, dict] = {}
    for layer in sorted(set(layers)):
        expected[layer] = {
            "version": STATS_VERSION,
            "model_fingerprint": model_fingerprint(layout, layer),
            "corpus_fingerprint": corpus.fingerprint,
            "layer": layer,
            "dim": key_width(layout, layer),
            "max_length": max_length,
        }
        cached = _load_cached(cache_path(model_name, layer, corpus, cache_dir), expected[layer])
        if cached is not None:
            result[layer] = cached.double()
    missing = [layer for layer in expected if layer not in result]
    if missing:
        logger.info("computing key statistics for layers %s over %d texts (%s)", missing, len(corpus.texts), corpus.description)
        collected = collect_second_moments(model, tokenizer, layout, missing, corpus, max_length=max_length, progress=progress)
        for layer, (mom2, count) in collected.items():
            if not torch.isfinite(mom2).all():
                raise ConfigurationError(f"key statistics for layer {layer} are not finite; check the model and corpus")
            _save(cache_path(model_name, layer, corpus, cache_dir), mom2, {**expected[layer], "count": count, "corpus": corpus.description})
            result[layer] = mom2
    return result


def regularised(mom2: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """C + ridge·mean(diag C)·I: invertible even for key directions the corpus never excites."""
    scale = mom2.diagonal().mean().clamp(min=1e-12)
    return mom2 + ridge * scale * torch.eye(mom2.shape[0], dtype=mom2.dtype)
