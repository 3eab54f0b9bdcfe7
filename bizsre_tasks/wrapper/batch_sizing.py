"""`--batch_size auto` for edited-hf: a batch size from the free memory, estimated, not probed.

The harness probes by running batches at the model's full context with full-vocabulary logits and
halving on an out-of-memory exception. On CPU there is no such exception (the kernel kills the
process), and Gemma 3's 32k context with a 262k vocabulary needs ~34 GB per row. Bi-ZsRE prompts are
short, so the estimate is made for sequences of AUTO_BATCH_TOKENS tokens (IKE's demonstrations
included, its prompts stay under ~600), per row:
- the key/value cache of every layer,
- one layer's working set (hidden states, MLP activations, attention scores),
- the logits of the positions the wrapper scores (generation keeps the last one; teacher forcing
  the gold answer's, at most `max_gen_toks`),
doubled for the allocator and temporaries. The batch takes at most MEMORY_SHARE of the free memory
(split between the processes of this machine) and at most `max_batch_size`.
"""

from __future__ import annotations

import logging
import os

import torch

from bizsre_tasks.errors import ConfigurationError

logger = logging.getLogger(__name__)
AUTO_BATCH_TOKENS = 2048
SCORED_POSITIONS = 32
MEMORY_SHARE = 0.5
SAFETY_FACTOR = 2.0


def _text_config(config):
    return getattr(config, "text_config", None) or config


def bytes_per_row(config, tokens: int, dtype_bytes: int) -> int:
    config = _text_config(config)
    hidden = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))
    layers = int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer"))
    heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_head"))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    intermediate = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden)
    vocab = int(config.vocab_size)
    kv_cache = 2 * layers * tokens * kv_heads * head_dim
    layer_work = tokens * (6 * hidden + 3 * intermediate) + heads * tokens * tokens
    logits = SCORED_POSITIONS * vocab * 2  # float32 logits and their log-softmax
    return int(SAFETY_FACTOR * dtype_bytes * (kv_cache + layer_work + logits))


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def auto_batch_size(model, device: torch.device, max_length: int, max_batch_size: int, world_size: int = 1) -> int:
    tokens = min(int(max_length), AUTO_BATCH_TOKENS)
    row = bytes_per_row(model.config, tokens, max(4, model.dtype.itemsize))  # activations at least float32 on CPU
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", world_size if device.type == "cpu" else 1))
    budget = MEMORY_SHARE * free_memory(device) / max(1, local_processes)
    size = min(int(budget // row), int(max_batch_size or 64))
    if size < 1:
        raise ConfigurationError(
            f"--batch_size auto: one sequence of {tokens} tokens needs about {row / 2**30:.1f} GiB and only "
            f"{budget / 2**30:.1f} GiB of free memory is available to this process; give --batch_size 1 if you want to try"
        )
    logger.info(
        "--batch_size auto: %d (about %.0f MiB per sequence of %d tokens, %.1f GiB of free memory for this process)",
        size, row / 2**20, tokens, budget / 2**30,
    )
    return size
