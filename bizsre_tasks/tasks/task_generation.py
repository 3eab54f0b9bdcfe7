"""Writes the lm-eval task YAMLs for any set of languages from one template.

As in lm-eval's own task folders, the settings every task shares are in one file,
`_default_template_yaml` (no `.yaml` suffix, so the harness does not index it as a task), which each
task's YAML `include:`s; a task's file holds its name, its metadata and what differs (locality asks
twice, reliability adds `edit_failed`).

The bundled `bizsre_tasks/yaml/` folder (English and Chinese, group `bizsre`) is produced by this
module too; `bizsre make-tasks FILE --out DIR` produces the same for the languages of FILE, with the
tasks bound to FILE and one group `bizsre_<a>_<b>` per language pair.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import yaml

from bizsre_tasks import languages
from bizsre_tasks.tasks import data_loading, prompts

BUNDLED_DIR = Path(__file__).parent.parent / "yaml"
BUNDLED_LANGUAGES = languages.PAIR  # the bundled tasks are Bi-ZsRE's pair
TASK_VERSION = 1.0
MAX_GEN_TOKS = 32
DOCS_FUNCTION = "bizsre_tasks.tasks.task_docs.load_docs"
RESULTS_FUNCTION = "bizsre_tasks.tasks.task_docs.process_results"
ANSWER_FILTER_FUNCTION = "bizsre_tasks.tasks.answer_lines.filter_answers"
PER_LANGUAGE_SPLITS = ("generality", "locality", "portability")
COMMON_FILE = "_default_template_yaml"


class _FunctionTag(str):
    """A string dumped as lm-eval's `!function` tag."""


def _represent_function(dumper: yaml.SafeDumper, value: _FunctionTag):
    return dumper.represent_scalar("!function", str(value))


class _TaskDumper(yaml.SafeDumper):
    pass


_TaskDumper.add_representer(_FunctionTag, _represent_function)


def _metric(name: str, higher_is_better: bool = True) -> dict:
    return {"metric": name, "aggregation": "mean", "higher_is_better": higher_is_better}


def task_config(split: str, lang: str | None, bound_file: str | None = None) -> dict:
    name = "bizsre_reliability" if split == "reliability" else f"bizsre_{split}_{lang}"
    metadata = {"version": TASK_VERSION, "bizsre_split": split}
    if lang:
        metadata["bizsre_lang"] = lang
    if bound_file:
        metadata["bizsre_bound_file"] = bound_file
    config = {
        "task": name,
        "custom_dataset": _FunctionTag(DOCS_FUNCTION),
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{target}}",
        # No newline stop: an answer may open with one (`answer_lines`); the filter keeps the first non-empty line.
        "generation_kwargs": {"until": list(prompts.STOP_SEQUENCES), "max_gen_toks": MAX_GEN_TOKS, "do_sample": False},
        "process_results": _FunctionTag(RESULTS_FUNCTION),
        # f1_as_published: reported under protocol=paper only; empty: share of empty answers.
        "metric_list": [_metric("f1"), _metric("em"), _metric("f1_as_published"), _metric("empty", higher_is_better=False)],
        "metadata": metadata,
    }
    answer_filter = {"function": "custom", "filter_fn": _FunctionTag(ANSWER_FILTER_FUNCTION)}
    # Keep only each document's own answers first: under data parallel the harness pads a rank's requests
    # with copies of its last instance, whose extra answers land on that instance (the default
    # `take_first` filter drops them as well).
    answers_per_doc = 2 if split == "locality" else 1
    config["filter_list"] = [{"name": "none", "filter": [{"function": "take_first_k", "k": answers_per_doc}, answer_filter]}]
    if split == "reliability":
        config["metric_list"].append(_metric("edit_failed", higher_is_better=False))
        # Under edit_mode=sequential: scored right after the case's own edit, before the later ones.
        config["metric_list"] += [_metric("f1_immediate"), _metric("em_immediate")]
    if split == "locality":
        # Two answers per document: unedited model first, edited model second.
        config["repeats"] = answers_per_doc
        config["metric_list"] += [_metric("gold_f1"), _metric("gold_em")]
    return config


def common_config() -> dict:
    """The settings every task shares (the included file): a generality task's, less its name and metadata;
    a task whose setting differs (locality's answers per document, reliability's metrics) says its own."""
    return {key: value for key, value in task_config("generality", "en").items() if key not in ("task", "metadata")}


def task_file_config(split: str, lang: str | None, bound_file: str | None = None) -> dict:
    """A task's YAML: the include, then every setting that the included file does not already hold."""
    common = common_config()
    full = task_config(split, lang, bound_file)
    return {"include": COMMON_FILE, **{key: value for key, value in full.items() if common.get(key, object()) != value}}


def group_config(name: str, languages: tuple[str, ...]) -> dict:
    tasks = ["bizsre_reliability"] + [f"bizsre_{split}_{lang}" for split in PER_LANGUAGE_SPLITS for lang in languages]
    return {"group": name, "task": tasks, "metadata": {"version": TASK_VERSION}}


def _dump(config: dict, path: Path, header: str) -> None:
    text = yaml.dump(config, Dumper=_TaskDumper, sort_keys=False, allow_unicode=True)
    path.write_text(header + text, encoding="utf-8")


def render_tasks(languages: tuple[str, ...], groups: dict[str, tuple[str, ...]], bound_file: str | None) -> dict[str, dict]:
    """File name -> YAML config for the common file, all tasks and groups."""
    files = {COMMON_FILE: common_config(), "bizsre_reliability.yaml": task_file_config("reliability", None, bound_file)}
    for split in PER_LANGUAGE_SPLITS:
        for lang in languages:
            files[f"bizsre_{split}_{lang}.yaml"] = task_file_config(split, lang, bound_file)
    for name, pair in groups.items():
        files[f"_{name}.yaml"] = group_config(name, pair)
    return files


def write_tasks(out_dir: Path, languages: tuple[str, ...], groups: dict[str, tuple[str, ...]], bound_file: str | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    header = "# Generated by bizsre_tasks.tasks.task_generation; regenerate instead of editing by hand.\n"
    written = []
    for file_name, config in render_tasks(languages, groups, bound_file).items():
        path = out_dir / file_name
        _dump(config, path, header)
        written.append(path)
    return written


def pair_groups(languages: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {f"bizsre_{a}_{b}": (a, b) for a, b in combinations(languages, 2)}


def make_tasks_for_file(test_file: str | Path, out_dir: str | Path) -> list[Path]:
    """`bizsre make-tasks`: validate FILE, then write tasks for every language in it, bound to it."""
    test_file = Path(test_file).expanduser().resolve()
    test_set = data_loading.load_test_set(test_file)
    return write_tasks(Path(out_dir), test_set.languages, pair_groups(test_set.languages), str(test_file))


def write_bundled_tasks(out_dir: Path = BUNDLED_DIR) -> list[Path]:
    return write_tasks(out_dir, BUNDLED_LANGUAGES, {"bizsre": BUNDLED_LANGUAGES})
