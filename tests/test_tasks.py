"""The Bi-ZsRE tasks: listing, generation from one template, documents, and harness runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bizsre_tasks.tasks import task_docs, task_generation
from tests.harness import metric, run_harness

ALL_TASKS = [
    "bizsre_reliability",
    "bizsre_generality_en", "bizsre_generality_zh",
    "bizsre_locality_en", "bizsre_locality_zh",
    "bizsre_portability_en", "bizsre_portability_zh",
]


def test_bundled_yaml_is_generated_from_the_template(tmp_path):
    task_generation.write_bundled_tasks(tmp_path)
    for generated in tmp_path.iterdir():
        bundled = task_generation.BUNDLED_DIR / generated.name
        assert bundled.read_text() == generated.read_text(), f"{bundled} is stale: regenerate with write_bundled_tasks()"
    bundled = [*task_generation.BUNDLED_DIR.glob("*.yaml"), task_generation.BUNDLED_DIR / task_generation.COMMON_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in bundled)


def test_task_manager_lists_tasks_and_group():
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_generation.BUNDLED_DIR))
    assert set(ALL_TASKS) <= set(manager.all_tasks)
    assert "bizsre" in manager.all_groups
    assert set(manager.match_tasks(["bizsre_*"])) >= set(ALL_TASKS)


def test_lm_eval_ls_lists_tasks():
    """No --include_path: the start-up hook installed by `bizsre prepare` (CI runs it) indexes the tasks."""
    result = subprocess.run(
        [sys.executable, "-m", "lm_eval", "ls", "tasks"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ALL_TASKS + ["bizsre"]:
        assert f"|{name} " in result.stdout or f"|{name}|" in result.stdout


def test_docs_per_split_and_edit_language():
    docs = task_docs.build_docs({"bizsre_split": "reliability", "edit_lang": "zh"})
    assert docs[0]["lang"] == "zh" and docs[0]["prompt"].startswith("问题：")
    edit = json.loads(docs[0]["bizsre_edit"])
    assert edit["lang"] == "zh" and edit["target"] == docs[0]["target"]
    english = task_docs.build_docs({"bizsre_split": "locality", "bizsre_lang": "en"})
    assert not english[0]["prompt"].lower().startswith("question: nq question")  # NQ marker dropped
    assert json.loads(english[0]["bizsre_edit"])["lang"] == "en"  # default edit language


def test_prompt_template_override():
    docs = task_docs.build_docs({"bizsre_split": "generality", "bizsre_lang": "en", "prompt_template_en": "Q: {question}\\nA:"})
    assert docs[0]["prompt"].startswith("Q: ") and docs[0]["prompt"].endswith("\nA:")


def test_unknown_edit_language_is_reported():
    from bizsre_tasks.tasks.data_loading import DataFormatError

    with pytest.raises(DataFormatError, match="edit_lang 'de' is not among the file's languages"):
        task_docs.build_docs({"bizsre_split": "reliability", "edit_lang": "de"})


def test_locality_scoring_uses_pre_edit_answer():
    doc = {"split": "locality", "lang": "en", "target": "Shakespeare", "protocol": "generate"}
    scores = task_docs.process_results(doc, [["Marlowe", "Marlowe"]])
    assert scores == {"f1": 1.0, "em": 1.0, "gold_f1": 0.0, "gold_em": 0.0, "empty": 0.0}
    scores = task_docs.process_results(doc, [["Shakespeare", "Marlowe"]])
    assert scores["f1"] == 0.0


def test_plain_hf_run_on_tiny_model(tiny_gpt2):
    results = run_harness({"pretrained": str(tiny_gpt2), "device": "cpu"}, ["bizsre"], limit=2, model="hf")
    for task in ALL_TASKS:
        assert 0.0 <= metric(results, task) <= 1.0
    # With an unedited model locality is 100 by construction.
    assert metric(results, "bizsre_locality_en") == 1.0 and metric(results, "bizsre_locality_zh") == 1.0
    assert "gold_f1,none" in results["results"]["bizsre_locality_zh"]


def test_make_tasks_for_made_up_language_pair(tmp_path):
    case = {
        "subject": "Zorb", "src": "Where is Zorb?", "rephrase": "Zorb is where?", "alt": "Mars",
        "loc": "Who?", "loc_ans": "Me", "portability": {"New Question": "Q?", "New Answer": "A"},
    }
    data = tmp_path / "pair.json"
    data.write_text(json.dumps([{"en": case, "qx": case}, {"en": {**case, "alt": "Venus"}, "qx": case}]))  # records must differ
    written = task_generation.make_tasks_for_file(data, tmp_path / "tasks")
    names = sorted(p.name for p in written)
    assert "bizsre_generality_qx.yaml" in names and "_bizsre_en_qx.yaml" in names
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tmp_path / "tasks"))
    assert {"bizsre_generality_qx", "bizsre_locality_qx", "bizsre_portability_qx", "bizsre_reliability"} <= set(manager.all_tasks)
    docs = task_docs.build_docs({"bizsre_split": "generality", "bizsre_lang": "qx", "bizsre_bound_file": str(data)})
    assert len(docs) == 2 and docs[0]["prompt"] == "Question: Zorb is where?\nAnswer:"  # English fallback template


def test_make_tasks_rejects_inconsistent_languages(tmp_path):
    case = {"subject": "s", "src": "q", "rephrase": "r", "alt": "a", "loc": "l", "loc_ans": "la"}
    data = tmp_path / "mixed.json"
    data.write_text(json.dumps([{"en": case, "de": case}, {"en": case, "fr": case}]))
    result = subprocess.run(
        [sys.executable, "-m", "bizsre_tasks.cli", "make-tasks", str(data), "--out", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "record 1" in result.stderr and "language parts differ" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_default_model_baseline_on_shared_cases(shared_test_file, monkeypatch):
    from bizsre_tasks.default_model import ensure_default_model

    monkeypatch.setenv("BIZSRE_TEST_FILE", str(shared_test_file))
    results = run_harness({"pretrained": str(ensure_default_model()), "device": "cpu"}, ["bizsre"], limit=3, model="hf", max_gen_toks=None)
    assert metric(results, "bizsre_locality_en") == 1.0
    samples = results["samples"]["bizsre_reliability"]
    assert len(samples) == 3 and all(isinstance(s["resps"][0][0], str) for s in samples)


def test_bundled_task_yamls_include_one_common_file_and_resolve_to_the_full_config():
    from lm_eval.tasks._yaml_loader import load_yaml

    def plain(value):  # the loader leaves `!function` tags as paths in the YAML's folder
        return str(value).replace(f"{task_generation.BUNDLED_DIR.resolve()}/", "")

    common = task_generation.BUNDLED_DIR / task_generation.COMMON_FILE
    assert common.exists()
    for path in sorted(task_generation.BUNDLED_DIR.glob("bizsre_*.yaml")):
        lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
        assert lines[0] == f"include: {task_generation.COMMON_FILE}", path.name
        parts = path.stem.split("_")
        full = task_generation.task_config(parts[1], parts[2] if len(parts) > 2 else None)
        merged = load_yaml(path, resolve_func=False)
        assert {k: plain(v) for k, v in merged.items()} == {k: plain(v) for k, v in full.items()}, path.name
