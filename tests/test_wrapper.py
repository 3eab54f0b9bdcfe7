"""edited-hf: one edit per case, exact restoration, locality before/after, cache safety, clear errors."""

from __future__ import annotations

import pytest
import torch
import yaml

from bizsre_tasks.editing import registry
from bizsre_tasks.errors import ConfigurationError
from tests import fake_methods
from tests.harness import metric, run_harness


@pytest.fixture(autouse=True)
def fake_method_registry(monkeypatch):
    monkeypatch.setitem(registry.METHODS, "counting", "tests.fake_methods:CountingWeightEdit")
    monkeypatch.setitem(registry.METHODS, "leaky", "tests.fake_methods:LeakyWeightEdit")
    monkeypatch.setitem(registry.METHODS, "prefix", "tests.fake_methods:PromptPrefixEdit")
    fake_methods.CountingWeightEdit.applied = []
    fake_methods.CountingWeightEdit.events = []
    fake_methods.PromptPrefixEdit.applied = []


def _args(model_dir, **extra):
    return {"pretrained": str(model_dir), "device": "cpu", **extra}


@pytest.mark.parametrize("tasks", [["bizsre"], ["bizsre_reliability"], ["bizsre_locality_zh", "bizsre_generality_en"]])
def test_one_edit_per_case_whatever_the_tasks(tiny_gpt2, tasks):
    results = run_harness(_args(tiny_gpt2, method="counting", verify_restore=True), tasks, limit=3)
    applied = fake_methods.CountingWeightEdit.applied
    assert len(applied) == 3 and len(set(applied)) == 3
    assert results["results"]


@pytest.mark.parametrize("edit_batch", [1, 2])
def test_weight_methods_get_each_chunk_to_precompute_before_its_edits(tiny_gpt2, edit_batch):
    run_harness(_args(tiny_gpt2, method="counting", verify_restore=True, edit_batch=edit_batch), ["bizsre"], limit=3)
    events = fake_methods.CountingWeightEdit.events
    keys = [key for kind, key in events if kind == "apply"]
    assert len(keys) == 3 and len(set(keys)) == 3
    chunks = [keys[i : i + edit_batch] for i in range(0, 3, edit_batch)]
    expected = [event for chunk in chunks for event in [("precompute", chunk)] + [("apply", key) for key in chunk]]
    assert events == expected


def test_restoration_is_verified(tiny_gpt2):
    # the leaky method adds noise to layer 0's MLP output weight and never takes it back
    with pytest.raises(RuntimeError, match=r"did not restore the model exactly after case .*: transformer\.h\.0\.mlp\.c_proj\.weight differs"):
        run_harness(_args(tiny_gpt2, method="leaky", verify_restore=True), ["bizsre_reliability"], limit=2)


def test_locality_compares_edited_with_unedited_answers(tiny_gemma):
    results = run_harness(_args(tiny_gemma, method="counting", hparams=None), ["bizsre_locality_en"], limit=3)
    for sample in results["samples"]["bizsre_locality_en"]:
        assert len(sample["resps"][0]) == 2  # pre-edit then post-edit answer
    unedited = run_harness(_args(tiny_gemma, method="none"), ["bizsre_locality_en"], limit=3)
    pre_edit = [s["resps"][0][0] for s in results["samples"]["bizsre_locality_en"]]
    assert pre_edit == [s["resps"][0][0] for s in unedited["samples"]["bizsre_locality_en"]]


def test_weight_free_methods_batch_across_cases(tiny_gpt2):
    results = run_harness(_args(tiny_gpt2, method="prefix"), ["bizsre"], limit=3)
    assert len(fake_methods.PromptPrefixEdit.applied) == 3
    assert metric(results, "bizsre_reliability") >= 0.0


def test_weight_free_chunk_answers_pre_and_post_edit_questions_in_one_call(tiny_gpt2, monkeypatch):
    from bizsre_tasks import editing_wrapper

    calls = []
    real = editing_wrapper.teacher_forced_answers
    monkeypatch.setattr(editing_wrapper, "teacher_forced_answers", lambda m, t, prompts, *rest: calls.append(len(prompts)) or real(m, t, prompts, *rest))
    monkeypatch.setattr(editing_wrapper, "MIN_SLICE_BATCHES", 1000)  # no progress slices: one call per chunk
    args = _args(tiny_gpt2, protocol="teacher_forced", cross_case_batch=2)
    edited = run_harness({**args, "method": "prefix"}, ["bizsre"], limit=3)
    assert len(calls) == 2  # 3 cases in chunks of 2: one call per chunk, pre- and post-edit questions together
    assert sum(calls) == sum(len(s["resps"][0]) for samples in edited["samples"].values() for s in samples)
    unedited = run_harness({**args, "method": "none"}, ["bizsre_locality_en", "bizsre_locality_zh"], limit=3)
    for task in ("bizsre_locality_en", "bizsre_locality_zh"):
        # The pre-edit answer is the unedited model's on the question as asked; the post-edit one sees the new fact.
        assert [s["resps"][0][0] for s in edited["samples"][task]] == [s["resps"][0][0] for s in unedited["samples"][task]]


def test_failed_edit_is_restored_and_recorded(tiny_gpt2, tmp_path):
    hparams = tmp_path / "h.yaml"
    hparams.write_text(yaml.safe_dump({"fail_on_cases": [1], "scale": 0.0}))
    results = run_harness(_args(tiny_gpt2, method="counting", hparams=str(hparams), verify_restore=True), ["bizsre_reliability"], limit=3)
    plain = run_harness(_args(tiny_gpt2, method="none"), ["bizsre_reliability"], limit=3)
    answers = [s["resps"] for s in results["samples"]["bizsre_reliability"]]
    assert answers == [s["resps"] for s in plain["samples"]["bizsre_reliability"]]  # scale 0: identical model


def test_teacher_forced_protocol_runs(tiny_gpt2):
    results = run_harness(_args(tiny_gpt2, method="counting", protocol="teacher_forced"), ["bizsre_reliability", "bizsre_locality_zh"], limit=2)
    assert 0.0 <= metric(results, "bizsre_reliability") <= 1.0


def test_cache_is_refused_for_editing_methods(tiny_gpt2, tmp_path):
    with pytest.raises(ConfigurationError, match="--use_cache is not supported"):
        run_harness(_args(tiny_gpt2, method="counting"), ["bizsre_reliability"], limit=1, use_cache=str(tmp_path / "cache"))


def test_unknown_method_fails_before_loading(tmp_path):
    from bizsre_tasks.editing_wrapper import EditedHFLM

    with pytest.raises(ConfigurationError, match="unknown method 'bogus'"):
        EditedHFLM(pretrained=str(tmp_path / "never-loaded"), method="bogus")


def test_unknown_protocol_and_language(tmp_path):
    from bizsre_tasks.editing_wrapper import EditedHFLM

    with pytest.raises(ConfigurationError, match="unknown protocol"):
        EditedHFLM(pretrained=str(tmp_path), method="none", protocol="sampled")
    with pytest.raises(ConfigurationError, match="edit_lang"):
        EditedHFLM(pretrained=str(tmp_path), method="none", edit_lang="English!")
    for name, value in [("edit_batch", 0), ("edit_batch", "four"), ("cross_case_batch", -2), ("edit_batch", 2.5)]:
        with pytest.raises(ConfigurationError, match=f"{name} must be a positive integer"):
            EditedHFLM(pretrained=str(tmp_path), method="none", **{name: value})


def test_bad_hparams(tiny_gpt2, tmp_path):
    from bizsre_tasks.editing_wrapper import EditedHFLM

    with pytest.raises(ConfigurationError, match="not found"):
        EditedHFLM(pretrained=str(tiny_gpt2), method="counting", hparams=str(tmp_path / "absent.yaml"))
    bad = tmp_path / "bad.yaml"
    for content, message in [
        ({"layr": 1}, "unknown key 'layr'"),
        ({"layer": "one"}, "expects int"),
        ({"layer": 99}, "out of range"),
        ({"layout": {"bogus_part": "x"}}, "unknown part 'bogus_part'"),
    ]:
        bad.write_text(yaml.safe_dump(content))
        with pytest.raises(ConfigurationError, match=message):
            EditedHFLM(pretrained=str(tiny_gpt2), method="counting", hparams=str(bad), device="cpu")
    bad.write_text("layer: [unclosed")
    with pytest.raises(ConfigurationError, match="invalid YAML"):
        EditedHFLM(pretrained=str(tiny_gpt2), method="counting", hparams=str(bad))


def test_unknown_architecture_names_the_missing_template(tiny_gpt2, monkeypatch):
    from bizsre_tasks.editing import layout
    from bizsre_tasks.editing_wrapper import EditedHFLM

    monkeypatch.delitem(layout.LAYOUT_TEMPLATES, "gpt2")
    with pytest.raises(ConfigurationError, match="no module template for 'layers'.*layout:"):
        EditedHFLM(pretrained=str(tiny_gpt2), method="counting", device="cpu")


@pytest.mark.parametrize("family_fixture", ["tiny_gemma", "tiny_llama", "tiny_gpt2"])
def test_layout_table_covers_families(family_fixture, request):
    from transformers import AutoModelForCausalLM

    from bizsre_tasks.editing.layout import ModelLayout

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(family_fixture))
    layout = ModelLayout.for_model(model)
    assert layout.num_layers == 4
    weight = layout.weight_out_in("mlp_out", 1)
    assert weight.shape[0] == model.config.hidden_size  # (out, in) whatever the storage
    for part in ("mlp_in", "embed", "final_norm", "lm_head"):
        layout.module(part, 0 if "{layer}" in layout.templates[part] else None)


def test_teacher_forced_answers_match_manual_argmax(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bizsre_tasks.wrapper.teacher_forcing import teacher_forced_answers

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    prompt, target = "Question: Where is Zorb?\nAnswer:", " Mars"
    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + target_ids])).logits[0]
    expected = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(target_ids)].argmax(-1).tolist()
    got = teacher_forced_answers(model, tokenizer, [prompt, "问题：短？\n答案："], [target, "火星"], batch_size=2)
    assert got[0] == tokenizer.decode(expected, skip_special_tokens=True).strip()


def test_answers_come_in_slices_that_move_the_progress_bar(tiny_gpt2, monkeypatch):
    """A chunk of many cases is answered in slices (each updates the bar), with the same answers."""
    from bizsre_tasks import editing_wrapper

    args = _args(tiny_gpt2, protocol="teacher_forced", method="prefix", cross_case_batch=8, batch_size=1)
    monkeypatch.setattr(editing_wrapper, "MIN_SLICE_BATCHES", 1000)
    whole = run_harness(args, ["bizsre"], limit=4)
    monkeypatch.setattr(editing_wrapper, "MIN_SLICE_BATCHES", 2)
    updates = []
    real_answer = editing_wrapper.EditedHFLM._answer
    monkeypatch.setattr(editing_wrapper, "PROGRESS_SECONDS", 0.0)  # every slice is the smallest: 2 batches of 1
    monkeypatch.setattr(editing_wrapper.EditedHFLM, "_answer", lambda self, r, i, e: updates.append(len(i)) or real_answer(self, r, i, e))
    sliced = run_harness(args, ["bizsre"], limit=4)
    assert updates and max(updates) == 2 and sum(updates) == sum(len(s["resps"][0]) for v in sliced["samples"].values() for s in v)
    for task, samples in whole["samples"].items():
        assert [s["filtered_resps"] for s in samples] == [s["filtered_resps"] for s in sliced["samples"][task]]
