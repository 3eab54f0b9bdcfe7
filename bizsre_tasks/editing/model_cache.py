"""Handing a key/value cache to a Hugging Face model and reading it back, across transformers versions.

transformers 5.25 renamed the forward argument and output field `past_key_values` to `cache`; the old
argument still works there with a FutureWarning and goes in 5.40, and versions before the rename know
only `past_key_values`. Every cached forward in the project goes through these two functions.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_argument(model, cache) -> dict[str, Any]:
    """Keyword arguments that give `cache` to `model`'s forward under the name it takes."""
    return {_cache_argument(type(model)): cache}


def returned_cache(outputs):
    """The key/value cache a forward returned (None if it returned none)."""
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else getattr(outputs, "past_key_values", None)


def given_cache(kwargs: dict):
    """The cache passed in a forward call's keyword arguments (a hook's view), under either name."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")
