"""What accumulating edits cost (issue 15), measured through the wrapper on one loaded model.

- sequential: the whole `edit_mode=sequential` pass over N cases (unedited answers, N applies without
  restore, each case's immediate reliability answer, every post-edit answer, the restores), against the sum
  of the same N edits applied one at a time on the unedited model (apply only) plus one answering pass (the
  unedited model answering the same requests, `method=none`). Target: ratio ≤ 1.1.
- batch: one `apply_many` of N edits (MEMIT/AlphaEdit solve for all keys in one update) against the sum of
  the N single applies. Target: batch < sum.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from bizsre_tasks.editing.registry import build_method
from bizsre_tasks.wrapper.case_planning import plan_cases

SEQUENTIAL_TARGET = 1.1


@dataclass
class SequentialCost:
    method: str
    cases: int
    sequential_s: float
    single_applies_s: float
    answering_pass_s: float
    ratio: float

    @property
    def met(self) -> bool:
        return self.ratio <= SEQUENTIAL_TARGET


@dataclass
class BatchCost:
    method: str
    cases: int
    batch_apply_s: float
    single_applies_s: float
    ratio: float

    @property
    def met(self) -> bool:
        return self.batch_apply_s < self.single_applies_s


def _use(lm, method: str, hparams: dict[str, Any]) -> None:
    lm.editor = build_method(method, lm.editor.context, hparams, source=f"{method} (edit-mode benchmark)")
    lm.method_name = method
    lm.editor.ensure_prepared()  # one-time work (statistics) is not what is compared


def _timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def single_applies_seconds(lm, requests: list) -> float:
    """Each case's edit applied alone on the unedited model, restored between (restores not counted)."""
    total = 0.0
    for case in plan_cases(requests):
        torch.manual_seed(lm.seed + case.case_number)
        start = time.perf_counter()
        handle = lm.editor.apply(case.edit)
        total += time.perf_counter() - start
        handle.restore()
    return total


def answering_pass_seconds(lm, requests: list) -> float:
    _use(lm, "none", {})
    lm.edit_mode = "single"
    return _timed(lambda: lm.generate_until(requests, disable_tqdm=True))


def sequential_cost(lm, method: str, hparams: dict[str, Any], requests: list) -> SequentialCost:
    answering = answering_pass_seconds(lm, requests)
    _use(lm, method, hparams)
    singles = single_applies_seconds(lm, requests)
    lm.edit_mode = "sequential"
    try:
        sequential = _timed(lambda: lm.generate_until(requests, disable_tqdm=True))
    finally:
        lm.edit_mode = "single"
    cases = len(plan_cases(requests))
    return SequentialCost(method, cases, sequential, singles, answering, sequential / (singles + answering))


def batch_cost(lm, method: str, hparams: dict[str, Any], requests: list) -> BatchCost:
    _use(lm, method, hparams)
    cases = plan_cases(requests)
    singles = single_applies_seconds(lm, requests)
    torch.manual_seed(lm.seed + cases[0].case_number)
    start = time.perf_counter()
    handle = lm.editor.apply_many([case.edit for case in cases])
    batch = time.perf_counter() - start
    handle.restore()
    return BatchCost(method, len(cases), batch, singles, batch / singles)


def as_dict(cost) -> dict[str, Any]:
    return {**asdict(cost), "met": cost.met}


def markdown(result: dict[str, Any]) -> str:
    lines = ["## Edit modes: cost of accumulating edits", "",
             f"Written by `python scripts/edit_mode_cost.py` (each row's command in {result.get('json', 'its JSON file')}); "
             f"machine: {result['machine']}; model: {result['model']}; "
             f"test file: {result['test_file']}; protocol {result['protocol']}; tasks: all seven.", "",
             "*sequential* = the whole `edit_mode=sequential` pass over N cases (unedited answers, N edits without restore, "
             "immediate reliability answers, all post-edit answers, restores); *single applies* = the same N edits applied "
             "alone on the unedited model (apply only); *answering pass* = the unedited model answering the same requests "
             f"once. Target: sequential ≤ {SEQUENTIAL_TARGET} × (single applies + answering pass).", "",
             "| method | N | sequential s | single applies s | answering pass s | ratio | met |", "|---|---:|---:|---:|---:|---:|---|"]
    for row in result["sequential"]:
        lines.append(f"| {row['method']} | {row['cases']} | {row['sequential_s']:.1f} | {row['single_applies_s']:.1f} | "
                     f"{row['answering_pass_s']:.1f} | {row['ratio']:.3f} | {'yes' if row['met'] else 'no'} |")
    lines += ["", "*batch apply* = one `apply_many` of the N edits together (edit_mode=batch with edits_per_batch=N); "
              "target: less than the N single applies.", "",
              "| method | N | batch apply s | single applies s | batch / single | met |", "|---|---:|---:|---:|---:|---|"]
    for row in result["batch"]:
        lines.append(f"| {row['method']} | {row['cases']} | {row['batch_apply_s']:.1f} | {row['single_applies_s']:.1f} | "
                     f"{row['ratio']:.3f} | {'yes' if row['met'] else 'no'} |")
    notes = dict.fromkeys(row["note"] for row in result["sequential"] + result["batch"] if row.get("note"))
    lines += [""] + [f"Note: {note}" for note in notes] if notes else []
    return "\n".join(lines) + "\n"
