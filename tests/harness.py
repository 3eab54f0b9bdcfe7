"""Run the harness in-process (importing lm_eval once per test session is much faster than a CLI)."""

from __future__ import annotations

from typing import Any

import bizsre_tasks.editing_wrapper  # noqa: F401  - registers edited-hf
from bizsre_tasks.tasks.task_generation import BUNDLED_DIR


def run_harness(
    model_args: dict[str, Any],
    tasks: list[str],
    limit: int | None = 2,
    model: str = "edited-hf",
    include_path=BUNDLED_DIR,
    max_gen_toks: int | None = 6,
    metadata: dict[str, Any] | None = None,
    **kwargs,
):
    """`max_gen_toks` is kept small by default: tiny random models never stop by themselves. `metadata`
    reaches the tasks only (`--metadata`), as the plain `hf` model refuses arguments it does not know."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=str(include_path), metadata={**model_args, **(metadata or {})})
    return lm_eval.simple_evaluate(
        model=model,
        model_args=dict(model_args),
        tasks=tasks,
        limit=limit,
        task_manager=task_manager,
        log_samples=True,
        gen_kwargs=f"max_gen_toks={max_gen_toks}" if max_gen_toks else None,
        **kwargs,
    )


def metric(results: dict, task: str, name: str = "f1") -> float:
    return results["results"][task][f"{name},none"]


def ike_answers_with_and_without_prefix(model_args: dict[str, Any], monkeypatch, runs: list, limit: int = 3):
    """IKE answers of `bizsre` (each task's `resps`) with its demonstrations declared as a shared prefix and
    without (full prompts), and how many prefixes ran as a cache (`runs`, the `prefix_runs` fixture) in each."""
    from bizsre_tasks.editing.ike import InContextEdit

    cached = run_harness(model_args, ["bizsre"], limit=limit)
    cached_runs = len(runs)
    monkeypatch.setattr(InContextEdit, "shared_prefix", None)  # the edit declares no prefix: full prompts
    full = run_harness(model_args, ["bizsre"], limit=limit)
    answers = [{task: [s["resps"] for s in samples] for task, samples in result["samples"].items()} for result in (cached, full)]
    return answers[0], answers[1], cached_runs, len(runs) - cached_runs
