"""`edit_mode`: how the edits of a run are in force when the questions are answered.

- `single` (default): each case is edited alone, answered, and the model restored before the next.
- `sequential`: the edits accumulate in case order with no restore between them; every post-edit
  question is answered after the last edit, and each case's reliability question also right after its
  own edit (`f1_immediate` / `em_immediate`), so forgetting shows as the gap to `f1`. The model is
  restored once, at the end (handles in reverse order).
- `batch`: `edits_per_batch` cases are installed together (`EditingMethod.apply_many`), answered, and
  the model restored before the next batch.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.wrapper.model_args import positive_int

EDIT_MODES = ("single", "sequential", "batch")
CASE_ORDERS = ("forward", "reverse")
DEFAULT_EDITS_PER_BATCH = 16


def check_edit_mode(edit_mode: Any, edits_per_batch: Any) -> tuple[str, int]:
    mode = str(edit_mode).strip().lower()
    if mode not in EDIT_MODES:
        raise ConfigurationError(f"model_arg edit_mode must be one of {', '.join(EDIT_MODES)}, got {edit_mode!r}")
    return mode, positive_int("edits_per_batch", edits_per_batch)


def check_case_order(case_order: Any, mode: str) -> str:
    """`forward` (default) or `reverse`: the order a run takes its chunks in. A second process with
    case_order=reverse and the same answer_store works through the run from its other end."""
    order = str(case_order).strip().lower()
    if order not in CASE_ORDERS:
        raise ConfigurationError(f"model_arg case_order must be one of {', '.join(CASE_ORDERS)}, got {case_order!r}")
    if order == "reverse" and mode == "sequential":
        raise ConfigurationError("case_order=reverse cannot be used with edit_mode=sequential: the sequence of edits is "
                                 "the order of the cases, and its answers are written only once the whole sequence is done")
    return order


def check_world_size(mode: str, world_size: int) -> None:
    """Sequential edits form one chain over all cases; split between processes, each would hold only its own."""
    if mode == "sequential" and world_size > 1:
        raise ConfigurationError(
            f"edit_mode=sequential cannot run data parallel (world size {world_size}): every edit must stay in force "
            "for the cases after it, in one process. Run it in one process, or use edit_mode=single or batch."
        )


def identity_parts(mode: str, edits_per_batch: int, case_keys: list[str]) -> dict[str, Any]:
    """What the answer store's run identity adds for a mode: nothing for `single` (older stores stay
    valid); the mode and the ordered case list otherwise, since an answer depends on the other edits."""
    if mode == "single":
        return {}
    sequence = hashlib.sha256(json.dumps(case_keys).encode("utf-8")).hexdigest()[:16]
    parts: dict[str, Any] = {"edit_mode": mode, "cases": sequence}
    if mode == "batch":
        parts["edits_per_batch"] = edits_per_batch
    return parts
