"""The package's folders are its layers: imports run downwards only, and no module imports itself back.

Every `import` counts, also those inside functions (a function-level import hides a cycle, it does
not remove it)."""

from __future__ import annotations

import ast
from pathlib import Path

from bizsre_tasks import _moved

PACKAGE = Path(__file__).resolve().parents[1] / "bizsre_tasks"

# Lowest first; a module may import modules of its own layer or of lower ones.
LAYERS = [
    ("foundation", ("bizsre_tasks", "bizsre_tasks._moved", "bizsre_tasks.errors", "bizsre_tasks.languages",
                    "bizsre_tasks.default_model", "bizsre_tasks.fingerprints")),
    ("tasks", ("bizsre_tasks.tasks", "bizsre_tasks.yaml")),
    ("editing methods", ("bizsre_tasks.editing",)),
    ("training", ("bizsre_tasks.training",)),
    ("wrapper", ("bizsre_tasks.wrapper", "bizsre_tasks.editing_wrapper")),
    ("report", ("bizsre_tasks.report",)),
    ("experiments and benchmark", ("bizsre_tasks.experiments", "bizsre_tasks.benchmark")),
    ("commands", ("bizsre_tasks.commands", "bizsre_tasks.cli")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    best, level = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    assert level is not None, f"{module} belongs to no layer: add its folder to LAYERS"
    return level


def imports_of(module: str) -> set[str]:
    """Package modules that `module` imports (anywhere in its body)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("bizsre_tasks"):
                found.add(name)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_no_module_imports_an_old_path():
    stale = {(module, name) for module, names in GRAPH.items() for name in names if name in _moved.MOVED}
    assert not stale, f"imports of moved modules by their old names: {sorted(stale)}"


def test_every_import_names_a_package_module():
    unknown = {(module, name) for module, names in GRAPH.items() for name in names if name not in MODULES}
    assert not unknown, sorted(unknown)


def test_imports_run_downwards_only():
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {name} ({LAYERS[layer_of(name)][0]})"
        for module, names in GRAPH.items() for name in names
        if layer_of(name) > layer_of(module)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_editing_methods_import_no_upper_layer():
    forbidden = ("training", "commands", "report", "benchmark", "experiments", "wrapper", "editing_wrapper", "cli")
    bad = [
        f"{module} imports {name}" for module, names in GRAPH.items() if module == "bizsre_tasks.editing" or module.startswith("bizsre_tasks.editing.")
        for name in names if any(name == f"bizsre_tasks.{top}" or name.startswith(f"bizsre_tasks.{top}.") for top in forbidden)
    ]
    assert not bad, "\n".join(bad)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among the package's modules (package `__init__` edges to parents ignored), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph or node.startswith(nxt + "."):
                continue  # a submodule importing its own package's __init__ is not a cycle of ours
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_function_level_cycle():
    # The check can fail: the former MEND cycle, method -> trainer -> method.
    graph = {"a.method": {"a.trainer"}, "a.trainer": {"a.method", "a.base"}, "a.base": set()}
    assert find_cycle(graph) == ["a.method", "a.trainer", "a.method"]


def test_old_import_paths_are_the_moved_modules():
    import importlib

    for old, new in _moved.MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    # the start-up hook line written by earlier `bizsre prepare` runs
    assert __import__("bizsre_tasks.lm_eval_hook").lm_eval_hook is importlib.import_module("bizsre_tasks.wrapper.lm_eval_hook")
