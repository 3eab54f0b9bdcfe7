"""The harness's own requests for N cases, built the way lm-eval's evaluator builds them."""

from __future__ import annotations

from typing import Any

from bizsre_tasks.tasks.task_generation import BUNDLED_DIR


def build_requests(tasks: list[str], limit: int, metadata: dict[str, Any]) -> dict[str, list]:
    """Task name -> its Instances (each repeated as the evaluator does), first `limit` documents."""
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=str(BUNDLED_DIR), metadata=dict(metadata))
    task_dict = get_task_dict(tasks, manager)
    by_task: dict[str, list] = {}

    def collect(mapping):
        for name, task in mapping.items():
            if isinstance(task, dict):
                collect(task)
                continue
            task.build_all_requests(limit=limit, rank=0, world_size=1)
            requests = []
            for instance in task.instances:
                requests.extend([instance] * instance.repeats)
            by_task[task.config.task] = requests

    collect(task_dict)
    return by_task


def split_by_case(requests: list) -> list[list]:
    """Requests grouped by case key, in order of first appearance."""
    groups: dict[str, list] = {}
    for request in requests:
        groups.setdefault(request.doc["case_key"], []).append(request)
    return list(groups.values())
