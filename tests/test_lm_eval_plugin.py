"""The package as an lm-eval plugin: entry points, and the start-up hook that stands in for them on
lm-eval 0.4.13 (tasks found with no --include_path, never stale, no duplicates, harmless when uninstalled)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from bizsre_tasks.tasks import task_generation
from bizsre_tasks.wrapper import lm_eval_hook

ROOT = Path(__file__).resolve().parents[1]
SEVEN_TASKS = [
    "bizsre_reliability", "bizsre_generality_en", "bizsre_generality_zh", "bizsre_locality_en",
    "bizsre_locality_zh", "bizsre_portability_en", "bizsre_portability_zh",
]


def _declared(group: str) -> list[importlib.metadata.EntryPoint]:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][group]
    return [importlib.metadata.EntryPoint(name, value, group) for name, value in table.items()]


def test_model_entry_point_loads_the_wrapper_class():
    from bizsre_tasks.editing_wrapper import EditedHFLM

    (entry,) = _declared("lm_eval.models")
    assert entry.name == "edited-hf"
    assert entry.load() is EditedHFLM
    assert entry.value == lm_eval_hook.MODEL_TARGET  # the hook registers the same target


def test_task_entry_point_names_the_bundled_task_folder():
    (entry,) = _declared("lm_eval.tasks")
    assert entry.value == lm_eval_hook.TASKS_PACKAGE
    # Resolved as the harness's plugin discovery does: the package's own directory.
    spec = importlib.util.find_spec(entry.value)
    folder = Path(list(spec.submodule_search_locations)[0])
    assert folder.resolve() == task_generation.BUNDLED_DIR.resolve() == lm_eval_hook.bundled_tasks_dir()
    assert {p.stem for p in folder.glob("*.yaml")} == set(SEVEN_TASKS) | {"_bizsre"}


def test_installed_metadata_declares_the_entry_points():
    """After `pip install`, the distribution's metadata carries both plugins (what a harness reads)."""
    try:
        distribution = importlib.metadata.distribution("bizsre-tasks")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("bizsre-tasks is not installed")
    installed = {(e.group, e.name, e.value) for e in distribution.entry_points if e.group.startswith("lm_eval.")}
    if not installed:
        pytest.skip(f"the installed bizsre-tasks ({distribution.locate_file('')}) predates the entry points; reinstall")
    assert installed == {(e.group, e.name, e.value) for g in ("lm_eval.models", "lm_eval.tasks") for e in _declared(g)}


def test_task_manager_finds_the_tasks_without_include_path():
    lm_eval_hook.install()
    from lm_eval.tasks import TaskManager

    manager = TaskManager()
    assert set(SEVEN_TASKS) <= set(manager.all_subtasks) and "bizsre" in manager.all_groups
    assert sorted(manager.match_tasks(["bizsre_*"])) == sorted(SEVEN_TASKS)
    assert Path(manager.task_index["bizsre_reliability"].yaml_path).parent == lm_eval_hook.bundled_tasks_dir()


@pytest.mark.parametrize("spelling", ["exact", "trailing slash", "list"])
def test_include_path_naming_the_bundled_folder_adds_no_duplicate(spelling, caplog):
    lm_eval_hook.install()
    from lm_eval.tasks import TaskManager

    folder = str(task_generation.BUNDLED_DIR)
    include = {"exact": folder, "trailing slash": folder + "/", "list": [folder]}[spelling]
    with caplog.at_level("WARNING"):
        manager = TaskManager(include_path=include)
    assert not [r for r in caplog.records if "overrides existing task" in r.getMessage() or "Duplicate" in r.getMessage()]
    assert manager.include_path == include  # left as given
    assert sorted(manager.match_tasks(["bizsre_*"])) == sorted(SEVEN_TASKS)


def test_user_task_folder_still_overrides_and_adds(tmp_path):
    """A `make-tasks` folder comes after the bundled one, so its tasks win (the harness's precedence)."""
    lm_eval_hook.install()
    from lm_eval.tasks import TaskManager

    task_generation.write_tasks(tmp_path, ("en", "de"), {"bizsre_en_de": ("en", "de")}, bound_file="/some/file.json")
    manager = TaskManager(include_path=str(tmp_path))
    assert Path(manager.task_index["bizsre_generality_de"].yaml_path).parent == tmp_path
    assert Path(manager.task_index["bizsre_reliability"].yaml_path).parent == tmp_path
    assert Path(manager.task_index["bizsre_generality_zh"].yaml_path).parent == lm_eval_hook.bundled_tasks_dir()


def test_tasks_are_read_from_the_installed_package_at_run_time(tmp_path, monkeypatch):
    """Regenerated YAMLs show at once: the folder is looked up on every TaskManager, never copied."""
    lm_eval_hook.install()
    from lm_eval.tasks import TaskManager

    package = tmp_path / "fake_plugin_pkg"
    (package / "tasks").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tasks" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(lm_eval_hook, "TASKS_PACKAGE", "fake_plugin_pkg.tasks")
    task = package / "tasks" / "t.yaml"
    task.write_text("task: fake_task_one\ndataset_path: x\noutput_type: generate_until\ndoc_to_text: q\n")
    assert "fake_task_one" in TaskManager().all_tasks
    task.write_text("task: fake_task_two\ndataset_path: x\noutput_type: generate_until\ndoc_to_text: q\n")
    names = TaskManager().all_tasks
    assert "fake_task_two" in names and "fake_task_one" not in names


def test_hook_steps_aside_for_a_harness_that_discovers_plugins(monkeypatch):
    """lm-eval with plugin discovery (load_plugins / discover_plugin_task_paths) reads the entry points
    itself; the hook must not register or index a second time."""
    import types

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    registry = types.SimpleNamespace(load_plugins=lambda *a: None, model_registry={})
    lm_eval_hook.register_model(registry)
    assert registry.model_registry == {}

    class Manager:
        def __init__(self, include_path=None):
            self.include_path = include_path

    manager_module = types.SimpleNamespace(TaskManager=Manager, discover_plugin_task_paths=lambda: [])
    lm_eval_hook.patch_task_manager(manager_module)
    assert Manager().include_path is None


def _run(code_or_args: list[str], **kwargs):
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, timeout=600, **kwargs)


def test_pth_line_is_silent_when_the_package_is_gone(tmp_path):
    """After `pip uninstall`, the leftover .pth must not print anything or fail at start-up."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    lm_eval_hook.write_pth(site_dir)
    # -I -S: no site-packages and no PYTHONPATH, so bizsre_tasks cannot be found, as after an uninstall.
    result = _run(["-I", "-S", "-c", f"import site; site.addsitedir({str(site_dir)!r}); print('ok')"])
    assert result.returncode == 0 and result.stdout == "ok\n" and result.stderr == ""


def test_pth_line_installs_the_hook_when_the_package_is_there(tmp_path):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    lm_eval_hook.write_pth(site_dir)
    code = (
        f"import site, sys; site.addsitedir({str(site_dir)!r}); "
        "print(any(type(f).__name__ == '_ImportWatcher' for f in sys.meta_path)); "
        "print('lm_eval' in sys.modules)"
    )
    result = _run(["-S", "-c", code], env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert result.stdout.split() == ["True", "False"], result.stderr  # watching, nothing imported at start-up
