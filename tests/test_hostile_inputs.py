"""Hostile inputs the data loader cannot judge alone: questions longer than the model's context,
answers that tokenise to nothing, repeated cases. Each stops the run with one message naming file,
record and field before any edit, or (for what a method adds itself) fails only that edit."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from bizsre_tasks.editing import registry
from bizsre_tasks.editing.base import EditFailedError
from bizsre_tasks.editing.common import context_limit, encode_prompt, encode_target
from bizsre_tasks.tasks import data_loading, run_state
from bizsre_tasks.tasks.data_loading import SAMPLE_TEST_FILE, DataFormatError
from bizsre_tasks.wrapper.teacher_forcing import teacher_forced_answers
from tests import fake_methods
from tests.harness import metric, run_harness
from tests.tiny_models import build_tiny_model

CONTEXT = 64
PROTOCOLS = ["generate", "teacher_forced"]


@pytest.fixture(autouse=True)
def fake_method_registry(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.METHODS, "counting", "tests.fake_methods:CountingWeightEdit")
    monkeypatch.setenv("BIZSRE_CACHE_DIR", str(tmp_path / "cache"))
    fake_methods.CountingWeightEdit.applied = []


@pytest.fixture(scope="module")
def short_gpt2(tmp_path_factory):
    """GPT-2 has learned positions: past its context it fails with an IndexError deep in torch."""
    return build_tiny_model(tmp_path_factory.mktemp("gpt2-short"), "gpt2", context=CONTEXT)


@pytest.fixture(scope="module")
def cjk_blind_gpt2(tmp_path_factory, tiny_gpt2):
    """The tiny GPT-2 with a tokenizer that drops CJK characters, as a vocabulary without them and
    without byte fallback does: Chinese answers tokenise to nothing."""
    from tokenizers import Regex, Tokenizer, normalizers

    folder = tmp_path_factory.mktemp("gpt2-cjk-blind")
    shutil.copytree(tiny_gpt2, folder, dirs_exist_ok=True)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.normalizer = normalizers.Replace(Regex("[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]"), "")
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def _cases(count: int = 3) -> list[dict]:
    return json.loads(SAMPLE_TEST_FILE.read_text(encoding="utf-8"))[:count]


def _write(tmp_path, cases, name="test.json"):
    path = tmp_path / name
    path.write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
    return path


def _args(model, test_file, **extra):
    return {"pretrained": str(model), "device": "cpu", "test_file": str(test_file), **extra}


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


# --- questions longer than the model's context --------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_question_longer_than_the_context_stops_the_run_before_any_edit(short_gpt2, tmp_path, protocol):
    cases = _cases()
    cases[1]["en"]["src"] = "Which " + "very " * 80 + "long question is this?"
    store = tmp_path / "store"
    with pytest.raises(DataFormatError, match=rf"record 1, field 'en\.src': .* more than the model's context of {CONTEXT}"):
        run_harness(_args(short_gpt2, _write(tmp_path, cases), method="counting", protocol=protocol, answer_store=str(store)),
                    ["bizsre_reliability"], limit=3)
    assert fake_methods.CountingWeightEdit.applied == []  # not even the cases before it
    assert not store.exists()  # nothing stored as if it were an answer


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_long_question_of_another_split_names_its_field(short_gpt2, tmp_path, protocol):
    cases = _cases()
    cases[2]["zh"]["rephrase"] = "这个问题" * 60 + "是什么？"
    with pytest.raises(DataFormatError, match=r"record 2, field 'zh\.rephrase': the generality prompt has \d+ tokens"):
        run_harness(_args(short_gpt2, _write(tmp_path, cases), method="none", protocol=protocol), ["bizsre_generality_zh"], limit=3)


def test_generation_budget_beyond_the_context_is_a_configuration_error(short_gpt2, tmp_path):
    from bizsre_tasks.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=rf"max_gen_toks=64 leaves no room .* context of {CONTEXT} tokens"):
        run_harness(_args(short_gpt2, SAMPLE_TEST_FILE, method="none"), ["bizsre_reliability"], limit=1, max_gen_toks=CONTEXT)


def _question_with_prompt_length(tokenizer, wanted: int) -> str:
    question = "Who made"
    while len(encode_prompt(tokenizer, f"Question: {question}?\nAnswer:")) < wanted:
        question += " a"
    return question + "?"


def test_what_a_method_adds_beyond_the_context_fails_that_edit_only(short_gpt2, tmp_path):
    """The question fits; ROME's generated prefixes push the edit past the context: a failed edit."""
    tokenizer = _tokenizer(short_gpt2)
    cases = _cases()
    cases[1]["en"]["src"] = _question_with_prompt_length(tokenizer, CONTEXT - 8)
    prompt = f"Question: {cases[1]['en']['src']}\nAnswer:"
    assert len(encode_prompt(tokenizer, prompt)) + len(encode_target(tokenizer, " " + cases[1]["en"]["alt"])) <= CONTEXT
    hparams = tmp_path / "rome.yaml"
    hparams.write_text("layer: 1\nsteps: 2\nn_prefixes: 2\nprefix_length: 10\n")
    results = run_harness(_args(short_gpt2, _write(tmp_path, cases), method="rome", hparams=str(hparams), verify_restore=True),
                          ["bizsre_reliability"], limit=3)
    assert metric(results, "bizsre_reliability", "edit_failed") == pytest.approx(1 / 3)
    [(case_key, reason)] = run_state.FAILED_EDITS.items()
    assert case_key.endswith(":1") and f"beyond the model's context of {CONTEXT}" in reason


def test_context_limit_turns_the_index_error_into_a_failed_edit(short_gpt2):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(short_gpt2)
    too_long = torch.zeros((1, CONTEXT + 1), dtype=torch.long)
    with pytest.raises(IndexError):
        model(input_ids=too_long)  # what a method would otherwise hit
    with context_limit(model, CONTEXT), pytest.raises(EditFailedError, match=f"reaches {CONTEXT + 1} positions"):
        model(input_ids=too_long)
    with context_limit(model, CONTEXT):
        model(input_ids=too_long[:, :CONTEXT])  # exactly the context is fine
    model(input_ids=too_long[:, :2])  # and the hook is gone afterwards


def test_teacher_forcing_left_truncates_a_long_prompt_and_keeps_bos_and_target(short_gpt2, caplog):
    from transformers import AutoModelForCausalLM

    model, tokenizer = AutoModelForCausalLM.from_pretrained(short_gpt2), _tokenizer(short_gpt2)
    long_prompt = "Question: " + "Which river is the longest? " * 20 + "\nAnswer:"
    target = " Nile"
    target_ids = encode_target(tokenizer, target)
    ids = encode_prompt(tokenizer, long_prompt)
    assert ids[0] == tokenizer.bos_token_id and len(ids) > CONTEXT
    kept = [ids[0]] + ids[len(ids) - (CONTEXT - len(target_ids)) + 1 :]
    with caplog.at_level("WARNING"):
        answer = teacher_forced_answers(model, tokenizer, [long_prompt], [target])
    assert "1 prompt(s) longer than the model's context of 64 tokens" in caplog.text
    row = torch.tensor([kept + target_ids])
    with torch.no_grad():
        logits = model(input_ids=row).logits[0, len(kept) - 1 : len(kept) - 1 + len(target_ids)]
    assert answer == [tokenizer.decode(logits.argmax(-1).tolist(), skip_special_tokens=True).strip()]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_in_context_demonstrations_longer_than_the_context_do_not_crash(short_gpt2, tmp_path, protocol):
    """IKE's ~350 demonstration tokens cannot fit a 64-token model: the prompt loses its beginning."""
    results = run_harness(_args(short_gpt2, SAMPLE_TEST_FILE, method="ike", protocol=protocol), ["bizsre_reliability", "bizsre_generality_zh"], limit=2)
    assert len(results["samples"]["bizsre_reliability"]) == 2


# --- answers that tokenise to nothing -----------------------------------------------------------


@pytest.mark.parametrize("value", ["\u200b", "\u200b\u200c \u2060", "\x00\x01", "\ufeff"])
def test_answer_without_visible_characters_is_refused_at_load(tmp_path, value):
    cases = _cases(2)
    cases[1]["zh"]["alt"] = value
    path = _write(tmp_path, cases)
    with pytest.raises(DataFormatError, match=r"record 1, field 'zh\.alt': no visible characters") as info:
        data_loading.load_test_set(path)
    assert str(path) in str(info.value)


def test_training_file_invisible_answers_are_left_out_and_questions_refused(tmp_path, caplog):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("Q1?\tA1\nQ2?\t\u200b\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        assert [r.src for r in data_loading.load_train_records(tsv)] == ["Q1?"]
    assert "left out 1 record(s)" in caplog.text
    tsv.write_text("Q1?\tA1\n\u200b\tA2\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"record 1, field 'question': no visible characters"):
        data_loading.load_train_records(tsv)


@pytest.mark.parametrize("method", ["counting", "ike"])
def test_edit_answer_the_tokenizer_drops_stops_the_run_before_any_edit(cjk_blind_gpt2, method):
    with pytest.raises(DataFormatError, match=r"record 0, field 'zh\.alt': the new answer '.+' tokenises to nothing"):
        run_harness(_args(cjk_blind_gpt2, SAMPLE_TEST_FILE, method=method, edit_lang="zh"), ["bizsre_reliability"], limit=2)
    assert fake_methods.CountingWeightEdit.applied == []


def test_teacher_forced_target_the_tokenizer_drops_is_refused(cjk_blind_gpt2):
    with pytest.raises(DataFormatError, match=r"record 0, field 'zh\.loc_ans': the answer '.+' tokenises to nothing"):
        run_harness(_args(cjk_blind_gpt2, SAMPLE_TEST_FILE, method="none", protocol="teacher_forced"), ["bizsre_locality_zh"], limit=2)


def test_generated_answers_need_no_tokenisable_gold(cjk_blind_gpt2):
    """Under `generate` a gold answer is only compared as words: the unedited run goes on."""
    results = run_harness(_args(cjk_blind_gpt2, SAMPLE_TEST_FILE, method="none"), ["bizsre_locality_zh"], limit=2)
    assert len(results["samples"]["bizsre_locality_zh"]) == 2


def test_methods_called_directly_report_an_empty_target_as_a_failed_edit(cjk_blind_gpt2):
    """Outside the wrapper's checks (the Python API), weight methods fail the edit, never crash."""
    from transformers import AutoModelForCausalLM

    from bizsre_tasks.editing.base import EditingContext, EditRequest
    from bizsre_tasks.editing.layout import ModelLayout
    from bizsre_tasks.editing.registry import build_method

    model = AutoModelForCausalLM.from_pretrained(cjk_blind_gpt2).requires_grad_(False)
    context = EditingContext(model=model, tokenizer=_tokenizer(cjk_blind_gpt2), layout=ModelLayout.for_model(model), device=torch.device("cpu"))
    request = EditRequest(prompt="问题：谁制造了它？\n答案：", target="大众", subject="它", lang="zh", target_separator="")
    for name in ("ft", "kn"):
        with pytest.raises(EditFailedError, match="tokenises to nothing"):
            build_method(name, context, {}, source="test").apply(request)


# --- repeated cases ------------------------------------------------------------------------------


def test_identical_records_are_refused_naming_both(tmp_path):
    cases = _cases(4)
    cases.append(json.loads(json.dumps(cases[1])))
    with pytest.raises(DataFormatError, match=r"record 4: repeats record 1 exactly \(records 1 and 4 are identical\)"):
        data_loading.load_test_set(_write(tmp_path, cases))


def test_repeated_case_ids_are_refused_naming_both(tmp_path):
    cases = _cases(3)
    for index, case_id in enumerate(["a", "b", "a"]):
        cases[index]["case_id"] = case_id
    with pytest.raises(DataFormatError, match=r"record 2, field 'case_id': case_id 'a' is also the case_id of record 0"):
        data_loading.load_test_set(_write(tmp_path, cases))
    cases[2]["case_id"] = ["a"]
    with pytest.raises(DataFormatError, match=r"record 2, field 'case_id': expected a string or integer, got list"):
        data_loading.load_test_set(_write(tmp_path, cases))


def test_cases_with_the_same_edit_stay_apart_in_grouping_and_answer_store(tiny_gpt2, tmp_path):
    """Cases are keyed by record index: two cases with one edit are edited, stored and resumed apart."""
    cases = _cases(3)
    cases[2]["en"] = dict(cases[0]["en"])  # the same English edit, different Chinese part
    path = _write(tmp_path, cases)
    store = tmp_path / "store"
    args = _args(tiny_gpt2, path, method="counting", answer_store=str(store))
    tasks = ["bizsre_reliability", "bizsre_generality_zh"]
    first = run_harness(args, tasks, limit=3)
    keys = fake_methods.CountingWeightEdit.applied
    assert len(keys) == 3 and len(set(keys)) == 3 and keys[0].endswith(":0") and keys[2].endswith(":2")
    stored = [json.loads(line) for file in store.glob("answers-*.jsonl") for line in file.read_text().splitlines()]
    assert sorted(entry["case_key"] for entry in stored) == sorted(keys)

    fake_methods.CountingWeightEdit.applied = []
    resumed = run_harness(args, tasks, limit=3)
    assert fake_methods.CountingWeightEdit.applied == []  # every case came from the store
    for task in tasks:
        assert [s["resps"] for s in resumed["samples"][task]] == [s["resps"] for s in first["samples"][task]]
        assert [s["doc"]["case_id"] for s in resumed["samples"][task]] == [0, 1, 2]


# --- before the model is loaded, and what the command line shows ---------------------------------


def test_test_file_in_model_args_is_checked_before_the_model_loads(tmp_path):
    from bizsre_tasks.editing_wrapper import EditedHFLM

    never_loaded = tmp_path / "no-model-here"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataFormatError, match=r"bad.json: invalid JSON at line 1"):
        EditedHFLM(pretrained=str(never_loaded), method="none", test_file=str(bad))
    with pytest.raises(DataFormatError, match=r"field 'de': edit_lang 'de' is not among the file's languages \['en', 'zh'\]"):
        EditedHFLM(pretrained=str(never_loaded), method="none", edit_lang="de", test_file=str(SAMPLE_TEST_FILE))


def _cli(argv: list[str], tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp_path, env=env)


def test_bizsre_run_reports_a_bad_argument_in_one_line(tmp_path):
    result = _cli(["-m", "bizsre_tasks.cli", "run", "--model", "edited-hf", "--model_args", "method=bogus", "--tasks", "bizsre"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("bizsre run: error: unknown method 'bogus'")


def test_plain_lm_eval_reports_a_bad_file_in_one_line(tmp_path):
    """The start-up hook (`bizsre prepare`) also turns our errors into one line under a plain lm_eval."""
    bad = _write(tmp_path, [{"en": {}}])
    code = (
        "import sys; from bizsre_tasks.wrapper import lm_eval_hook; from bizsre_tasks.tasks import task_generation; lm_eval_hook.install(); "
        "from lm_eval.__main__ import cli_evaluate; "
        f"sys.argv = ['lm_eval', '--model', 'edited-hf', '--model_args', 'test_file={bad}', '--tasks', 'bizsre', "
        "'--include_path', str(task_generation.BUNDLED_DIR)]; cli_evaluate()"
    )
    result = _cli(["-c", code], tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"lm_eval: error: file {bad}, record 0, field 'en.subject': missing required field"
    )


def test_hparams_errors_are_one_line_and_say_what_is_wrong(tiny_gpt2, tmp_path):
    from bizsre_tasks.editing_wrapper import EditedHFLM
    from bizsre_tasks.errors import ConfigurationError

    bad = tmp_path / "h.yaml"
    bad.write_text("layer: [unclosed\n")
    with pytest.raises(ConfigurationError, match=r"invalid YAML at line 2, column 1: expected ',' or '\]'") as info:
        EditedHFLM(pretrained=str(tiny_gpt2), method="rome", hparams=str(bad))
    assert "\n" not in str(info.value)
    bad.write_text("layer: one\n")  # ROME's default layer is per family (None), so only the range check sees it
    with pytest.raises(ConfigurationError, match=r"hparams 'layer' expects a layer index 0..3, got 'one'"):
        EditedHFLM(pretrained=str(tiny_gpt2), method="rome", hparams=str(bad), device="cpu")
