"""Measures every method in one process on the same loaded model.

Figures per method: seconds per edit (apply only), per case (pre-edit answers + apply + all answers +
restore), restore seconds, peak RSS, edits performed; each also as a multiple of one no-grad forward
pass over a reference batch measured in the same run, so figures compare across machines. Warm-up
(the first case) and one-time work (model load, statistics, demonstration pools) are reported apart.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from bizsre_tasks.benchmark.memory import PeakRss, release_freed_memory
from bizsre_tasks.benchmark.requests import split_by_case
from bizsre_tasks.editing import common
from bizsre_tasks.editing.registry import build_method


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@dataclass
class MethodFigures:
    method: str
    cases: int
    edits: int
    prepare_s: float
    apply_s: dict[str, float]
    case_s: dict[str, float]
    restore_s: dict[str, float]
    peak_rss_gb: float
    apply_forward_equivalents: float
    case_forward_equivalents: float
    modifies_weights: bool = False
    mean_case_s: float = float("nan")  # what a full run's duration scales with
    full_run_minutes: float | None = None  # mean case seconds × the test file's cases
    naive_case_s: dict[str, float] | None = None
    naive_edits: int | None = None
    optimised_over_naive: float | None = None
    reliability_only_case_s: float | None = None
    group_over_reliability: float | None = None
    batch1_case_s: float | None = None
    batch8_case_s: float | None = None
    batch8_over_batch1: float | None = None
    notes: list[str] = field(default_factory=list)


REFERENCE_BATCH = 8  # prompts in the reference forward, whatever the number of cases measured


def reference_prompts(requests_by_task: dict[str, list]) -> list[str]:
    """The first REFERENCE_BATCH distinct prompts, taking the tasks' requests in turn (one of each task first)."""
    in_turn = (r for requests in zip(*requests_by_task.values()) for r in requests)
    the_rest = (r for requests in requests_by_task.values() for r in requests)
    distinct = dict.fromkeys(r.args[0] for r in itertools.chain(in_turn, the_rest))
    return list(distinct)[:REFERENCE_BATCH]


def reference_forward_seconds(lm, prompts: list[str], repeats: int = 3) -> float:
    """Median seconds of one no-grad forward pass (all positions, full logits) over `prompts`."""
    encoded = lm.tokenizer(prompts, return_tensors="pt", padding=True).to(lm.device)
    timings = []
    with torch.no_grad():
        lm.model(**encoded)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            lm.model(**encoded)
            timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def _use_method(lm, method: str, hparams: dict[str, Any]) -> None:
    lm.editor = build_method(method, lm.editor.context, hparams, source=f"{method} (benchmark)")
    lm.method_name = method


def _run(lm, requests: list) -> list[dict[str, float]]:
    lm.timings = []
    lm.generate_until(requests, disable_tqdm=True)
    return lm.timings


def _per_case(timings: list[dict[str, float]], key: str) -> list[float]:
    # Weight-free methods are timed per chunk of cases: spread each chunk evenly over its cases.
    return [entry[key] / entry["cases"] for entry in timings]


def measure_method(
    lm,
    method: str,
    hparams: dict[str, Any],
    requests_by_task: dict[str, list],
    forward_s: float,
    naive_cases: int = 0,
    batching_requests: list | None = None,
    total_cases: int | None = None,
    reliability_task: str = "bizsre_reliability",
) -> MethodFigures:
    """`requests_by_task` holds one warm-up case and the measured ones; `naive_cases` > 0 also times that
    many measured cases on the textbook path; `batching_requests` (weight-free methods) are the cases
    the batch-size comparison runs on (all of `requests_by_task` when None)."""
    _use_method(lm, method, hparams)
    start = time.perf_counter()
    lm.editor.ensure_prepared()
    prepare_s = time.perf_counter() - start

    all_requests = [request for requests in requests_by_task.values() for request in requests]
    cases = split_by_case(all_requests)
    warmup, measured = cases[0], [request for case in cases[1:] for request in case]
    _run(lm, warmup)
    lm.edit_count = 0
    release_freed_memory()
    with PeakRss() as memory:
        timings = _run(lm, measured)
    apply_s, case_s, restore_s = (_per_case(timings, key) for key in ("apply_s", "total_s", "restore_s"))
    figures = MethodFigures(
        method=method,
        cases=len(cases) - 1,
        edits=lm.edit_count,
        prepare_s=prepare_s,
        apply_s=spread(apply_s),
        case_s=spread(case_s),
        restore_s=spread(restore_s),
        peak_rss_gb=memory.peak_gb,
        apply_forward_equivalents=statistics.median(apply_s) / forward_s if apply_s else float("nan"),
        case_forward_equivalents=statistics.median(case_s) / forward_s if case_s else float("nan"),
        modifies_weights=lm.editor.modifies_weights,
        mean_case_s=statistics.mean(case_s) if case_s else float("nan"),
    )
    if total_cases and case_s:
        figures.full_run_minutes = figures.mean_case_s * total_cases / 60
    measured_keys = {request.doc["case_key"] for case in cases[1:] for request in case}
    if lm.editor.modifies_weights:
        reliability = [r for r in requests_by_task.get(reliability_task, []) if r.doc["case_key"] in measured_keys]
        if reliability and len(requests_by_task) > 1:
            figures.reliability_only_case_s = statistics.median(_per_case(_run(lm, reliability), "total_s"))
            figures.group_over_reliability = figures.case_s["median"] / figures.reliability_only_case_s
        if naive_cases > 0:
            # The same cases on both paths, so that the ratio compares like with like.
            naive_keys = [request.doc["case_key"] for request in (case[0] for case in cases[1 : 1 + naive_cases])]
            figures.naive_case_s, figures.naive_edits = _measure_naive(lm, requests_by_task, set(naive_keys))
            optimised = [t["total_s"] for t in timings if t["case_keys"][0] in naive_keys]
            figures.optimised_over_naive = statistics.median(optimised) / figures.naive_case_s["median"]
    else:
        batching = batching_requests if batching_requests is not None else measured
        figures.batch1_case_s, figures.batch8_case_s = _measure_batching(lm, batching)
        figures.batch8_over_batch1 = figures.batch8_case_s / figures.batch1_case_s
    return figures


def _measure_naive(lm, requests_by_task: dict[str, list], case_keys: set[str]) -> tuple[dict[str, float], int]:
    """The textbook path: one edit per (case, task), gradients for all weights, logits everywhere."""
    per_case: dict[str, float] = {}
    lm.edit_count = 0
    with common.naive(lm.model):
        for requests in requests_by_task.values():
            for case in split_by_case([r for r in requests if r.doc["case_key"] in case_keys]):
                start = time.perf_counter()
                lm.generate_until(case, disable_tqdm=True)
                key = case[0].doc["case_key"]
                per_case[key] = per_case.get(key, 0.0) + time.perf_counter() - start
    return spread(list(per_case.values())), lm.edit_count


def _measure_batching(lm, requests: list) -> tuple[float, float]:
    """Per-case seconds of a weight-free method at batch size 1 and at batch size 8 (across cases)."""
    saved = (lm.batch_size_per_gpu, lm.cross_case_batch)
    results = []
    try:
        for size in (1, 8):
            lm.batch_size_per_gpu, lm.cross_case_batch = size, size
            timings = _run(lm, requests)
            results.append(sum(t["total_s"] for t in timings) / sum(t["cases"] for t in timings))
    finally:
        lm.batch_size_per_gpu, lm.cross_case_batch = saved
    return results[0], results[1]


def as_dict(figures: MethodFigures) -> dict[str, Any]:
    return asdict(figures)
