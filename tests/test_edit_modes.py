"""edit_mode=sequential / batch (issue 15): accumulation, the immediate reliability answers, batches
through apply_many, bitwise restore, resume and configuration errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from bizsre_tasks.editing import registry
from bizsre_tasks.editing.base import EditRequest
from bizsre_tasks.editing_wrapper import EditedHFLM, model_checksum
from bizsre_tasks.errors import ConfigurationError
from tests import fake_methods
from tests.harness import metric, run_harness


@pytest.fixture(autouse=True)
def fake_method_registry(monkeypatch):
    monkeypatch.setitem(registry.METHODS, "counting", "tests.fake_methods:CountingWeightEdit")
    monkeypatch.setitem(registry.METHODS, "stacking", "tests.fake_methods:StackingWeightEdit")
    monkeypatch.setitem(registry.METHODS, "remembering", "tests.fake_methods:RememberingPrefixEdit")
    fake_methods.CountingWeightEdit.applied = []
    fake_methods.CountingWeightEdit.events = []
    fake_methods.StackingWeightEdit.in_force = []
    fake_methods.StackingWeightEdit.log = []
    fake_methods.RememberingPrefixEdit.applied = []
    fake_methods.RememberingPrefixEdit.sizes = []


def _args(model_dir, **extra):
    return {"pretrained": str(model_dir), "device": "cpu", **extra}


def _answers(results, task):
    return [s["resps"] for s in results["samples"][task]]


def _revealing_answers(monkeypatch):
    """Answers that say which edits are in force: the gold answer when the case's own edit is the last one
    applied, else "after N edits" (the stacking method's record)."""

    def answer(self, requests, indices, edits):
        stack = fake_methods.StackingWeightEdit.in_force
        out = []
        for i in indices:
            doc = requests[i].doc
            out.append(doc["target"] if stack[-1:] == [doc["case_key"]] else f"after {len(stack)} edits")
        return out

    monkeypatch.setattr(EditedHFLM, "_answer", answer)


def test_sequential_edits_accumulate(tiny_gpt2):
    # Each edit adds noise to one weight: alone, a case sees one; in sequence, the last questions see ten.
    tasks = ["bizsre_reliability", "bizsre_generality_en"]
    single = run_harness(_args(tiny_gpt2, method="counting"), tasks, limit=10)
    sequential = run_harness(_args(tiny_gpt2, method="counting", edit_mode="sequential"), tasks, limit=10)
    assert fake_methods.CountingWeightEdit.applied[-10:] == fake_methods.CountingWeightEdit.applied[:10]  # same order, once each
    assert any(a != b for task in tasks for a, b in zip(_answers(single, task), _answers(sequential, task)))
    unedited = run_harness(_args(tiny_gpt2, method="none"), tasks, limit=10)
    assert any(a != b for task in tasks for a, b in zip(_answers(unedited, task), _answers(sequential, task)))  # edits still in force


def test_rome_sequence_restores_bitwise(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("BIZSRE_CACHE_DIR", str(tmp_path / "cache"))
    hparams = tmp_path / "rome.yaml"
    hparams.write_text(yaml.safe_dump({"layer": 1, "steps": 4, "n_prefixes": 1, "prefix_length": 3}))
    args = _args(tiny_gpt2, method="rome", hparams=str(hparams), verify_restore=True)
    lm = EditedHFLM(**args, edit_mode="sequential")
    before = model_checksum(lm.model)
    sequential = run_harness(args, ["bizsre_reliability"], limit=4, model=lm)
    assert model_checksum(lm.model) == before
    single = run_harness(args, ["bizsre_reliability"], limit=4)
    assert _answers(single, "bizsre_reliability")[0] == _answers(sequential, "bizsre_reliability")[0]  # no edit before the first
    assert "f1_immediate,none" in sequential["results"]["bizsre_reliability"]


def test_verify_restore_checks_after_the_whole_sequence(tiny_gpt2, monkeypatch):
    from bizsre_tasks.wrapper.restore_check import WeightSnapshot

    checks = []
    real = WeightSnapshot.first_change
    monkeypatch.setattr(WeightSnapshot, "first_change", lambda self, model: checks.append(len(fake_methods.StackingWeightEdit.in_force)) or real(self, model))
    run_harness(_args(tiny_gpt2, method="stacking", edit_mode="sequential", verify_restore=True), ["bizsre_reliability"], limit=5)
    assert checks == [0]  # once, after every edit was restored
    log = fake_methods.StackingWeightEdit.log
    assert log[0] == ("begin_sequence",) and log[-1] == ("end_sequence",)
    restores = [key for kind, *key in log if kind == "restore"]
    applied = fake_methods.CountingWeightEdit.applied
    assert [key[0] for key in restores] == applied[::-1]  # in reverse order
    assert [kind for kind, _ in fake_methods.CountingWeightEdit.events] == ["apply"] * 5  # no precompute on the unedited model


def test_leaky_sequence_is_caught(tiny_gpt2, monkeypatch):
    monkeypatch.setitem(registry.METHODS, "leaky", "tests.fake_methods:LeakyWeightEdit")
    with pytest.raises(RuntimeError, match="did not restore the model exactly"):
        run_harness(_args(tiny_gpt2, method="leaky", edit_mode="sequential", verify_restore=True), ["bizsre_reliability"], limit=3)


def test_single_mode_immediate_equals_final(tiny_gpt2, monkeypatch):
    _revealing_answers(monkeypatch)
    results = run_harness(_args(tiny_gpt2, method="stacking"), ["bizsre_reliability"], limit=4)
    assert metric(results, "bizsre_reliability") == 1.0
    assert metric(results, "bizsre_reliability", "f1_immediate") == 1.0
    assert metric(results, "bizsre_reliability", "em_immediate") == metric(results, "bizsre_reliability", "em")


def test_sequential_answers_after_the_last_edit_and_immediately_after_each(tiny_gpt2, monkeypatch):
    _revealing_answers(monkeypatch)
    results = run_harness(_args(tiny_gpt2, method="stacking", edit_mode="sequential"), ["bizsre_reliability"], limit=4)
    answers = [resps[0][0] for resps in _answers(results, "bizsre_reliability")]
    assert answers[:3] == ["after 4 edits"] * 3  # every answer after the last edit; only the last case's is its own
    assert metric(results, "bizsre_reliability") == pytest.approx(0.25)
    assert metric(results, "bizsre_reliability", "f1_immediate") == 1.0  # each right after its own edit
    assert metric(results, "bizsre_reliability", "em_immediate") == 1.0


def test_batch_mode_installs_n_edits_together_and_restores_between(tiny_gpt2):
    results = run_harness(_args(tiny_gpt2, method="stacking", edit_mode="batch", edits_per_batch=4, verify_restore=True),
                          ["bizsre_reliability", "bizsre_locality_en"], limit=10)
    log = fake_methods.StackingWeightEdit.log
    batches = [keys for kind, *rest in log if kind == "apply_many" for keys in rest]
    assert [len(keys) for keys in batches] == [4, 4, 2]
    position = 0
    for keys in batches:  # each batch: apply_many, then its restores in reverse, before the next batch
        assert log[position] == ("apply_many", keys)
        assert log[position + 1 : position + 1 + len(keys)] == [("restore", key) for key in reversed(keys)]
        position += 1 + len(keys)
    assert position == len(log)
    assert not any(kind == "precompute" for kind, _ in fake_methods.CountingWeightEdit.events)
    assert metric(results, "bizsre_locality_en") >= 0.0


def test_weight_free_sequence_remembers_every_edit_so_far(tiny_gpt2):
    run_harness(_args(tiny_gpt2, method="remembering", edit_mode="sequential"), ["bizsre_reliability"], limit=4)
    assert fake_methods.RememberingPrefixEdit.sizes == [1, 2, 3, 4]


def test_apply_many_default_restores_in_reverse_and_chains_prompts(tiny_gpt2):
    lm = EditedHFLM(**_args(tiny_gpt2, method="stacking"))
    requests = [EditRequest(prompt=f"q{i}", target=f"a{i}", subject="s", lang="en", case_key=f"f:en:{i}") for i in range(3)]
    before = model_checksum(lm.model)
    handle = lm.editor.apply_many(requests)
    assert fake_methods.StackingWeightEdit.in_force == ["f:en:0", "f:en:1", "f:en:2"]
    assert model_checksum(lm.model) != before
    handle.restore()
    assert model_checksum(lm.model) == before
    assert fake_methods.StackingWeightEdit.log == [("apply_many", ["f:en:0", "f:en:1", "f:en:2"])] + [
        ("restore", key) for key in ["f:en:2", "f:en:1", "f:en:0"]
    ]


def test_edit_stack_rewrites_in_order_with_the_last_prefix_first():
    from bizsre_tasks.editing.base import EditStack
    from bizsre_tasks.editing.ike import InContextEdit

    stack = EditStack([InContextEdit("A\n"), InContextEdit("B\n")])
    assert stack.rewrite_prompt("Q") == "B\nA\nQ"
    assert stack.shared_prefix + "Q" == stack.rewrite_prompt("Q")
    assert EditStack([InContextEdit("A\n"), EditStack([])]).shared_prefix is None  # one edit without a prefix


def _store_files(folder):
    return sorted(folder.glob("answers-*.jsonl"))


def test_sequential_resume(tiny_gpt2, tmp_path):
    store = tmp_path / "store"
    tasks = ["bizsre_reliability", "bizsre_locality_en"]
    crashing = tmp_path / "crash.yaml"
    crashing.write_text(yaml.safe_dump({"crash_on_case": 2}))
    args = _args(tiny_gpt2, method="stacking", edit_mode="sequential", answer_store=str(store))
    with pytest.raises(RuntimeError, match="injected crash"):
        run_harness({**args, "hparams": str(crashing)}, tasks, limit=4)  # killed mid-sequence
    uninterrupted = run_harness(_args(tiny_gpt2, method="stacking", edit_mode="sequential"), tasks, limit=4)
    resumed = run_harness(args, tasks, limit=4)
    for task in tasks:
        assert _answers(resumed, task) == _answers(uninterrupted, task)
    # A complete store answers again without editing, immediate answers included.
    fake_methods.CountingWeightEdit.applied = []
    again = run_harness(args, tasks, limit=4)
    assert fake_methods.CountingWeightEdit.applied == []
    assert again["results"]["bizsre_reliability"] == resumed["results"]["bizsre_reliability"]
    # A store holding part of the sequence (killed while writing it) is refused, naming the store.
    (path,) = _store_files(store)
    path.write_text(path.read_text().splitlines(keepends=True)[0])
    with pytest.raises(ConfigurationError, match=rf"answer store {path}.*cannot be resumed"):
        run_harness(args, tasks, limit=4)


def test_sequential_store_is_not_shared_with_single_or_another_sequence(tiny_gpt2, tmp_path):
    store = tmp_path / "store"
    run_harness(_args(tiny_gpt2, method="counting", answer_store=str(store)), ["bizsre_reliability"], limit=3)
    run_harness(_args(tiny_gpt2, method="counting", answer_store=str(store), edit_mode="sequential"), ["bizsre_reliability"], limit=3)
    run_harness(_args(tiny_gpt2, method="counting", answer_store=str(store), edit_mode="sequential"), ["bizsre_reliability"], limit=2)
    assert len(_store_files(store)) == 3
    entries = [json.loads(line) for line in _store_files(store)[0].read_text().splitlines()]
    assert entries


def test_data_parallel_sequential_is_refused(tiny_gpt2, monkeypatch):
    def two_processes(self):
        self._world_size = 2

    monkeypatch.setattr(EditedHFLM, "_adopt_cpu_processes", two_processes)
    with pytest.raises(ConfigurationError, match=r"edit_mode=sequential cannot run data parallel \(world size 2\)"):
        EditedHFLM(**_args(tiny_gpt2, method="counting", edit_mode="sequential"))
    assert EditedHFLM(**_args(tiny_gpt2, method="counting", edit_mode="batch")).world_size == 2


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"edit_mode": "random"}, "edit_mode must be one of single, sequential, batch, got 'random'"),
        ({"edit_mode": "batch", "edits_per_batch": 0}, "edits_per_batch must be a positive integer, got 0"),
        ({"edit_mode": "batch", "edits_per_batch": "many"}, "edits_per_batch must be a positive integer"),
        ({"edit_mode": "batch", "edits_per_batch": 2.5}, "edits_per_batch must be a positive integer"),
    ],
)
def test_bad_edit_mode_values_fail_before_loading(tmp_path, extra, message):
    with pytest.raises(ConfigurationError, match=message):
        EditedHFLM(pretrained=str(tmp_path / "never-loaded"), method="none", **extra)


def _checkpoint_args(tiny_gpt2, path, points="2/4"):
    return _args(tiny_gpt2, method="counting", edit_mode="sequential", sequence_checkpoints=points, checkpoint_answers=str(path))


def _post_edit_answers(results, task):
    """The answers given under the edits: a locality doc's second answer (its first is the unedited model's)."""
    return [s["resps"][0][-1] if task.startswith("bizsre_locality") else s["resps"][0][0] for s in results["samples"][task]]


def test_checkpoint_answers_equal_a_shorter_sequential_run(tiny_gpt2, tmp_path):
    from bizsre_tasks.wrapper.sequence_checkpoints import read_checkpoint_answers

    tasks = ["bizsre_reliability", "bizsre_generality_zh", "bizsre_locality_en"]
    path = tmp_path / "checkpoints.jsonl"
    run_harness(_checkpoint_args(tiny_gpt2, path, "2/4/6"), tasks, limit=6)
    points = read_checkpoint_answers(path)
    assert sorted(points) == [2, 4]  # 6 is the run's own end: not written twice
    for k in (2, 4):
        shorter = run_harness(_args(tiny_gpt2, method="counting", edit_mode="sequential"), tasks, limit=k)
        for task in tasks:
            expected = _post_edit_answers(shorter, task)
            assert [points[k][(task, doc_id)] for doc_id in range(k)] == expected, (k, task)
    # The counting method's noise grows with each edit, so the points differ from each other.
    assert any(points[2][key] != points[4][key] for key in points[2])


def test_checkpoint_options_are_checked(tiny_gpt2, tmp_path):
    path = str(tmp_path / "c.jsonl")
    with pytest.raises(ConfigurationError, match="need edit_mode=sequential"):
        EditedHFLM(**_args(tiny_gpt2, method="counting", sequence_checkpoints="1/2", checkpoint_answers=path))
    with pytest.raises(ConfigurationError, match="needs checkpoint_answers"):
        EditedHFLM(**_args(tiny_gpt2, method="counting", edit_mode="sequential", sequence_checkpoints="1/2"))
    with pytest.raises(ConfigurationError, match="needs sequence_checkpoints"):
        EditedHFLM(**_args(tiny_gpt2, method="counting", edit_mode="sequential", checkpoint_answers=path))
    with pytest.raises(ConfigurationError, match="positive integers"):
        EditedHFLM(**_args(tiny_gpt2, method="counting", edit_mode="sequential", sequence_checkpoints="1/x", checkpoint_answers=path))


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_batch_mode_through_lm_eval_uses_the_joint_update(tiny_gemma, tmp_path, monkeypatch, method):
    """The real MEMIT/AlphaEdit `apply_many` under lm_eval: two updates of two edits each, model restored bit for bit."""
    from bizsre_tasks.editing.memit import Memit

    calls = []
    original = Memit.apply_many

    def spy(self, requests):
        calls.append(len(requests))
        return original(self, requests)

    monkeypatch.setattr(Memit, "apply_many", spy)
    monkeypatch.setenv("BIZSRE_CACHE_DIR", str(tmp_path / "cache"))
    hparams = tmp_path / "hparams.yaml"
    hparams.write_text(yaml.safe_dump({"layers": [1, 2]}))
    results = run_harness(_args(tiny_gemma, method=method, hparams=str(hparams), edit_mode="batch", edits_per_batch=2,
                                verify_restore=True), ["bizsre_reliability", "bizsre_generality_zh"], limit=4)
    assert calls == [2, 2]
    assert 0.0 <= metric(results, "bizsre_reliability") <= 1.0
