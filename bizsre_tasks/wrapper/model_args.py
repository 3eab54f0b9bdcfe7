"""Checks `--model_args` names for edited-hf before the model is loaded.

A name is accepted when edited-hf, the harness's HFLM, or Hugging Face's `from_pretrained` takes it
(a keyword of its own, or an attribute of the model's config, which `from_pretrained` overrides).
Anything else would reach the model class's constructor after the weights are loaded and fail
there, so it is refused here, naming the closest known argument.
"""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any, Callable, Iterable

from bizsre_tasks.errors import ConfigurationError

# Keywords that `PreTrainedModel.from_pretrained` (transformers 4.45-5.x) takes from **kwargs or that
# its config accepts by name, besides its signature; read from its source too where available.
FROM_PRETRAINED_KWARGS = (
    "attn_implementation", "experts_implementation", "output_attentions", "num_labels", "torch_dtype", "dtype",
    "device_map", "max_memory", "offload_folder", "offload_buffers", "offload_state_dict", "quantization_config",
    "variant", "low_cpu_mem_usage", "use_safetensors", "revision", "subfolder", "trust_remote_code",
    "local_files_only", "token", "cache_dir", "force_download", "proxies", "key_mapping", "use_kernels",
    "tp_plan", "tp_size", "gguf_file", "adapter_name", "adapter_kwargs", "generation_config", "output_loading_info",
    "state_dict", "weights_only", "ignore_mismatched_sizes", "disable_mmap", "code_revision",
)


def positive_int(name: str, value: Any) -> int:
    """A model_arg that must be a positive integer written as one ("8", not "8.0" or "x")."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(value).strip() != str(number):
        raise ConfigurationError(f"model_arg {name} must be a positive integer, got {value!r}")
    return number


def _signature_names(function: Callable) -> set[str]:
    return {
        name for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL) and name != "self"
    }


def hf_keywords() -> set[str]:
    from transformers import PreTrainedModel

    names = set(FROM_PRETRAINED_KWARGS) | _signature_names(PreTrainedModel.from_pretrained)
    try:
        names |= set(re.findall(r"kwargs\.pop\(\s*[\"'](\w+)[\"']", inspect.getsource(PreTrainedModel.from_pretrained)))
    except (OSError, TypeError):  # no source available: the list above still holds
        pass
    return names


def check_model_args(
    given: Iterable[str],
    own: Iterable[str],
    harness: Iterable[str],
    load_config: Callable[[], Any],
    passthrough_prefixes: tuple[str, ...] = (),
) -> None:
    """Raise a ConfigurationError for the first name in `given` that nobody accepts.

    `own`: edited-hf's arguments; `harness`: HFLM's; `load_config`: returns the model's config
    (called only if some name is still unknown, since it reads the config file)."""
    own, harness = set(own), set(harness)
    unknown = [name for name in given if name not in own | harness and not name.startswith(passthrough_prefixes)]
    if not unknown:
        return
    hf = hf_keywords()
    unknown = [name for name in unknown if name not in hf]
    if not unknown:
        return
    config = load_config()
    unknown = [name for name in unknown if not hasattr(config, name)]
    if not unknown:
        return
    name = unknown[0]
    known = sorted(own | harness | hf)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"edited-hf's own are: {', '.join(sorted(own))}"
    raise ConfigurationError(
        f"unknown model_arg '{name}' ({hint}); edited-hf, the harness's HF model and Hugging Face's from_pretrained "
        f"do not take it"
    )
