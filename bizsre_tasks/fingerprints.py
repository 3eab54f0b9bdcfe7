"""Fingerprints of files and bytes: the sha256 of the content, cut to 16 hex digits where a short key
is enough (data files in caches, checkpoints and provenance) or whole (downloaded model files)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SHORT = 16


def bytes_fingerprint(data: bytes, digits: int | None = SHORT) -> str:
    return hashlib.sha256(data).hexdigest()[:digits]


def file_fingerprint(path: str | os.PathLike, digits: int | None = SHORT) -> str:
    """sha256 of a file's bytes (read in blocks), its first `digits` hex digits (None: all)."""
    digest = hashlib.sha256()
    with Path(path).expanduser().open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:digits]
