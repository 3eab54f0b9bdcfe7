"""Makes `lm_eval --model edited-hf` work without an import in the user's code.

`bizsre prepare` writes a one-line `.pth` file into site-packages. Python runs it at start-up; it
only installs `_RegistryWatcher`, a meta-path finder that waits for `lm_eval.api.registry` to be
imported and then registers `edited-hf` as a lazy placeholder (the wrapper module itself is imported
only when a user asks for that model). Nothing else is imported at start-up. Registering also makes
an uncaught `BizsreError` (bad data or arguments) end `lm_eval` with its one-line message.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import site
import sys
import sysconfig
from pathlib import Path

MODEL_NAME = "edited-hf"
MODEL_TARGET = "bizsre_tasks.editing_wrapper:EditedHFLM"
WATCHED_MODULE = "lm_eval.api.registry"
PTH_NAME = "bizsre_tasks_lm_eval.pth"
# Guarded so that an uninstalled package leaves no start-up error behind.
PTH_LINE = (
    "import importlib.util as _u; "
    "_u.find_spec('bizsre_tasks') and __import__('bizsre_tasks.lm_eval_hook').lm_eval_hook.install()\n"
)


def register_model() -> None:
    """Register `edited-hf` with the harness (idempotent)."""
    import lm_eval.models  # noqa: F401  - fills the registry with the harness's own lazy entries first
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)
    _install_error_hook()


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


class _RegistryWatcher(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != WATCHED_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        original_exec = spec.loader.exec_module

        def exec_then_register(module):
            original_exec(module)
            register_model()

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    if WATCHED_MODULE in sys.modules:
        register_model()
    elif not any(isinstance(finder, _RegistryWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegistryWatcher())


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
