"""The checkpoint folder shared by trained editors (SERAC, MEND).

    DIR/
      bizsre_checkpoint.json   what was trained, on what, for which model and language (written last)
      weights.safetensors      the trained tensors
      _training/               resumable state while training runs (kept for inspection afterwards)

`bizsre_checkpoint.json`:
    {"format_version": 1, "method": "serac",
     "base_model": {"name": "...", "fingerprint": "<16 hex>"},
     "edit_lang": "en",
     "train_data": [{"path": "...", "fingerprint": "<16 hex>", "records": 1000, "role": "train"}, ...],
     "config": {... method-specific ...}, "metrics": {...},
     "weights": {"file": "weights.safetensors", "sha256": "...", "bytes": N},
     "created": "2025-...Z"}

The manifest is written after the weights and renamed into place, so a folder with a manifest is a
complete checkpoint. Loading checks method, base-model fingerprint and edit language and raises a
`ConfigurationError` naming what differs; a model's fingerprint is `encoders.model_fingerprint`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bizsre_tasks import fingerprints
from bizsre_tasks.editing.tensors.encoders import model_fingerprint
from bizsre_tasks.errors import ConfigurationError

MANIFEST = "bizsre_checkpoint.json"
WEIGHTS = "weights.safetensors"
STATE_DIR = "_training"
FORMAT_VERSION = 1

__all__ = ["CheckpointInfo", "save_checkpoint", "load_checkpoint", "read_manifest", "model_fingerprint", "data_fingerprint", "MANIFEST", "WEIGHTS", "STATE_DIR"]


@dataclass
class CheckpointInfo:
    method: str
    base_model_name: str
    base_model_fingerprint: str
    edit_lang: str
    train_data: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "base_model": {"name": self.base_model_name, "fingerprint": self.base_model_fingerprint},
            "edit_lang": self.edit_lang,
            "train_data": self.train_data,
            "config": self.config,
            "metrics": self.metrics,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointInfo:
        return cls(
            method=data["method"],
            base_model_name=data["base_model"]["name"],
            base_model_fingerprint=data["base_model"]["fingerprint"],
            edit_lang=data["edit_lang"],
            train_data=list(data.get("train_data", [])),
            config=dict(data.get("config", {})),
            metrics=dict(data.get("metrics", {})),
        )


def data_fingerprint(path: str | os.PathLike) -> str:
    """sha256 (16 hex digits) of a data file's bytes, as `data_loading.file_fingerprint`."""
    return fingerprints.file_fingerprint(path)


def save_checkpoint(folder: str | os.PathLike, info: CheckpointInfo, tensors: dict[str, torch.Tensor]) -> Path:
    """Write weights, then the manifest (atomically); returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the new manifest lands
    staging = folder / f".{WEIGHTS}.tmp"
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}, str(staging))
    staging.replace(folder / WEIGHTS)
    manifest = info.to_json()
    manifest["weights"] = {"file": WEIGHTS, "sha256": fingerprints.file_fingerprint(folder / WEIGHTS, digits=None), "bytes": (folder / WEIGHTS).stat().st_size}
    manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    staging = folder / f".{MANIFEST}.tmp"
    staging.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    staging.replace(folder / MANIFEST)
    return folder


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(folder).expanduser() / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_checkpoint(
    folder: str | os.PathLike | None,
    method: str,
    model: torch.nn.Module | None = None,
    edit_lang: str | None = None,
    fingerprint: str | None = None,
) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """Read and check a checkpoint for `method`; mismatches raise ConfigurationError."""
    from safetensors.torch import load_file

    hint = f"train one with: bizsre train {method} --edit-lang {edit_lang or 'en'} --out DIR, then pass checkpoint=DIR"
    if not folder:
        raise ConfigurationError(f"method '{method}' needs a trained checkpoint (model_args checkpoint=DIR or hparams 'checkpoint'); {hint}")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigurationError(f"{method} checkpoint {folder} does not exist; {hint}")
    manifest = read_manifest(folder)
    if manifest is None:
        raise ConfigurationError(
            f"{folder} is not a finished bizsre checkpoint (no readable {MANIFEST}; an interrupted training resumes "
            f"when you run the same train command again); {hint}"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ConfigurationError(f"{folder}: checkpoint format {manifest.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
    try:
        info = CheckpointInfo.from_json(manifest)
    except (KeyError, TypeError) as exc:
        raise ConfigurationError(f"{folder}/{MANIFEST}: missing field {exc}") from None
    if info.method != method:
        raise ConfigurationError(f"{folder} is a '{info.method}' checkpoint, not a '{method}' one")
    if edit_lang is not None and info.edit_lang != edit_lang:
        raise ConfigurationError(
            f"{folder} was trained for edit language '{info.edit_lang}', but this run edits in '{edit_lang}'; "
            f"train a checkpoint with --edit-lang {edit_lang} or run with edit_lang={info.edit_lang}"
        )
    if model is not None or fingerprint is not None:
        current = fingerprint or model_fingerprint(model)
        if current != info.base_model_fingerprint:
            name = getattr(model, "name_or_path", "") if model is not None else ""
            raise ConfigurationError(
                f"{folder} was trained for base model '{info.base_model_name}' (fingerprint {info.base_model_fingerprint}), "
                f"but the model in use{f' ({name})' if name else ''} has fingerprint {current}; "
                f"train a checkpoint for this model (bizsre train {method} --pretrained ...)"
            )
    weights = folder / manifest.get("weights", {}).get("file", WEIGHTS)
    if not weights.is_file():
        raise ConfigurationError(f"{folder}: weights file {weights.name} is missing")
    expected = manifest.get("weights", {}).get("bytes")
    if expected is not None and weights.stat().st_size != expected:
        raise ConfigurationError(f"{folder}: weights file {weights.name} has {weights.stat().st_size} bytes, the manifest says {expected} (truncated copy?)")
    return info, load_file(str(weights))
