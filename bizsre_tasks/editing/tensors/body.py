"""Running the model's body up to one module and no further.

Statistics, sentence features and MEMIT's targets need the hidden state at one layer only: a hook on
that module hands its output (or input) over and raises `StopForward`, so nothing above it, nor the
LM head, is computed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class StopForward(Exception):
    """Raised by the hook of `forward_until`: the rest of the forward pass is skipped."""


def forward_until(forward: Callable[[], Any], module: torch.nn.Module, *, capture: Callable[[Any], Any] | None = None,
                  pre: bool = False, stop: bool = True) -> Any:
    """Run `forward()` up to `module`: its output (its first positional input if `pre`) is passed to
    `capture`, whose result is returned; with `stop` the pass ends there (without, the whole model runs,
    as in the benchmark's textbook path)."""
    captured: dict[str, Any] = {}

    def take(value):
        if capture is not None:
            captured["value"] = capture(value)
        if stop:
            raise StopForward

    if pre:
        handle = module.register_forward_pre_hook(lambda _module, args: take(args[0]))
    else:
        handle = module.register_forward_hook(lambda _module, _args, output: take(output))
    try:
        forward()
    except StopForward:
        pass
    finally:
        handle.remove()
    return captured.get("value")
