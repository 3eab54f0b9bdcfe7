"""Old import paths of modules that moved into the layer folders keep working.

Start-up hooks written by earlier `bizsre prepare` runs, task folders written by earlier `bizsre
make-tasks` runs (their `!function` tags) and user code name the old paths; a finder maps each old
name to the module at its new home (the same module object, so patches and state are shared).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    **{f"bizsre_tasks.{name}": f"bizsre_tasks.tasks.{name}" for name in (
        "task_docs", "task_generation", "prompts", "metrics", "paper_protocol", "answer_lines", "provenance",
        "data_loading", "run_state")},
    **{f"bizsre_tasks.{name}": f"bizsre_tasks.wrapper.{name}" for name in (
        "case_planning", "preflight", "answer_store", "teacher_forcing", "model_args", "batch_sizing", "lm_eval_hook")},
    "bizsre_tasks.editing.prefix_cache": "bizsre_tasks.wrapper.prefix_cache",
    **{f"bizsre_tasks.{name}": f"bizsre_tasks.experiments.{name}" for name in ("sweep", "sweep_runner", "scale_study")},
    **{f"bizsre_tasks.editing.{name}": f"bizsre_tasks.editing.kv.{name}" for name in (
        "value_delta", "second_moments", "generated_corpus")},
    **{f"bizsre_tasks.editing.{name}": f"bizsre_tasks.editing.tensors.{name}" for name in ("head_softmax", "encoders")},
    "bizsre_tasks.training.checkpoints": "bizsre_tasks.editing.checkpoints",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass  # already executed under its new name


def install() -> None:
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())  # before any installed copy that still has the old files
