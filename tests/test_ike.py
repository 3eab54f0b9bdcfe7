"""IKE: prompt construction, the demonstration pool (encoded once, cached on disk), configuration."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from bizsre_tasks.editing.base import EditingContext, EditRequest
from bizsre_tasks.editing.demonstrations import (
    DemonstrationPool,
    kind_counts,
    kind_sequence,
)
from bizsre_tasks.editing.layout import ModelLayout
from bizsre_tasks.editing.registry import build_method
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.tasks import prompts
from bizsre_tasks.tasks.data_loading import SAMPLE_TEST_FILE
from tests.tiny_models import flat_train_file

SHARED_EN_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "bizsre" / "zsre_train_en_10000.json"


@pytest.fixture(scope="module")
def tiny(tiny_gemma):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma).eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(tiny_gemma)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("BIZSRE_CACHE_DIR", str(folder))
    monkeypatch.delenv("BIZSRE_TRAIN_FILE", raising=False)
    return folder


def tsv_train_file(folder: Path) -> Path:
    lines = [f"{case['zh']['src']}\t{case['zh']['alt']}" for case in json.loads(SAMPLE_TEST_FILE.read_text(encoding="utf-8"))]
    path = folder / "train_zh.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_method(tiny, train_file=None, edit_lang="en", **hparams):
    model, tokenizer = tiny
    context = EditingContext(
        model=model, tokenizer=tokenizer, layout=ModelLayout.for_model(model), device=torch.device("cpu"),
        model_name="tiny", train_file=str(train_file) if train_file else None, edit_lang=edit_lang,
    )
    return build_method("ike", context, hparams)


def request(question="Who is the author of Blue Lotus?", target="Jane Doe", lang="en") -> EditRequest:
    template = prompts.prompt_template(lang)
    return EditRequest(
        prompt=prompts.build_prompt(question, lang), target=target, subject="Blue Lotus", lang=lang,
        target_separator=prompts.answer_separator(template), question=question,
    )


def count_encoder_calls(method) -> list[int]:
    """Sizes of every encode() call made by the method's encoder from now on."""
    sizes: list[int] = []
    original = method.encoder.encode

    def spy(texts, *args, **kwargs):
        sizes.append(len(texts))
        return original(texts, *args, **kwargs)

    method.encoder.encode = spy
    return sizes


def test_kind_mix_follows_ratio():
    assert kind_counts(8, (1, 3, 4)) == {"copy": 1, "update": 3, "retain": 4}
    assert kind_counts(16, (1, 3, 4)) == {"copy": 2, "update": 6, "retain": 8}
    sequence = kind_sequence(8, (1, 3, 4))
    assert sorted(sequence) == sorted(["copy"] + ["update"] * 3 + ["retain"] * 4)
    assert sequence[:2] != ["retain", "retain"]  # interleaved, not grouped


def test_prompt_has_copy_update_retain_and_ends_with_the_original_prompt(tiny, tmp_path):
    method = make_method(tiny, flat_train_file(tmp_path), k=6, ratio=[1.0, 1.0, 1.0])
    method.ensure_prepared()
    edit = request()
    applied = method.apply(edit)
    asked = prompts.build_prompt("Who wrote Blue Lotus?", "en")
    rewritten = applied.rewrite_prompt(asked)
    assert rewritten.endswith("\nNew Fact: Who is the author of Blue Lotus? Jane Doe\n" + asked)
    assert rewritten.count("New Fact: ") == 7  # 6 demonstrations + the edit
    query = method.encoder.encode([edit.question])[0]
    demos = method.pool.select(query, 6, (1.0, 1.0, 1.0))
    assert sorted(d.kind for d in demos) == ["copy", "copy", "retain", "retain", "update", "update"]
    records = {r.src: r for r in method.pool.records}
    for demo in demos:
        record = records[demo.fact_question]
        block = f"New Fact: {record.src} {record.alt}\nQuestion: {prompts.clean_question(demo.question)}\nAnswer: {demo.answer}\n\n"
        assert block in rewritten
        if demo.kind == "copy":
            assert (demo.question, demo.answer) == (record.src, record.alt)
        elif demo.kind == "update":
            assert (demo.question, demo.answer) == (record.rephrase, record.alt)
        else:
            assert (demo.question, demo.answer) == (record.loc, record.loc_ans)


def test_question_without_template_change_is_kept_verbatim(tiny, tmp_path):
    method = make_method(tiny, flat_train_file(tmp_path), k=2)
    applied = method.apply_batch([request()])[0]
    for asked in ("问题：谁写了蓝莲花？\n答案：", "Question: x?\nAnswer:"):
        assert applied.rewrite_prompt(asked).endswith("\n" + asked)
        assert applied.rewrite_prompt(asked).split("\n")[-2:] == asked.split("\n")


def test_tsv_pool_uses_copy_for_update_and_other_records_for_retain(tiny, tmp_path):
    method = make_method(tiny, tsv_train_file(tmp_path), edit_lang="zh", k=3, ratio=[0.0, 1.0, 2.0])
    method.ensure_prepared()
    edit = request("蓝莲花的作者是谁？", "张三", "zh")
    query = method.encoder.encode([edit.question])[0]
    demos = method.pool.select(query, 3, (0.0, 1.0, 2.0))
    kinds = [d.kind for d in demos]
    assert kinds.count("copy") == 1 and kinds.count("retain") == 2  # no rephrase: the update slot asks verbatim
    for demo in demos:
        if demo.kind == "retain":
            assert demo.question != demo.fact_question
            assert demo.question in method.pool.questions
    rewritten = method.apply(edit).rewrite_prompt(edit.prompt)
    assert "新事实：蓝莲花的作者是谁？张三\n" + edit.prompt in rewritten
    assert "问题：" in rewritten.split("新事实：蓝莲花")[0]


def test_pool_is_encoded_once_across_applies(tiny, tmp_path):
    method = make_method(tiny, flat_train_file(tmp_path, 20), k=4)
    method.ensure_prepared()
    sizes = count_encoder_calls(method)
    for _ in range(3):
        method.apply(request())
    method.apply_batch([request(), request("Who founded Acme?", "Bob")])
    assert sizes == [1, 1, 1, 2]  # only the edit questions, never the pool again


def test_pool_features_are_cached_on_disk_and_reused(tiny, tmp_path, cache_dir, monkeypatch):
    train = flat_train_file(tmp_path, 20)
    first = make_method(tiny, train, k=4)
    first.ensure_prepared()
    assert not first.pool_from_cache
    cached = list((cache_dir / "ike").glob("pool-*.pt"))
    assert len(cached) == 1

    second = make_method(tiny, train, k=4)
    calls = []
    import bizsre_tasks.editing.tensors.encoders as encoders

    original = encoders.BaseModelEncoder.encode
    monkeypatch.setattr(encoders.BaseModelEncoder, "encode", lambda self, texts, *a, **kw: calls.append(len(texts)) or original(self, texts, *a, **kw))
    second.ensure_prepared()
    assert second.pool_from_cache and calls == []
    assert torch.equal(first.pool.embeddings, second.pool.embeddings)
    assert first.apply(request()).context_text == second.apply(request()).context_text

    # Another training file (other fingerprint) does not reuse those features.
    other = tmp_path / "other"
    other.mkdir()
    third = make_method(tiny, flat_train_file(other, 21), k=4)
    third.ensure_prepared()
    assert not third.pool_from_cache


def test_train_file_sources_in_order(tiny, tmp_path, monkeypatch, caplog):
    train = flat_train_file(tmp_path, 5)
    monkeypatch.setenv("BIZSRE_TRAIN_FILE", str(train))
    method = make_method(tiny, None, k=2)
    method.ensure_prepared()
    assert method.pool.source == str(train)
    monkeypatch.delenv("BIZSRE_TRAIN_FILE")
    with caplog.at_level(logging.WARNING):
        fallback = make_method(tiny, None, k=2)
        fallback.ensure_prepared()
    assert fallback.pool.source == str(SAMPLE_TEST_FILE)
    assert "no training file" in caplog.text


def test_edit_question_itself_is_not_a_demonstration(tiny, tmp_path):
    train = flat_train_file(tmp_path, 6)
    method = make_method(tiny, train, k=5, ratio=[1.0, 0.0, 0.0])
    method.ensure_prepared()
    record = method.pool.records[0]
    edit = request(record.src, "Someone Else")
    text = method.apply(edit).context_text
    assert f"New Fact: {record.src} {record.alt}" not in text


@pytest.mark.parametrize(
    "hparams",
    [{"k": -1}, {"ratio": [1.0, 2.0]}, {"ratio": [0.0, 0.0, 0.0]}, {"encoder": "bert"}, {"pool_size": -3}, {"kk": 3}],
)
def test_bad_hparams_are_configuration_errors(tiny, hparams):
    with pytest.raises(ConfigurationError):
        make_method(tiny, None, **hparams)


def test_pool_select_orders_most_similar_last():
    from bizsre_tasks.tasks.data_loading import TrainRecord

    records = [TrainRecord(src=f"q{i}?", alt=f"a{i}") for i in range(4)]
    pool = DemonstrationPool(records, "en", "mem", "fp")
    pool.embeddings = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.2], [0.0, 1.0], [0.5, 0.5]]), dim=-1)
    demos = pool.select(torch.tensor([1.0, 0.0]), 3, (1.0, 0.0, 0.0))
    assert [d.fact_question for d in demos] == ["q3?", "q1?", "q0?"]


@pytest.mark.slow
@pytest.mark.parametrize("edit_lang", ["en", "zh"])
def test_ike_end_to_end_on_the_default_model(shared_test_file, tmp_path, edit_lang, monkeypatch):
    from tests.harness import metric, run_harness

    train = shared_test_file.parent / ("zsre_train_en_10000.json" if edit_lang == "en" else "train_qa_zh.tsv")
    if not train.exists():
        pytest.skip(f"{train} not found")
    monkeypatch.delenv("BIZSRE_CACHE_DIR")  # reuse the real cache (model and pool features)
    hparams = tmp_path / "ike.yaml"
    hparams.write_text("pool_size: 300\nk: 8\n")
    args = {"method": "ike", "edit_lang": edit_lang, "protocol": "teacher_forced", "test_file": str(shared_test_file),
            "train_file": str(train), "hparams": str(hparams)}
    results = run_harness(args, ["bizsre_reliability", "bizsre_locality_en"], limit=2)
    assert metric(results, "bizsre_reliability") >= 0.5
    samples = results["samples"]["bizsre_reliability"]
    assert all(len(s["resps"][0][0]) > 0 for s in samples)


def test_shared_prefix_answers_match_full_teacher_forcing(tiny, tmp_path):
    from bizsre_tasks.wrapper.prefix_cache import shared_prefix_answers
    from bizsre_tasks.wrapper.teacher_forcing import teacher_forced_answers

    model, tokenizer = tiny
    method = make_method(tiny, flat_train_file(tmp_path), k=3)
    applied = method.apply(request())
    prompts_ = [prompts.build_prompt(q, lang) for q, lang in (("Who wrote Blue Lotus?", "en"), ("谁写了蓝莲花？", "zh"), ("Where is Paris?", "en"))]
    targets = [" Jane Doe", "简", " France"]
    full = teacher_forced_answers(model, tokenizer, [applied.rewrite_prompt(p) for p in prompts_], targets)
    assert shared_prefix_answers(model, tokenizer, applied.shared_prefix, prompts_, targets) == full


def test_several_edits_show_each_question_its_closest_facts_bounded(tiny, tmp_path):
    from bizsre_tasks.editing.ike import InContextEditing

    method = make_method(tiny, flat_train_file(tmp_path), k=0)
    requests = [request(f"Who is the author of Blue Lotus volume {n}?", f"Author{n}") for n in range(6)]
    assert method.apply_many(requests[:1]).rewrite_prompt(requests[0].prompt) == method.apply(requests[0]).rewrite_prompt(requests[0].prompt)
    memory = method.apply_many(requests)
    for req in requests:
        text = memory.rewrite_prompt(req.prompt)
        assert text.endswith(f"New Fact: {req.question} {req.target}\n{req.prompt}")  # its own fact, last
        assert text.count("New Fact: ") == InContextEditing.MEMORY_FACTS  # bounded, not all six
    assert memory.shared_prefix is None


def test_sequential_lm_eval_run_keeps_every_edit_so_far(tiny_gemma, tmp_path, monkeypatch):
    """edit_mode=sequential through lm_eval with the real IKE: every edit so far stays in its memory."""
    from bizsre_tasks.editing.ike import InContextEditing
    from tests.harness import run_harness

    sizes = []
    original = InContextEditing.apply_many

    def spy(self, requests):
        sizes.append(len(requests))
        return original(self, requests)

    monkeypatch.setattr(InContextEditing, "apply_many", spy)
    args = {"pretrained": str(tiny_gemma), "device": "cpu", "method": "ike", "train_file": str(flat_train_file(tmp_path)),
            "edit_mode": "sequential"}
    results = run_harness(args, ["bizsre_reliability", "bizsre_generality_zh"], limit=3)
    assert sizes == [1, 2, 3]
    assert "f1_immediate,none" in results["results"]["bizsre_reliability"]


def test_memory_prompts_with_the_same_closest_fact_share_its_demonstrations(tiny, tmp_path):
    """Several edits in force: prompts whose closest fact is the same share that fact's demonstrations as a
    prefix (computed once by the wrapper); grouped answers equal full teacher forcing."""
    from bizsre_tasks.editing.base import EditStack
    from bizsre_tasks.wrapper.prefix_cache import shared_prefix_answers, shared_prefix_groups
    from bizsre_tasks.wrapper.teacher_forcing import teacher_forced_answers

    model, tokenizer = tiny
    method = make_method(tiny, flat_train_file(tmp_path), k=3)
    requests = [request(f"Who is the author of Blue Lotus volume {n}?", f"Author{n}") for n in range(3)]
    memory = EditStack([method.apply_many(requests)])  # as the wrapper holds it in a sequence
    asked = [req.prompt for req in requests for _ in range(2)] + [prompts.build_prompt("Where is Paris?", "en")]
    targets = [f" Author{n}" for n in range(3) for _ in range(2)] + [" France"]
    contexts = [memory.rewrite_prompt(p) for p in asked]
    prefixes = [memory.prefix_for(p) for p in asked]
    assert all(prefix and context.startswith(prefix) for prefix, context in zip(prefixes, contexts))
    groups = shared_prefix_groups(contexts, prefixes)
    assert max(len(positions) for positions in groups.values()) >= 2  # some prompts share their demonstrations
    grouped = [""] * len(asked)
    for prefix, positions in groups.items():
        answers = shared_prefix_answers(model, tokenizer, prefix, [contexts[p][len(prefix):] for p in positions], [targets[p] for p in positions])
        for position, answer in zip(positions, answers):
            grouped[position] = answer
    assert sorted(p for positions in groups.values() for p in positions) == list(range(len(asked)))
    assert grouped == teacher_forced_answers(model, tokenizer, contexts, targets)
