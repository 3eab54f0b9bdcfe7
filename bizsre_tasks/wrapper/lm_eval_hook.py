"""Makes a plain `lm_eval` (0.4.13) see the `edited-hf` model and the bundled Bi-ZsRE tasks.

The package declares both as lm-eval plugins in pyproject.toml (entry-point groups `lm_eval.models`
and `lm_eval.tasks`, the shape of the harness's plugin discovery). lm-eval 0.4.13 does not scan
entry points, so `bizsre prepare` writes a one-line `.pth` file into site-packages. Python runs it at
start-up; it only installs `_ImportWatcher`, a meta-path finder that waits for three harness modules:

- `lm_eval.api.registry`: registers `edited-hf` as a lazy placeholder (the wrapper module is imported
  only when a user asks for that model);
- `lm_eval.tasks.manager`: every `TaskManager` also indexes the installed package's task folder,
  found at run time (so regenerated YAMLs show at once and nothing is ever copied), after the
  harness's own tasks and before `--include_path` (which therefore still overrides, and which may
  name the same folder without a duplicate);
- `lm_eval.loggers.evaluation_tracker`: results files record the Bi-ZsRE test file(s) read and
  edited-hf runs get their own output subfolder (see `provenance`).

A harness that discovers plugins itself is left to do so: the first two steps are skipped there.
Nothing else is imported at start-up. Registering also makes an uncaught `BizsreError` (bad data or
arguments) end `lm_eval` with its one-line message.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import inspect
import os
import site
import sys
import sysconfig
from pathlib import Path

MODEL_NAME = "edited-hf"
MODEL_TARGET = "bizsre_tasks.editing_wrapper:EditedHFLM"
TASKS_PACKAGE = "bizsre_tasks.yaml"  # the `lm_eval.tasks` entry point's value
REGISTRY_MODULE = "lm_eval.api.registry"
TASK_MANAGER_MODULE = "lm_eval.tasks.manager"
TRACKER_MODULE = "lm_eval.loggers.evaluation_tracker"
PTH_NAME = "bizsre_tasks_lm_eval.pth"
# Guarded so that an uninstalled package leaves no start-up error behind.
PTH_LINE = (
    "import importlib.util as _u; "
    "_u.find_spec('bizsre_tasks') and __import__('importlib').import_module('bizsre_tasks.wrapper.lm_eval_hook').install()\n"
)


def bundled_tasks_dir() -> Path:
    """The folder of the installed package's task YAMLs, resolved like the harness resolves an
    `lm_eval.tasks` entry point (the package's own directory)."""
    spec = importlib.util.find_spec(TASKS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{TASKS_PACKAGE} is not an importable package")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def register_model(registry=None) -> None:
    """Register `edited-hf` with the harness (idempotent); `registry` is `lm_eval.api.registry`."""
    if registry is None:
        import lm_eval.api.registry as registry

    _install_error_hook()
    if hasattr(registry, "load_plugins"):  # the harness reads our `lm_eval.models` entry point itself
        return
    import lm_eval.models  # noqa: F401  - fills the registry with the harness's own lazy entries first

    if MODEL_NAME not in registry.model_registry:
        registry.model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def with_bundled_tasks(include_path):
    """`include_path` with the bundled task folder in front, unless it names that folder already."""
    bundled = bundled_tasks_dir()
    paths = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
    if any(Path(p).expanduser().resolve() == bundled for p in paths):
        return include_path
    return [bundled, *paths]


def patch_task_manager(module) -> None:
    """Every TaskManager also indexes the bundled tasks (skipped where the harness discovers plugins)."""
    if hasattr(module, "discover_plugin_task_paths"):
        return
    task_manager = module.TaskManager
    original = task_manager.__init__
    if getattr(original, "_bizsre", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.arguments["include_path"] = with_bundled_tasks(bound.arguments.get("include_path"))
        original(*bound.args, **bound.kwargs)

    init._bizsre = True
    task_manager.__init__ = init


def patch_tracker(module) -> None:
    from bizsre_tasks.tasks import provenance

    provenance.patch_evaluation_tracker(module.EvaluationTracker)


def _install_error_hook() -> None:
    """A bad file or argument (BizsreError) ends a plain `lm_eval` with its one-line message, not a
    traceback (exit status 1; BIZSRE_TRACEBACK=1 keeps the traceback). Other errors are untouched."""
    previous = sys.excepthook
    if getattr(previous, "_bizsre", False):
        return

    def hook(kind, error, traceback):
        from bizsre_tasks.errors import BizsreError

        if isinstance(error, BizsreError) and not os.environ.get("BIZSRE_TRACEBACK"):
            print(f"{os.path.basename(sys.argv[0]) or 'python'}: error: {error}", file=sys.stderr)
        else:
            previous(kind, error, traceback)

    hook._bizsre = True
    sys.excepthook = hook


# module name -> what to do once it has been executed (receives the module)
AFTER_IMPORT = {
    REGISTRY_MODULE: register_model,
    TASK_MANAGER_MODULE: patch_task_manager,
    TRACKER_MODULE: patch_tracker,
}


class _ImportWatcher(importlib.abc.MetaPathFinder):
    """Runs AFTER_IMPORT[name] right after the module `name` is executed, whoever imports it."""

    def __init__(self) -> None:
        self.pending = set(AFTER_IMPORT)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        if not self.pending:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        original_exec = spec.loader.exec_module

        def exec_then_patch(module):
            original_exec(module)
            AFTER_IMPORT[fullname](module)

        spec.loader.exec_module = exec_then_patch
        return spec


def install() -> None:
    if any(isinstance(finder, _ImportWatcher) for finder in sys.meta_path):
        return
    watcher = _ImportWatcher()
    for name in list(watcher.pending):
        if name in sys.modules:  # imported before the hook (e.g. `bizsre run`, tests): act now
            watcher.pending.discard(name)
            AFTER_IMPORT[name](sys.modules[name])
    if watcher.pending:
        sys.meta_path.insert(0, watcher)


def site_packages_dir() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def write_pth(target_dir: Path | None = None) -> Path:
    target_dir = target_dir or site_packages_dir()
    path = target_dir / PTH_NAME
    if not path.exists() or path.read_text() != PTH_LINE:
        path.write_text(PTH_LINE)
    return path


def pth_installed() -> bool:
    candidates = [site_packages_dir(), *map(Path, site.getsitepackages())]
    return any((directory / PTH_NAME).exists() for directory in candidates)
