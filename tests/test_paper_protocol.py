"""`protocol=paper`: the paper code's prompts, golds and scores, computed by hand on a character tokenizer,
and its answers checked against a one-prompt-at-a-time argmax on tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.tasks import metrics, paper_protocol, run_state, task_docs
from bizsre_tasks.wrapper import paper_answers
from tests.harness import metric, run_harness

EDIT, PORTABILITY = paper_protocol.variant("edit"), paper_protocol.variant("portability")


class CharTokenizer:
    """One token per character, BOS added in front, `<bos>`/`<unk>` in text read as those tokens; with
    `unk_first` it puts an unknown token in front instead (the case the paper's code drops)."""

    pad_token_id, unk_token_id, bos_token_id = 0, 1, 2
    SPECIAL = {"<unk>": 1, "<bos>": 2}

    def __init__(self, unk_first: bool = False):
        self.unk_first = unk_first

    def __call__(self, text, add_special_tokens=True, truncation=False, max_length=None):
        ids, i = [], 0
        while i < len(text):
            special = next((s for s in self.SPECIAL if text.startswith(s, i)), None)
            ids.append(self.SPECIAL[special] if special else 10 + ord(text[i]))
            i += len(special) if special else 1
        if add_special_tokens:
            ids = [self.unk_token_id if self.unk_first else self.bos_token_id] + ids
        if truncation and max_length:
            ids = ids[:max_length]
        return {"input_ids": ids}

    def decode(self, ids, skip_special_tokens=False):
        names = {v: k for k, v in self.SPECIAL.items()}
        return "".join(
            ("" if skip_special_tokens else names[i]) if i in names else chr(i - 10) for i in ids if i != self.pad_token_id
        )


TOK = CharTokenizer()


def test_the_bos_is_kept_and_a_space_joins_the_prefix():
    # target [<bos>, M, a, r, s]: the bare question, then question + " " + decode(first i tokens), i = 1..4
    assert paper_protocol.paper_prompts(TOK, "Where is Zorb?", "Mars", EDIT) == [
        "Where is Zorb?", "Where is Zorb? <bos>", "Where is Zorb? <bos>M", "Where is Zorb? <bos>Ma", "Where is Zorb? <bos>Mar",
    ]
    assert paper_protocol.paper_gold(TOK, "Mars", EDIT) == "Mars"


def test_a_leading_unknown_token_is_the_only_one_dropped():
    assert paper_protocol.paper_prompts(CharTokenizer(unk_first=True), "Q?", "Mars", EDIT) == ["Q?", "Q? M", "Q? Ma", "Q? Mar"]


def test_a_chinese_answer_is_joined_with_a_space():
    assert paper_protocol.paper_prompts(TOK, "首都是？", "北京", EDIT) == ["首都是？", "首都是？ <bos>", "首都是？ <bos>北"]


def test_portability_encodes_a_leading_space_joins_without_one_and_lower_cases_the_gold():
    # target = encode(" Mars") = [<bos>, " ", M, a, r, s]; prompts for i = 0..5 with no joiner
    assert paper_protocol.paper_prompts(TOK, "Q?", "Mars", PORTABILITY) == [
        "Q?", "Q?<bos>", "Q?<bos> ", "Q?<bos> M", "Q?<bos> Ma", "Q?<bos> Mar",
    ]
    # per-token decodings "<bos>"+" "+"M"+... re-encoded, decoded without specials, lower-cased, stripped
    assert paper_protocol.paper_gold(TOK, "Mars", PORTABILITY) == "mars"
    assert paper_protocol.paper_gold(TOK, "Mars", EDIT) == "Mars"


def test_prompts_and_targets_are_cut_to_the_first_30_tokens():
    question = "x" * 40
    ids = paper_answers._prompt_ids(TOK, question + " <bos>M", "", None)
    assert ids == [TOK.bos_token_id] + [10 + ord("x")] * 29  # the end of the question and the prefix are lost
    assert len(paper_protocol.target_ids(TOK, "y" * 40, EDIT)) == 30


@pytest.mark.parametrize(
    "prediction, gold, f1, published, em",
    [
        ("Mars", "Mars", 1.0, 1.0, 1.0),
        (" Mars", "Mars", 2 * 0.8 / 1.8, 0.8, 0.0),  # leading space: one more token (p = 4/5, r = 1), raw EM fails
        ("Mars ", "Mars", 2 * 0.8 / 1.8, 0.8, 0.0),  # nothing is stripped
        ("mars", "Mars", 2 * 0.75 * 0.75 / 1.5, 0.75 * 0.75, 0.0),  # case counts outside portability
        ("北 京", "北京", 2 * (2 / 3) / (5 / 3), 2 / 3, 0.0),  # p = 2/3, r = 1
        ("ab", "cd", 0.0, 0.0, 0.0),  # no overlap: 0 where the seed's harmonic formula divides by zero
        ("aab", "ab", 2 * (2 / 3) / (5 / 3), 2 / 3, 0.0),  # multiset overlap: 2 of 3 predicted tokens
        ("", "", 1.0, 1.0, 1.0),
        ("", "Mars", 0.0, 0.0, 0.0),
        ("Mars", "", 0.0, 0.0, 0.0),
    ],
)
def test_seed_scores_hand_computed(prediction, gold, f1, published, em):
    scores = metrics.seed_token_scores(prediction, gold, TOK)
    assert scores == {"f1": pytest.approx(f1), "f1_as_published": pytest.approx(published), "em": em}


@pytest.fixture
def char_scoring(monkeypatch):
    monkeypatch.setattr(task_docs, "_tokenizer", lambda name, cache_dir="": TOK)
    monkeypatch.setattr(run_state, "WRAPPER_PROTOCOLS", {"paper"})


def _doc(split, target, **extra):
    return {"split": split, "lang": "en", "target": target, "protocol": "paper", "paper_variant": task_docs.PAPER_VARIANT_BY_SPLIT[split],
            "scoring_tokenizer": "", "model_tokenizer": "", "case_key": "k", **extra}


def test_process_results_portability_ignores_case_and_edges_do_not(char_scoring):
    assert task_docs.process_results(_doc("portability", "Mars"), [["mars"]])["em"] == 1.0
    scores = task_docs.process_results(_doc("generality", "Mars"), [[" Mars"]])
    assert scores["em"] == 0.0 and scores["f1"] == pytest.approx(2 * 0.8 / 1.8) and scores["f1_as_published"] == pytest.approx(0.8)


def test_process_results_locality_compares_post_with_pre_edit(char_scoring):
    scores = task_docs.process_results(_doc("locality", "Kim"), [["Joel", "Joe"]])
    assert scores["f1"] == pytest.approx(2 * 1 * 0.75 / 1.75) and scores["f1_as_published"] == pytest.approx(0.75)
    assert scores["gold_f1"] == 0.0 and scores["empty"] == 0.0


def test_teacher_forced_scoring_differs_where_the_seed_does(char_scoring, monkeypatch):
    monkeypatch.setattr(run_state, "WRAPPER_PROTOCOLS", {"teacher_forced"})
    scores = task_docs.process_results({**_doc("generality", "Mars"), "protocol": "teacher_forced"}, [[" Mars"]])
    assert scores["em"] == 1.0 and "f1_as_published" not in scores  # the project's variant strips


def test_docs_under_paper_ask_the_raw_question_and_name_the_tokenizers():
    docs = task_docs.build_docs({"bizsre_split": "locality", "bizsre_lang": "en", "protocol": "paper", "pretrained": "/m", "scoring_tokenizer": "/s"})
    assert docs[0]["prompt"] == docs[0]["question"] and docs[0]["prompt"].startswith("nq question: ")
    assert docs[0]["model_tokenizer"] == "/m" and docs[0]["scoring_tokenizer"] == "/s" and docs[0]["paper_variant"] == "edit"
    edit = json.loads(docs[0]["bizsre_edit"])
    assert edit["prompt"] == edit["question"] and edit["target_separator"] == " "
    default = task_docs.build_docs({"bizsre_split": "portability", "bizsre_lang": "zh", "protocol": "paper"})
    assert default[0]["scoring_tokenizer"] == default[0]["model_tokenizer"] == ""  # the default model's
    assert default[0]["paper_variant"] == "portability"


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(str(folder))


QUESTIONS = [
    ("Where is Zorb?", "Mars", "edit"),
    ("谁写了一本关于蓝色莲花和很多很多其他东西的非常非常长的书，还有别的书吗？", "简·多伊和她的朋友们", "edit"),
    ("nq question: who sang nice day for a white wedding", "Billy Idol", "edit"),
    ("Which river flows through Paris?", "The Seine", "portability"),
    ("巴西说什么语言？", "葡萄牙语", "portability"),
]


@pytest.mark.parametrize("fixture", ["tiny_gemma", "tiny_llama"])
def test_answers_are_the_argmax_after_each_prompt_one_at_a_time(fixture, request):
    model, tokenizer = _load(request.getfixturevalue(fixture))
    expected = []
    for question, answer, name in QUESTIONS:
        kind = paper_protocol.variant(name)
        tokens = []
        for prompt in paper_protocol.paper_prompts(tokenizer, question, answer, kind):
            ids = tokenizer(prompt, truncation=True, max_length=30, return_tensors="pt")["input_ids"]
            tokens.append(int(model(ids).logits[0, -1].argmax()))
        expected.append(kind.normalise(tokenizer.decode(tokens, skip_special_tokens=True)))
    questions, answers, names = zip(*QUESTIONS)
    assert len(set(expected)) > 1
    for batch_size in (1, 3, 32):
        assert paper_answers.paper_answers(model, tokenizer, list(questions), list(answers), list(names), batch_size=batch_size) == expected


def test_plain_hf_is_refused_under_paper(tiny_gpt2, monkeypatch):
    monkeypatch.setattr(run_state, "WRAPPER_PROTOCOLS", set())
    with pytest.raises(ConfigurationError, match="protocol=paper .* only the edited-hf model computes"):
        run_harness({"pretrained": str(tiny_gpt2), "device": "cpu"}, ["bizsre_reliability"], limit=1, model="hf", metadata={"protocol": "paper"})


@pytest.mark.parametrize("method", ["none", "counting", "prefix"])
def test_edited_hf_runs_every_task_under_paper(tiny_gemma, method, monkeypatch):
    from bizsre_tasks.editing import registry

    monkeypatch.setitem(registry.METHODS, "counting", "tests.fake_methods:CountingWeightEdit")
    monkeypatch.setitem(registry.METHODS, "prefix", "tests.fake_methods:PromptPrefixEdit")
    results = run_harness({"pretrained": str(tiny_gemma), "device": "cpu", "method": method, "protocol": "paper"}, ["bizsre"], limit=2)
    for task, samples in results["samples"].items():
        assert 0.0 <= metric(results, task) <= 1.0 and "f1_as_published,none" in results["results"][task]
        assert all(s["doc"]["prompt"] == s["doc"]["question"] for s in samples)
    if method == "none":
        model, tokenizer = _load(tiny_gemma)
        sample = results["samples"]["bizsre_portability_en"][0]
        doc = sample["doc"]
        direct = paper_answers.paper_answers(model, tokenizer, [doc["question"]], [doc["target"]], [doc["paper_variant"]])
        assert sample["filtered_resps"][0] == direct[0]


def test_prompts_that_extend_one_another_run_once():
    rows = [[2, 5], [2, 5, 6], [2, 7], [2, 5, 6], [2, 5, 6, 8]]
    owners = [0, 0, 0, 1, 0]
    runs, where = paper_answers.shared_rows(rows, owners)
    assert runs == [[2, 5, 6, 8], [2, 5, 6], [2, 7]]  # another question's identical prompt is not shared
    assert where == [(0, 1), (0, 2), (2, 1), (1, 2), (0, 3)]


def test_a_rewrite_that_does_more_than_prepend_is_refused():
    assert paper_protocol.split_rewrite("Q?", "New fact. Q?") == "New fact. "
    with pytest.raises(ConfigurationError, match="puts text in front of the question"):
        paper_protocol.split_rewrite("Q?", "Q? Think.")


@pytest.mark.parametrize("fixture", ["tiny_gemma", "tiny_llama"])
def test_a_shared_prefix_runs_once_and_answers_as_the_full_prompts(fixture, request):
    """IKE-style text in front of every question: the prefix runs once per group (KV cache) and the
    answers are those of each full prompt run on its own."""
    model, tokenizer = _load(request.getfixturevalue(fixture))
    prefix = "New Fact: Zorb is on Mars.\nPrompt: Where is Zorb? Mars\n\nNew Fact: 巴西说葡萄牙语。\n"
    expected = []
    for question, answer, name in QUESTIONS:
        kind = paper_protocol.variant(name)
        tokens = []
        for prompt in paper_protocol.paper_prompts(tokenizer, question, answer, kind):
            ids = paper_answers._prompt_ids(tokenizer, prompt, prefix, None)
            tokens.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        expected.append(kind.normalise(tokenizer.decode(tokens, skip_special_tokens=True)))
    widths = []
    handle = model.base_model.register_forward_hook(lambda module, args, kwargs, out: widths.append(kwargs["input_ids"].shape),
                                                    with_kwargs=True)
    questions, answers, names = zip(*QUESTIONS)
    try:
        got = paper_answers.paper_answers(model, tokenizer, list(questions), list(answers), list(names), [prefix] * len(QUESTIONS), batch_size=2)
    finally:
        handle.remove()
    assert got == expected
    prefix_length = len(tokenizer(prefix)["input_ids"])
    # one pass over the prefix (all but its last token), then batches of rows that start after it
    assert tuple(widths[0]) == (1, prefix_length - 1) and len(widths) > 1
    assert all(shape[1] < prefix_length - 1 for shape in widths[1:])
