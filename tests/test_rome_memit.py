"""ROME and MEMIT: restoration, efficacy on tiny models (incl. post-norm Gemma), key statistics cache,
hparam checks, failure handling, the `bizsre stats` command and (slow) the real model through lm_eval."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch

from bizsre_tasks.editing.base import EditFailedError, EditingContext, EditRequest
from bizsre_tasks.editing.common import build_batch, target_nll
from bizsre_tasks.editing.kv import second_moments
from bizsre_tasks.editing.layout import ModelLayout
from bizsre_tasks.editing.registry import build_method
from bizsre_tasks.editing_wrapper import model_checksum
from bizsre_tasks.errors import ConfigurationError

REQUEST = EditRequest(
    prompt="Question: What company made Volvo B12M?\nAnswer:",
    target="Volkswagen Group",
    subject="Volvo B12M",
    lang="en",
    question="What company made Volvo B12M?",
)
# Random tiny models pass little from a mid-prompt subject to the answer; with the subject last and a
# one-token target the effect of an edit is measurable.
TINY_REQUEST = EditRequest(prompt="Who made Volvo B12M", target="of", subject="Volvo B12M", lang="en")
ZH_REQUEST = EditRequest(
    prompt="问题：哪家公司制造了沃尔沃B12M?\n答案：", target="大众集团", subject="沃尔沃B12M", lang="zh", target_separator=""
)
# Small, quick settings for tiny models; every test names its layers (tiny models have 4).
FAST = {"steps": 20, "n_prefixes": 1, "prefix_length": 3, "weight_decay": 0.0, "mom2_weight": 10.0}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIZSRE_CACHE_DIR", str(tmp_path / "cache"))


def _load(folder, sharpen: bool = True):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.requires_grad_(False)
    if sharpen:
        # A random tiny model's logits barely depend on its hidden states (0.02-scale embeddings);
        # larger output embeddings give the edit something to move.
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(10)
    return model, tokenizer


def _method(name, folder, hparams, sharpen=True):
    model, tokenizer = _load(folder, sharpen)
    context = EditingContext(model=model, tokenizer=tokenizer, layout=ModelLayout.for_model(model), device=torch.device("cpu"),
                             model_name=str(folder))
    fast = {key: value for key, value in FAST.items() if key != "mom2_weight" or name == "memit"}
    return build_method(name, context, {**fast, **hparams}), model, tokenizer


def _nll(model, tokenizer, request=TINY_REQUEST) -> float:
    with torch.no_grad():
        return float(target_nll(model, build_batch(tokenizer, [request.prompt], [request.target_text])))


@pytest.mark.parametrize(
    "name,fixture,hparams",
    [
        ("rome", "tiny_gemma", {"layer": 1}),
        ("rome", "tiny_llama", {"layer": 1}),
        ("rome", "tiny_gpt2", {"layer": 1}),
        ("memit", "tiny_gemma", {"layers": [1, 2]}),
        ("memit", "tiny_llama", {"layers": [0, 1, 2]}),
        ("memit", "tiny_gpt2", {"layers": [1, 2]}),
    ],
)
def test_edit_raises_target_probability_and_restores_bitwise(name, fixture, hparams, request):
    method, model, tokenizer = _method(name, request.getfixturevalue(fixture), hparams)
    before_sum = model_checksum(model)
    before = _nll(model, tokenizer)
    applied = method.apply(TINY_REQUEST)
    after = _nll(model, tokenizer)
    assert model_checksum(model) != before_sum
    assert after < before - 0.1, (before, after, method.last_info)
    applied.restore()
    assert model_checksum(model) == before_sum
    assert _nll(model, tokenizer) == before
    # A realistic request (mid-prompt subject, multi-token target) restores just as exactly.
    method.apply(REQUEST).restore()
    assert model_checksum(model) == before_sum


def test_memit_on_post_norm_gemma_reaches_its_target(tiny_gemma):
    """Gemma's post_feedforward_layernorm rescales what the MLP writes; the mapping through it must
    still land the residual stream on the optimised target."""
    method, model, tokenizer = _method("memit", tiny_gemma, {"layers": [0, 1, 2], "mom2_weight": 1.0})
    assert method.layout.optional_module("post_mlp_norm", 1) is not None
    with torch.no_grad():  # large post-norm gains, as in the real model (up to ~700)
        for layer in range(3):
            method.layout.module("post_mlp_norm", layer).weight.add_(20.0)
    before = _nll(model, tokenizer)
    applied = method.apply(TINY_REQUEST)
    assert method.last_info["remaining_gap"] < 0.3, method.last_info
    assert _nll(model, tokenizer) < before - 0.1
    applied.restore()


def test_chinese_edit_without_separator(tiny_gemma):
    method, model, tokenizer = _method("rome", tiny_gemma, {"layer": 1})
    before = model_checksum(model)
    method.apply(ZH_REQUEST).restore()
    assert model_checksum(model) == before


def test_exploding_update_is_restored_then_reported(tiny_gemma):
    method, model, _ = _method("rome", tiny_gemma, {"layer": 1, "max_update_ratio": 1e-9})
    method.ensure_prepared()
    before = model_checksum(model)
    with pytest.raises(EditFailedError, match="explodes"):
        method.apply(REQUEST)
    assert model_checksum(model) == before
    memit, model, _ = _method("memit", tiny_gemma, {"layers": [1, 2], "max_update_ratio": 1e-9})
    before = model_checksum(model)
    with pytest.raises(EditFailedError):
        memit.apply(REQUEST)
    assert model_checksum(model) == before


def test_nan_loss_is_an_edit_failure(tiny_gemma):
    method, model, _ = _method("rome", tiny_gemma, {"layer": 1})
    method.ensure_prepared()
    with torch.no_grad():
        model.get_output_embeddings().weight[5, 0] = float("nan")
    with pytest.raises(EditFailedError):
        method.apply(REQUEST)


OTHER_REQUEST = EditRequest(prompt="Who founded Acme Motor Works", target="the river", subject="Acme Motor Works", lang="en")
EMPTY_TARGET = EditRequest(prompt="Who made Volvo B12M", target="", subject="Volvo B12M", lang="en", target_separator="")


# MEMIT's spreading (an L-BFGS solve per layer) magnifies float rounding more than ROME's closed form.
@pytest.mark.parametrize("name,hparams,tolerance", [("rome", {"layer": 1}, 1e-5), ("memit", {"layers": [1, 2]}, 1e-3)])
def test_precomputed_deltas_match_one_case_at_a_time(tiny_gemma, name, hparams, tolerance):
    """δ optimised for several cases in one batch (cases of different lengths, converging at different
    steps, so finished cases leave the batch) gives each case the update it gets alone; a case that
    cannot be edited fails on its own."""
    method, model, _ = _method(name, tiny_gemma, {**hparams, "nll_stop": 7.2, "steps": 12})
    requests = [TINY_REQUEST, REQUEST, ZH_REQUEST, OTHER_REQUEST]
    weights = [method.layout.weight_out_in("mlp_out", layer) for layer in method.edit_layers()]

    def updates_and_steps():
        before = [w.detach().clone() for w in weights]
        out = []
        for request in requests:
            applied = method.apply(request)
            out.append(([w.detach() - b for w, b in zip(weights, before)], method.last_info["steps"]))
            applied.restore()
        return out

    alone = updates_and_steps()
    method.precompute(requests + [EMPTY_TARGET])
    assert len(method._precomputed) == 5
    batched = updates_and_steps()
    steps = [s for _, s in alone]
    assert len(set(steps)) > 1, steps  # the cases finish at different steps
    assert steps == [s for _, s in batched]
    for (one, _), (together, _) in zip(alone, batched):
        for a, b in zip(one, together):
            assert a.norm() > 0
            assert float((a - b).norm() / a.norm()) < tolerance
    with pytest.raises(EditFailedError, match="tokenises to nothing"):
        method.apply(EMPTY_TARGET)
    assert not method._precomputed  # every precomputed δ was used once


@pytest.mark.parametrize(
    "name,hparams,message",
    [
        ("rome", {"layer": 4}, "out of range"),
        ("rome", {"layer": -1}, "out of range"),
        ("memit", {"layers": [1, 9]}, "out of range"),
        ("memit", {"layers": []}, "non-empty"),
        ("memit", {"layers": [1, 1]}, "twice"),
        ("rome", {"layer": 1, "steps": -1}, "non-negative"),
        ("rome", {"layer": 1, "lr": 0.0}, "positive"),
        ("memit", {"layers": [1], "mom2_weight": 0.0}, "positive"),
        ("rome", {"layer": 1, "kl_prompt": "no placeholder"}, "subject"),
        ("rome", {"layer": 1, "unknown_key": 1}, "unknown key"),
        ("rome", {"layer": "5"}, "expects|out of range"),
    ],
)
def test_bad_hparams_are_configuration_errors(tiny_gemma, name, hparams, message):
    with pytest.raises(ConfigurationError, match=message):
        _method(name, tiny_gemma, hparams, sharpen=False)


def test_automatic_layers_fit_the_model(tiny_gemma):
    rome, _, _ = _method("rome", tiny_gemma, {}, sharpen=False)
    memit, _, _ = _method("memit", tiny_gemma, {}, sharpen=False)
    assert 0 <= rome.edit_layers()[0] < 4
    assert all(0 <= layer < 4 for layer in memit.edit_layers())
    from bizsre_tasks.editing.rome import auto_layer

    assert auto_layer("gemma3_text", 18) == 5


# --- key statistics -------------------------------------------------------------------------------
def _corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"Sentence number {i} about Volvo and bridges." for i in range(30)), encoding="utf-8")
    return path


def test_statistics_are_cached_reused_and_recomputed_when_corrupt(tiny_gemma, tmp_path, monkeypatch):
    model, tokenizer = _load(tiny_gemma, sharpen=False)
    layout = ModelLayout.for_model(model)
    corpus = second_moments.load_corpus([_corpus_file(tmp_path)])
    calls = []
    real_collect = second_moments.collect_second_moments

    def counting(*args, **kwargs):
        calls.append(args[3])
        return real_collect(*args, **kwargs)

    monkeypatch.setattr(second_moments, "collect_second_moments", counting)

    def compute():
        return second_moments.second_moments(model, tokenizer, layout, [1, 2], corpus, str(tiny_gemma), progress=False)

    first = compute()
    assert calls == [[1, 2]]  # both layers in one pass
    assert first[1].shape == (64, 64) and torch.allclose(first[1], first[1].T)
    path = second_moments.cache_path(str(tiny_gemma), 1, corpus)
    assert path.is_file() and path.is_relative_to(tmp_path / "cache" / "stats")
    second = compute()
    assert calls == [[1, 2]]  # reused
    assert torch.equal(first[1], second[1])

    path.write_bytes(b"not a torch file")  # corrupt
    compute()
    assert calls[-1] == [1]

    payload = torch.load(path, weights_only=True)
    payload["mom2"] = torch.zeros(3, 3, dtype=torch.float64)  # wrong shape
    torch.save(payload, path)
    compute()
    assert calls[-1] == [1]

    with torch.no_grad():  # the model changed below layer 2: layer 2's statistics are stale, layer 1's not
        layout.module("mlp_out", 2).weight.mul_(1.5)
    compute()
    assert calls[-1] == [2]


def test_corpus_formats(tmp_path, caplog):
    tsv = tmp_path / "qa.tsv"
    tsv.write_text("What is X?\tY\nX是什么？\t是Y\n", encoding="utf-8")
    corpus = second_moments.load_corpus([tsv])
    assert corpus.texts == ("Question: What is X?\nAnswer: Y", "问题：X是什么？\n答案：是Y")
    text = _corpus_file(tmp_path)
    assert len(second_moments.load_corpus([text]).texts) == 30
    assert len(second_moments.load_corpus([text], max_samples=7).texts) == 7
    assert second_moments.load_corpus([text]).fingerprint != second_moments.load_corpus([tsv]).fingerprint
    with caplog.at_level(logging.WARNING):
        sample = second_moments.load_corpus([])
    assert "using the bundled 20-case sample" in caplog.text and len(sample.texts) > 20  # the bundled test-schema sample
    with pytest.raises(ConfigurationError, match="not found"):
        second_moments.load_corpus([tmp_path / "missing.txt"])


def test_corpus_paths_precedence(monkeypatch):
    monkeypatch.delenv("BIZSRE_TRAIN_FILE", raising=False)
    assert second_moments.corpus_paths(["a.tsv"], "b.tsv") == ["a.tsv"]
    assert second_moments.corpus_paths([], "b.tsv") == ["b.tsv"]
    assert second_moments.corpus_paths([], None) == []
    monkeypatch.setenv("BIZSRE_TRAIN_FILE", "c.tsv")
    assert second_moments.corpus_paths([], None) == ["c.tsv"]


def test_stats_command(tiny_gemma, tmp_path, capsys):
    from bizsre_tasks.commands import stats

    parser = argparse.ArgumentParser()
    stats.configure("stats", parser)
    args = parser.parse_args(["--pretrained", str(tiny_gemma), "--layers", "1,2", "--corpus", str(_corpus_file(tmp_path)),
                              "--cache-dir", str(tmp_path / "c")])
    assert stats.run(args) == 0
    assert len(list((tmp_path / "c" / "stats").rglob("layer*.pt"))) == 2
    args = parser.parse_args(["--pretrained", str(tiny_gemma), "--layers", "7", "--corpus", str(_corpus_file(tmp_path))])
    with pytest.raises(ConfigurationError, match="out of range"):
        stats.run(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["--layers", "a,b"])


# --- the real default model through the harness ---------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method", ["rome", "memit"])
def test_end_to_end_through_lm_eval(method, shared_test_file, tmp_path, monkeypatch):
    from tests.harness import metric, run_harness

    monkeypatch.delenv("BIZSRE_CACHE_DIR")  # the default model (and reusable statistics) live in the real cache
    train = shared_test_file.parent / "train_qa_en.tsv"
    hparams = tmp_path / "hparams.yaml"
    # A small corpus keeps the one-off statistics short; the defaults use 4000 texts.
    hparams.write_text(f"stats_corpus: ['{train}']\nstats_max_samples: 300\n", encoding="utf-8")
    model_args = {"method": method, "edit_lang": "en", "protocol": "teacher_forced", "test_file": str(shared_test_file),
                  "hparams": str(hparams), "verify_restore": True}
    results = run_harness(model_args, ["bizsre_reliability", "bizsre_locality_en"], limit=2, max_gen_toks=None)
    assert metric(results, "bizsre_reliability") >= 0.5
    assert metric(results, "bizsre_locality_en") >= 0.5
