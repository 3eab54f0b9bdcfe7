"""MEND: training writes a loadable checkpoint, resumes exactly, rejects foreign checkpoints, restores bit for bit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from bizsre_tasks.editing.base import EditingContext, EditRequest
from bizsre_tasks.editing.layout import ModelLayout
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.training import mend_training
from tests.tiny_models import SAMPLE, build_tiny_model

FIELDS = ("subject", "src", "rephrase", "alt", "loc", "loc_ans")


@pytest.fixture(scope="module")
def train_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mend-data")
    cases = json.loads(SAMPLE.read_text(encoding="utf-8"))
    flat = folder / "train_en.json"
    flat.write_text(json.dumps([{key: case["en"][key] for key in FIELDS} for case in cases], ensure_ascii=False), encoding="utf-8")
    zh = folder / "train_qa_zh.tsv"
    zh.write_text("".join(f"{case['zh']['src']}\t{case['zh']['alt']}\n" for case in cases), encoding="utf-8")
    en = folder / "train_qa_en.tsv"
    en.write_text("".join(f"{case['en']['src']}\t{case['en']['alt']}\n" for case in cases), encoding="utf-8")
    return {"flat": flat, "zh": zh, "en_aligned": en}


def _args(model: Path, train_file: Path, out: Path, **overrides):
    argv = ["--pretrained", str(model), "--train-file", str(train_file), "--out", str(out), "--train-size", "8",
            "--steps", "6", "--batch-size", "2", "--save-every", "2", "--train-vocab", "64", "--rank", "8", "--quiet",
            "--init-lr", "1e-2", "--lr", "1e-2"]
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return mend_training.build_parser().parse_args(argv)


@pytest.fixture(scope="module")
def gemma_checkpoint(tiny_gemma, train_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mend-ckpt") / "en"
    return mend_training.train(_args(tiny_gemma, train_files["flat"], out))


def _load_model(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(folder)


def _method(folder: Path, checkpoint: Path | None, edit_lang: str = "en", hparams: dict | None = None):
    from bizsre_tasks.editing.registry import build_method

    model, tokenizer = _load_model(folder)
    context = EditingContext(model=model, tokenizer=tokenizer, layout=ModelLayout.for_model(model), device=torch.device("cpu"),
                             model_name=str(folder), edit_lang=edit_lang, checkpoint=str(checkpoint) if checkpoint else None)
    return build_method("mend", context, hparams or {})


def test_training_writes_a_loadable_checkpoint(gemma_checkpoint, tiny_gemma):
    info = json.loads((gemma_checkpoint / "bizsre_checkpoint.json").read_text())
    assert info["method"] == "mend" and info["edit_lang"] == "en"
    assert info["config"]["mend"]["layers"] == [1, 2, 3]  # the last 3 of the tiny model's 4 layers
    assert info["train_data"][0]["fingerprint"] and info["base_model"]["fingerprint"]
    assert info["config"]["training"]["steps"] == 6
    assert (gemma_checkpoint / "weights.safetensors").is_file()
    assert not (gemma_checkpoint / "_training").exists()  # removed once finished
    method = _method(tiny_gemma, gemma_checkpoint)
    method.ensure_prepared()
    assert method.editor.config.layers == (1, 2, 3)


def test_resume_after_interruption_equals_an_uninterrupted_run(tiny_gemma, train_files, tmp_path):
    whole = mend_training.train(_args(tiny_gemma, train_files["flat"], tmp_path / "whole"))
    partial = tmp_path / "partial"
    mend_training.train(_args(tiny_gemma, train_files["flat"], partial, stop_after=3))
    assert not (partial / "bizsre_checkpoint.json").exists()
    assert (partial / "_training" / "train_state.pt").is_file()
    state = torch.load(partial / "_training" / "train_state.pt", weights_only=False)
    assert state["step"] == 2  # the last save before the "kill"
    with pytest.raises(ConfigurationError, match="not a finished bizsre checkpoint"):
        _method(tiny_gemma, partial).ensure_prepared()
    with pytest.raises(ConfigurationError, match="other settings"):
        mend_training.train(_args(tiny_gemma, train_files["flat"], partial, seed=7))
    mend_training.train(_args(tiny_gemma, train_files["flat"], partial))
    assert (whole / "weights.safetensors").read_bytes() == (partial / "weights.safetensors").read_bytes()


def test_mismatched_checkpoints_are_rejected(gemma_checkpoint, tiny_gemma, tmp_path):
    with pytest.raises(ConfigurationError, match="trained for edit language 'en'"):
        _method(tiny_gemma, gemma_checkpoint, edit_lang="zh")
    other_weights = build_tiny_model(tmp_path / "other-gemma", "gemma3_text", seed=1)
    with pytest.raises(ConfigurationError, match="trained for base model"):
        _method(other_weights, gemma_checkpoint)
    other_family = build_tiny_model(tmp_path / "llama", "llama")
    with pytest.raises(ConfigurationError, match="trained for base model"):
        _method(other_family, gemma_checkpoint)
    with pytest.raises(ConfigurationError, match="needs a trained MEND checkpoint"):
        _method(tiny_gemma, None)
    with pytest.raises(ConfigurationError, match="does not exist"):
        _method(tiny_gemma, tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bizsre_checkpoint.json").write_text(json.dumps({"format_version": 1, "method": "serac", "edit_lang": "en",
                                                               "base_model": {"name": "x", "fingerprint": "0"}}))
    with pytest.raises(ConfigurationError, match="is a 'serac' checkpoint, not a 'mend' one"):
        _method(tiny_gemma, broken)


def test_checkpoint_from_hparams_key(gemma_checkpoint, tiny_gemma):
    method = _method(tiny_gemma, None, hparams={"checkpoint": str(gemma_checkpoint)})
    assert method.checkpoint_info.edit_lang == "en"


def _state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_edit_changes_the_answer_and_restores_bitwise(gemma_checkpoint, tiny_gemma):
    from bizsre_tasks.editing.common import build_batch, target_nll

    method = _method(tiny_gemma, gemma_checkpoint, hparams={"max_update_ratio": 1e6})
    method.ensure_prepared()
    model = method.model
    request = EditRequest(prompt="Question: When was the IAAF Combined Events Challenge founded?\nAnswer:", target="2006",
                          subject="IAAF Combined Events Challenge", lang="en")
    batch = build_batch(method.tokenizer, [request.prompt], [request.target_text])
    before = _state(model)
    with torch.no_grad():
        nll_before = target_nll(model, batch).item()
    applied = method.apply(request)
    with torch.no_grad():
        nll_after = target_nll(model, batch).item()
    changed = [name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])]
    assert changed and all("mlp.down_proj" in name for name in changed)
    assert nll_after < nll_before
    applied.restore()
    after = _state(model)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_exploding_update_fails_cleanly(gemma_checkpoint, tiny_gemma):
    from bizsre_tasks.editing.base import EditFailedError

    method = _method(tiny_gemma, gemma_checkpoint, hparams={"max_update_ratio": 1e-12})
    method.ensure_prepared()
    before = _state(method.model)
    request = EditRequest(prompt="Question: Who wrote it?\nAnswer:", target="Ana", subject="it", lang="en")
    with pytest.raises(EditFailedError, match="exploding"):
        method.apply(request)
    assert all(torch.equal(before[name], tensor) for name, tensor in method.model.state_dict().items())


def test_chinese_pairs_with_aligned_english(tiny_gemma, train_files, tmp_path):
    from bizsre_tasks.tasks.data_loading import load_train_records

    records = load_train_records(train_files["zh"])
    aligned = load_train_records(train_files["en_aligned"])
    examples = mend_training.build_examples(records[:4], "zh", aligned[:4], "en")
    kinds = [[kind for kind, _, _ in example.rows] for example in examples]
    assert kinds == [[mend_training.EDIT, mend_training.GEN, mend_training.LOC]] * 4
    assert examples[0].rows[0][1].startswith("问题：") and examples[0].rows[0][2] == records[0].alt  # no space before zh answers
    assert examples[0].rows[1][1].startswith("Question: ") and examples[0].rows[1][2] == " " + aligned[0].alt
    assert examples[1].rows[2][1].startswith("Question: ")  # odd records take locality from the aligned language
    assert "问题：" in examples[0].rows[2][1] and examples[0].rows[2][1] != examples[0].rows[0][1]
    out = mend_training.train(_args(tiny_gemma, train_files["zh"], tmp_path / "zh", edit_lang="zh", aligned_file=train_files["en_aligned"]))
    info = json.loads((out / "bizsre_checkpoint.json").read_text())
    assert info["edit_lang"] == "zh" and info["train_data"][1]["role"] == "aligned" and info["train_data"][1]["lang"] == "en"
    _method(tiny_gemma, out, edit_lang="zh").ensure_prepared()
    with pytest.raises(ConfigurationError, match="has 3 records"):
        short = tmp_path / "short.tsv"
        short.write_text("a\tb\nc\td\ne\tf\n", encoding="utf-8")
        mend_training.train(_args(tiny_gemma, train_files["zh"], tmp_path / "zh2", edit_lang="zh", aligned_file=short))


def test_gpt2_conv1d_train_and_edit(tiny_gpt2, train_files, tmp_path):
    out = mend_training.train(_args(tiny_gpt2, train_files["flat"], tmp_path / "gpt2", steps=2))
    method = _method(tiny_gpt2, out, hparams={"max_update_ratio": 1e6})
    before = _state(method.model)
    applied = method.apply(EditRequest(prompt="Question: Who wrote it?\nAnswer:", target="Ana", subject="it", lang="en"))
    assert any(not torch.equal(before[n], t) for n, t in method.model.state_dict().items())
    applied.restore()
    assert all(torch.equal(before[n], t) for n, t in method.model.state_dict().items())


def test_missing_training_file_is_a_clear_error(tiny_gemma, tmp_path, monkeypatch):
    monkeypatch.delenv("BIZSRE_TRAIN_FILE", raising=False)
    args = mend_training.build_parser().parse_args(["--pretrained", str(tiny_gemma), "--out", str(tmp_path / "x")])
    with pytest.raises(ConfigurationError, match="needs a training file"):
        mend_training.train(args)


def test_harness_run_restores_the_model(gemma_checkpoint, tiny_gemma):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import bizsre_tasks.editing_wrapper  # noqa: F401  (registers edited-hf)
    from bizsre_tasks.tasks.task_generation import BUNDLED_DIR

    model_args = {"pretrained": str(tiny_gemma), "method": "mend", "checkpoint": str(gemma_checkpoint), "edit_lang": "en",
                  "protocol": "teacher_forced", "verify_restore": True}
    results = lm_eval.simple_evaluate(model="edited-hf", model_args=model_args, tasks=["bizsre_reliability"], limit=2,
                                      task_manager=TaskManager(include_path=str(BUNDLED_DIR), metadata=model_args))
    assert "bizsre_reliability" in results["results"]


def _real_checkpoint() -> Path | None:
    from bizsre_tasks.default_model import cache_root

    chosen = os.environ.get("BIZSRE_MEND_CHECKPOINT")
    folder = Path(chosen) if chosen else cache_root() / "checkpoints" / "mend-en-1000"
    return folder if (folder / "bizsre_checkpoint.json").is_file() else None


@pytest.mark.slow
def test_real_model_edit_installs_the_target():
    """On the default model with a trained English checkpoint ($BIZSRE_MEND_CHECKPOINT, else
    <cache>/checkpoints/mend-en-1000); skipped when none has been trained."""
    checkpoint = _real_checkpoint()
    if checkpoint is None:
        pytest.skip("no trained MEND checkpoint (set BIZSRE_MEND_CHECKPOINT or train one with scripts/train_mend.py)")
    from bizsre_tasks.default_model import ensure_default_model
    from bizsre_tasks.editing.common import build_batch, logits_at

    method = _method(ensure_default_model(), checkpoint)
    request = EditRequest(prompt="Question: When was the inception of IAAF Combined Events Challenge?\nAnswer:", target="2006",
                          subject="IAAF Combined Events Challenge", lang="en")
    batch = build_batch(method.tokenizer, [request.prompt], [request.target_text])
    before = _state(method.model)
    applied = method.apply(request)
    with torch.no_grad():
        predicted = logits_at(method.model, batch.input_ids, batch.attention_mask, batch.positions).argmax(-1)
    applied.restore()
    assert torch.equal(predicted[batch.target_mask], batch.target_ids[batch.target_mask])
    assert all(torch.equal(before[n], t) for n, t in method.model.state_dict().items())


def test_mend_options_leave_shared_options_to_the_caller():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=7)
    mend_training.configure_mend_arguments(parser)
    args = parser.parse_args(["--rank", "16"])
    assert args.steps == 7 and args.rank == 16 and args.train_vocab == 1024


def test_padded_training_factors_stay_on_the_editors_device():
    # The editor's factors live on the GPU when training there; padding them must not move them to the CPU
    # (found by scripts/device_check.py on an H200). The meta device stands in for a second device here.
    from bizsre_tasks.training.mend_losses import _pad

    padded = _pad([torch.zeros(2, 3, device="meta"), torch.zeros(4, 3, device="meta")])
    assert padded.device.type == "meta" and padded.shape == (2, 4, 3)


def test_aligned_files_stay_aligned_when_they_leave_out_different_lines(tmp_path):
    # The released Chinese TSV has 35 questions without an answer; the English file has all 10,000. Line i
    # must still meet record i: an unanswered aligned line only drops that record's cross-lingual row.
    from bizsre_tasks.tasks import data_loading
    from bizsre_tasks.training.mend_data import GEN, build_examples

    main = tmp_path / "en.tsv"
    main.write_text("Q0?\tA0\nQ1?\tA1\nQ2?\t\nQ3?\tA3\n", encoding="utf-8")
    other = tmp_path / "zh.tsv"
    other.write_text("问0？\t答0\n问1？\t\n问2？\t答2\n问3？\t答3\n", encoding="utf-8")
    indexed, aligned = data_loading.load_indexed_train_records(main), data_loading.load_indexed_train_records(other)
    assert len(indexed) == len(aligned) == 4 and indexed[2] is None and aligned[1] is None
    assert [r.src for r in data_loading.load_train_records(main)] == ["Q0?", "Q1?", "Q3?"]
    kept = [i for i, r in enumerate(indexed) if r is not None]
    examples = build_examples([indexed[i] for i in kept], "en", [aligned[i] for i in kept], "zh")
    cross = [[prompt for kind, prompt, _ in example.rows if kind == GEN and "问" in prompt] for example in examples]
    assert [len(rows) for rows in cross] == [1, 0, 1] and "问3" in cross[2][0]  # record 3 meets line 3, not line 2
