from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_model

SHARED = Path(os.environ.get("BIZSRE_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
SHARED_TEST_FILE = SHARED / "data" / "bizsre" / "bizsre_test_en_zh.json"


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gemma"), "gemma3_text")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="session")
def shared_test_file() -> Path:
    if not SHARED_TEST_FILE.exists():
        pytest.skip(f"shared data not found at {SHARED_TEST_FILE} (set BIZSRE_SHARED_DIR); CI provides it")
    return SHARED_TEST_FILE


@pytest.fixture
def prefix_runs(monkeypatch) -> list:
    """The prefixes run as a key/value cache (`prefix_cache._cache` calls) during the test."""
    from bizsre_tasks.wrapper import prefix_cache

    runs: list = []
    real_cache = prefix_cache._cache
    monkeypatch.setattr(prefix_cache, "_cache", lambda *args: runs.append(args) or real_cache(*args))
    return runs
