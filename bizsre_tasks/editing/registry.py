"""Method names -> implementing classes, and hyperparameter resolution.

Hyperparameters come from three layers: the method's `default_hparams`, its `family_hparams` for
the model's `config.model_type`, and a user YAML file (`hparams=my.yaml`). Unknown keys and values
of the wrong type are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from bizsre_tasks.editing.base import EditingContext, EditingMethod
from bizsre_tasks.errors import ConfigurationError

METHODS: dict[str, str] = {
    "none": "bizsre_tasks.editing.no_edit:NoEdit",
    "ft": "bizsre_tasks.editing.ft:FineTuneL",
    "ike": "bizsre_tasks.editing.ike:InContextEditing",
    "kn": "bizsre_tasks.editing.kn:KnowledgeNeurons",
    "rome": "bizsre_tasks.editing.rome:Rome",
    "memit": "bizsre_tasks.editing.memit:Memit",
    "serac": "bizsre_tasks.editing.serac:Serac",
    "mend": "bizsre_tasks.editing.mend:Mend",
}
# Keys every method accepts: handled by the wrapper, not the method.
SHARED_KEYS = ("layout",)


def method_class(name: str) -> type[EditingMethod]:
    """A built-in method by name, or a user's own class given as `package.module:ClassName`."""
    if name not in METHODS and ":" not in name:
        raise ConfigurationError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)} (or package.module:ClassName)")
    module_name, class_name = METHODS.get(name, name).split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigurationError(f"method '{name}' is not available in this version of bizsre-tasks") from None
        raise
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, EditingMethod)):
        raise ConfigurationError(f"method '{name}': {module_name}.{class_name} is not an EditingMethod subclass")
    return cls


def read_hparams_file(path: str | Path | None) -> dict[str, Any]:
    if not path:
        return {}
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigurationError(f"hparams file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"hparams file {path}: invalid YAML {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(f"hparams file {path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as one line: where, then what."""
    mark = getattr(exc, "problem_mark", None)
    where = f"at line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{getattr(exc, 'problem', None) or exc}".split())


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def resolve_hparams(cls: type[EditingMethod], model_type: str, user: dict[str, Any], source: str = "hparams") -> dict[str, Any]:
    merged = dict(cls.default_hparams)
    merged.update(cls.family_hparams.get(model_type, {}))
    for key, value in user.items():
        if key in SHARED_KEYS:
            continue
        if key not in cls.default_hparams:
            known = ", ".join(sorted(cls.default_hparams)) or "(none)"
            raise ConfigurationError(f"{source}: unknown key '{key}' for method '{cls.name}'; known keys: {known}")
        if not _type_ok(cls.default_hparams[key], value):
            expected = type(cls.default_hparams[key]).__name__
            raise ConfigurationError(f"{source}: key '{key}' for method '{cls.name}' expects {expected}, got {value!r}")
        merged[key] = float(value) if isinstance(cls.default_hparams[key], float) else value
    return merged


def build_method(name: str, context: EditingContext, user_hparams: dict[str, Any], source: str = "hparams") -> EditingMethod:
    cls = method_class(name)
    hparams = resolve_hparams(cls, context.layout.model_type, user_hparams, source)
    method = cls(context, hparams)
    method.validate_hparams()
    return method
