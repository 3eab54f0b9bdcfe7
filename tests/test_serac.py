"""SERAC: scope-classifier training (checkpoint, resume, determinism), checkpoint checks, routing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from bizsre_tasks.commands import train as train_command
from bizsre_tasks.editing.base import EditingContext, EditRequest
from bizsre_tasks.editing.checkpoints import MANIFEST, STATE_DIR, WEIGHTS, read_manifest
from bizsre_tasks.editing.layout import ModelLayout
from bizsre_tasks.editing.registry import build_method
from bizsre_tasks.editing.scope_classifier import question_from_prompt
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.tasks import prompts
from bizsre_tasks.tasks.data_loading import SAMPLE_TEST_FILE


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BIZSRE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BIZSRE_TRAIN_FILE", raising=False)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> tuple[Path, Path]:
    """An English flat file and its line-aligned Chinese TSV, from the bundled sample."""
    folder = tmp_path_factory.mktemp("serac-data")
    cases = json.loads(SAMPLE_TEST_FILE.read_text(encoding="utf-8"))
    flat = [{k: c["en"][k] for k in ("subject", "src", "rephrase", "alt", "loc", "loc_ans")} for c in cases]
    (folder / "train_en.json").write_text(json.dumps(flat, ensure_ascii=False), encoding="utf-8")
    (folder / "train_zh.tsv").write_text("".join(f"{c['zh']['src']}\t{c['zh']['alt']}\n" for c in cases), encoding="utf-8")
    return folder / "train_en.json", folder / "train_zh.tsv"


def train_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_command.configure("train", parser)
    return parser.parse_args(["serac", *argv])


def train(model_dir, out, data_files, *extra: str, lang: str = "en") -> Path:
    en, zh = data_files
    main, aligned = (en, zh) if lang == "en" else (zh, en)
    args = train_args(
        "--pretrained", str(model_dir), "--edit-lang", lang, "--train-file", str(main), "--aligned-file", str(aligned),
        "--train-size", "14", "--val-size", "6", "--steps", "6", "--batch-size", "8", "--save-every", "2",
        "--proj-dim", "16", "--out", str(out), "--quiet", "--device", "cpu", *extra,
    )
    assert train_command.run(args) == 0
    return Path(out)


def load_model(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(model_dir)


def make_serac(model_dir, checkpoint_dir, edit_lang="en", **hparams):
    model, tokenizer = load_model(model_dir)
    context = EditingContext(
        model=model, tokenizer=tokenizer, layout=ModelLayout.for_model(model), device=torch.device("cpu"),
        model_name=str(model_dir), edit_lang=edit_lang, checkpoint=str(checkpoint_dir) if checkpoint_dir else None,
    )
    return build_method("serac", context, hparams)


def edit_request(lang="en") -> EditRequest:
    case = json.loads(SAMPLE_TEST_FILE.read_text(encoding="utf-8"))[0][lang]
    template = prompts.prompt_template(lang)
    return EditRequest(
        prompt=prompts.build_prompt(case["src"], lang), target="Zorro", subject=case["subject"], lang=lang,
        target_separator=prompts.answer_separator(template), question=case["src"], rephrase=case["rephrase"],
    )


@pytest.fixture(scope="module")
def checkpoint(tiny_gemma, data_files, tmp_path_factory) -> Path:
    return train(tiny_gemma, tmp_path_factory.mktemp("ckpt") / "serac-en", data_files)


def test_training_writes_a_documented_checkpoint(checkpoint):
    manifest = read_manifest(checkpoint)
    assert (checkpoint / WEIGHTS).is_file() and (checkpoint / MANIFEST).is_file()
    assert manifest["method"] == "serac" and manifest["edit_lang"] == "en"
    assert len(manifest["base_model"]["fingerprint"]) == 16
    assert [d["role"] for d in manifest["train_data"]] == ["train", "aligned"]
    assert all(len(d["fingerprint"]) == 16 for d in manifest["train_data"])
    assert -1.0 <= manifest["config"]["threshold"] <= 1.0
    assert manifest["metrics"]["train_groups"] == 14


def test_checkpoint_loads_and_routes(tiny_gemma, checkpoint):
    method = make_serac(tiny_gemma, checkpoint)
    request = edit_request()
    applied = method.apply(request)
    assert method.memory == [request]
    # The edit question itself is always in scope: the counterfactual prompt.
    assert applied.rewrite_prompt(request.prompt) == f"New Fact: {request.question} Zorro\n{request.prompt}"
    applied.restore()
    assert method.memory == []


def test_out_of_scope_prompts_pass_through_unchanged(tiny_gemma, checkpoint):
    method = make_serac(tiny_gemma, checkpoint, threshold=1.0)  # nothing but the edit question is in scope
    applied = method.apply(edit_request())
    for prompt in ("Question: What is the capital of France?\nAnswer:", "问题：法国的首都是哪里？\n答案：", "free text"):
        assert applied.rewrite_prompt(prompt) == prompt
    assert not any(applied.routed.values())


def test_question_is_read_out_of_any_template():
    assert question_from_prompt("Question: Who? \nAnswer:") == "Who?"
    assert question_from_prompt("问题：谁？\n答案：") == "谁？"
    assert question_from_prompt("no template") == "no template"


def test_same_seed_same_checkpoint_and_resume_matches(tiny_gemma, data_files, tmp_path, checkpoint):
    again = train(tiny_gemma, tmp_path / "again", data_files)
    assert (again / WEIGHTS).read_bytes() == (checkpoint / WEIGHTS).read_bytes()

    killed = tmp_path / "killed"
    train(tiny_gemma, killed, data_files, "--stop-after", "3")
    assert read_manifest(killed) is None and (killed / STATE_DIR / "state.pt").is_file()
    with pytest.raises(ConfigurationError, match="not a finished"):
        make_serac(tiny_gemma, killed)
    train(tiny_gemma, killed, data_files)  # resumes from step 2 (last save) and finishes
    assert (killed / WEIGHTS).read_bytes() == (checkpoint / WEIGHTS).read_bytes()

    different = train(tiny_gemma, tmp_path / "seed1", data_files, "--seed", "1")
    assert (different / WEIGHTS).read_bytes() != (checkpoint / WEIGHTS).read_bytes()


def test_other_settings_in_the_same_folder_are_refused(tiny_gemma, data_files, checkpoint):
    with pytest.raises(ConfigurationError, match="other settings"):
        train(tiny_gemma, checkpoint, data_files, "--steps", "7")


def test_mismatched_or_missing_checkpoints_are_configuration_errors(tiny_gemma, tiny_llama, checkpoint, tmp_path):
    with pytest.raises(ConfigurationError, match="edit language 'en'"):
        make_serac(tiny_gemma, checkpoint, edit_lang="zh")
    with pytest.raises(ConfigurationError, match="fingerprint"):
        make_serac(tiny_llama, checkpoint)
    with pytest.raises(ConfigurationError, match="needs a trained checkpoint"):
        make_serac(tiny_gemma, None)
    with pytest.raises(ConfigurationError, match="does not exist"):
        make_serac(tiny_gemma, tmp_path / "nowhere")
    # hparams `checkpoint` works when model_args give none.
    assert make_serac(tiny_gemma, None, checkpoint=str(checkpoint)).checkpoint_info.edit_lang == "en"


def test_chinese_training_needs_and_uses_aligned_positives(tiny_gemma, data_files, tmp_path):
    out = train(tiny_gemma, tmp_path / "serac-zh", data_files, lang="zh")
    assert read_manifest(out)["edit_lang"] == "zh"
    method = make_serac(tiny_gemma, out, edit_lang="zh")
    request = edit_request("zh")
    assert method.apply(request).rewrite_prompt(request.prompt).startswith("新事实：")
    _, zh = data_files
    args = train_args("--pretrained", str(tiny_gemma), "--edit-lang", "zh", "--train-file", str(zh), "--out", str(tmp_path / "x"), "--quiet")
    with pytest.raises(ConfigurationError, match="no positive pairs"):
        train_command.run(args)


@pytest.mark.slow
def test_serac_end_to_end_on_the_default_model(shared_test_file, tmp_path, monkeypatch):
    from tests.harness import metric, run_harness

    en = shared_test_file.parent / "zsre_train_en_10000.json"
    zh = shared_test_file.parent / "train_qa_zh.tsv"
    if not (en.exists() and zh.exists()):
        pytest.skip("shared training files not found")
    monkeypatch.delenv("BIZSRE_CACHE_DIR")
    out = tmp_path / "serac-en"
    args = train_args("--edit-lang", "en", "--train-file", str(en), "--aligned-file", str(zh), "--train-size", "48",
                      "--val-size", "16", "--steps", "60", "--out", str(out), "--quiet")
    assert train_command.run(args) == 0
    model_args = {"method": "serac", "edit_lang": "en", "protocol": "teacher_forced", "test_file": str(shared_test_file),
                  "checkpoint": str(out)}
    results = run_harness(model_args, ["bizsre_reliability", "bizsre_locality_en"], limit=2)
    assert metric(results, "bizsre_reliability") >= 0.5
    assert metric(results, "bizsre_locality_en") >= 0.5


def test_several_edits_route_each_question_to_its_closest_stored_edit(tiny_gemma, checkpoint):
    method = make_serac(tiny_gemma, checkpoint, threshold=1.0)
    cases = json.loads(SAMPLE_TEST_FILE.read_text(encoding="utf-8"))[:3]
    requests = [
        EditRequest(prompt=prompts.build_prompt(case["en"]["src"], "en"), target=f"Zorro{n}", subject=case["en"]["subject"], lang="en",
                    target_separator=" ", question=case["en"]["src"])
        for n, case in enumerate(cases)
    ]
    memory = method.apply_many(requests)
    assert method.memory == requests
    for req in requests:
        assert memory.rewrite_prompt(req.prompt) == f"New Fact: {req.question} {req.target}\n{req.prompt}"
    assert memory.rewrite_prompt("Question: What is the capital of France?\nAnswer:") == "Question: What is the capital of France?\nAnswer:"
    method.classifier.threshold = -1.0  # every stored edit in scope: still only the closest one is used
    for req in requests:
        assert memory.rewrite_prompt(req.prompt) == f"New Fact: {req.question} {req.target}\n{req.prompt}"
    assert memory.rewrite_prompt("Question: What is the capital of France?\nAnswer:").count("New Fact: ") == 1
    memory.restore()
    assert method.memory == []


def test_sequential_lm_eval_run_keeps_every_edit_so_far(tiny_gemma, checkpoint, monkeypatch):
    """edit_mode=sequential through lm_eval with the real SERAC: its memory grows by one edit per case."""
    from bizsre_tasks.editing.serac import Serac
    from tests.harness import run_harness

    sizes = []
    original = Serac.apply_many

    def spy(self, requests):
        sizes.append(len(requests))
        return original(self, requests)

    monkeypatch.setattr(Serac, "apply_many", spy)
    args = {"pretrained": str(tiny_gemma), "device": "cpu", "method": "serac", "checkpoint": str(checkpoint), "edit_mode": "sequential"}
    results = run_harness(args, ["bizsre_reliability", "bizsre_generality_zh"], limit=3)
    assert sizes == [1, 2, 3]
    assert "f1_immediate,none" in results["results"]["bizsre_reliability"]
