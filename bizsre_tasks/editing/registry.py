"""Method names -> implementing classes, and hyperparameter resolution.

Hyperparameters come from three layers: the method's `default_hparams`, its `family_hparams` for
the model's `config.model_type`, and a user YAML file (`hparams=my.yaml`) or a bundled preset
(`hparams=paper`: `bizsre_tasks/hparams/paper/<method>.yaml`, the seed repository's settings). Unknown
keys and values of the wrong type are errors, so a typo never silently falls back to a default.

A file may give its layer indices for a model of another depth (`reference_depth: 32`): `layer` and
`layers` are then mapped to this model's depth by relative position (see `scale_layers`).
"""

from __future__ import annotations

import importlib
import math
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
    "alphaedit": "bizsre_tasks.editing.alphaedit:AlphaEdit",
    "serac": "bizsre_tasks.editing.serac:Serac",
    "mend": "bizsre_tasks.editing.mend:Mend",
}
# Keys every method accepts: handled by the wrapper or here, not by the method.
SHARED_KEYS = ("layout", "reference_depth")
# Reserved `hparams=` values: bundled presets, one YAML file per method under hparams/<preset>/.
PRESETS_DIR = Path(__file__).resolve().parents[1] / "hparams"
PRESETS = ("paper",)
# The keys that hold layer indices (rescaled under `reference_depth`).
LAYER_KEYS = ("layer", "layers")


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


def preset_path(preset: str, method: str) -> Path:
    """The bundled preset file of `method`; ConfigurationError when the method has none."""
    path = PRESETS_DIR / preset / f"{method}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (PRESETS_DIR / preset).glob("*.yaml"))
        raise ConfigurationError(f"hparams={preset}: no preset for method '{method}' (presets exist for: {', '.join(available)})")
    return path


def hparams_source(value: str | Path | None, method: str | None = None) -> Path | None:
    """The file behind `hparams=`: a preset name resolved for `method`, else the path itself."""
    if not value:
        return None
    if str(value) in PRESETS:
        if method is None:
            raise ConfigurationError(f"hparams={value} is a preset: it needs the method to pick its file")
        return preset_path(str(value), method)
    return Path(value).expanduser()


def read_hparams_file(path: str | Path | None, method: str | None = None) -> dict[str, Any]:
    """The mapping in a user file, or in the preset `path` names (`paper`) for `method`."""
    path = hparams_source(path, method)
    if path is None:
        return {}
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


def scale_layer(layer: Any, reference_depth: int, num_layers: int, source: str, key: str) -> int:
    """Layer `layer` of a `reference_depth`-layer model at the same relative depth in a `num_layers`-layer
    one: first maps to first, last to last, round half up (the seed's ROME layer 5 of 32 -> 3 of 18)."""
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < reference_depth:
        raise ConfigurationError(f"{source}: '{key}' lists {layer!r}, not a layer of a {reference_depth}-layer model (reference_depth)")
    if reference_depth == 1:
        return 0
    return min(num_layers - 1, int(math.floor(layer * (num_layers - 1) / (reference_depth - 1) + 0.5)))


def scale_layers(user: dict[str, Any], num_layers: int, source: str = "hparams") -> dict[str, Any]:
    """`user` with its layer keys mapped from `reference_depth` to `num_layers` (lists lose the
    duplicates that mapping to a shallower model makes); unchanged without `reference_depth`."""
    depth = user.get("reference_depth")
    if depth is None:
        return user
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ConfigurationError(f"{source}: 'reference_depth' must be a positive integer (layers of the model the file was written for), got {depth!r}")
    scaled = dict(user)
    for key in LAYER_KEYS:
        value = user.get(key)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            mapped = [scale_layer(layer, depth, num_layers, source, key) for layer in value]
            scaled[key] = list(dict.fromkeys(mapped))
        else:
            scaled[key] = scale_layer(value, depth, num_layers, source, key)
    return scaled


def build_method(name: str, context: EditingContext, user_hparams: dict[str, Any], source: str = "hparams") -> EditingMethod:
    cls = method_class(name)
    user_hparams = scale_layers(user_hparams, context.layout.num_layers, source)
    hparams = resolve_hparams(cls, context.layout.model_type, user_hparams, source)
    method = cls(context, hparams)
    method.validate_hparams()
    return method
