"""Chunks cut from every case (a resumed run forms the chunks of an uninterrupted one), case_order=reverse,
and two processes sharing one answer store from its two ends."""

from __future__ import annotations

import json

import pytest

from bizsre_tasks.editing import registry
from bizsre_tasks.errors import ConfigurationError
from bizsre_tasks.wrapper.answer_store import AnswerStore
from bizsre_tasks.wrapper.edit_modes import check_case_order
from tests import fake_methods
from tests.harness import run_harness

CASES = 5


@pytest.fixture(autouse=True)
def fake_method_registry(monkeypatch):
    monkeypatch.setitem(registry.METHODS, "counting", "tests.fake_methods:CountingWeightEdit")
    fake_methods.CountingWeightEdit.applied = []
    fake_methods.CountingWeightEdit.events = []
    monkeypatch.setattr(fake_methods.CountingWeightEdit, "on_apply", None)


def _run(model_dir, store=None, **extra):
    fake_methods.CountingWeightEdit.events = []
    fake_methods.CountingWeightEdit.applied = []
    args = {"pretrained": str(model_dir), "device": "cpu", "method": "counting", "edit_batch": 2, "hparams": None, **extra}
    if store is not None:
        args["answer_store"] = str(store)
    results = run_harness(args, ["bizsre"], limit=CASES)
    answers = {task: [s["resps"] for s in samples] for task, samples in results["samples"].items()}
    return answers, list(fake_methods.CountingWeightEdit.events)


def _store_lines(store):
    (path,) = store.glob("answers-*-rank0.jsonl")
    return path, path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_a_chunk_resumed_part_way_is_prepared_as_in_an_uninterrupted_run(tiny_gpt2, tmp_path):
    full, events = _run(tiny_gpt2, tmp_path / "full")
    keys = [key for kind, key in events if kind == "apply"]
    assert [e for e in events if e[0] == "precompute"] == [("precompute", keys[0:2]), ("precompute", keys[2:4]), ("precompute", keys[4:])]

    # A run killed after three cases: the resumed run's first chunk is still cases 2 and 3, not 3 and 4.
    path, lines = _store_lines(tmp_path / "full")
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / path.name).write_text("".join(lines[:3]), encoding="utf-8")
    resumed, events = _run(tiny_gpt2, tmp_path / "part")
    assert events == [("precompute", keys[2:4]), ("apply", keys[3]), ("precompute", keys[4:]), ("apply", keys[4])]
    assert resumed == full


def test_reverse_order_takes_the_same_chunks_from_the_other_end(tiny_gpt2):
    forward, events = _run(tiny_gpt2)
    keys = [key for kind, key in events if kind == "apply"]
    backward, events = _run(tiny_gpt2, case_order="reverse")
    assert events == [("precompute", keys[4:]), ("apply", keys[4]),
                      ("precompute", keys[2:4]), ("apply", keys[2]), ("apply", keys[3]),
                      ("precompute", keys[0:2]), ("apply", keys[0]), ("apply", keys[1])]
    assert backward == forward


def test_a_process_takes_the_cases_the_other_end_finished_meanwhile(tiny_gpt2, tmp_path):
    full, events = _run(tiny_gpt2, tmp_path / "full")
    keys = [key for kind, key in events if kind == "apply"]
    path, lines = _store_lines(tmp_path / "full")
    shared = tmp_path / "shared"

    def reverse_process_finishes_cases_3_and_4(request):
        # What a case_order=reverse process of the same run would have written while this one edits case 0.
        if request.case_key == keys[0]:
            (shared / path.name.replace("-rank0.jsonl", "-rank0-reverse.jsonl")).write_text("".join(lines[3:]), encoding="utf-8")

    fake_methods.CountingWeightEdit.on_apply = staticmethod(reverse_process_finishes_cases_3_and_4)
    answers, events = _run(tiny_gpt2, shared)
    assert [key for kind, key in events if kind == "apply"] == keys[:3]
    assert ("precompute", keys[2:4]) in events  # case 3 came from the other file, its chunk is prepared whole
    assert answers == full
    fake_methods.CountingWeightEdit.on_apply = None

    # Run again from the other end: every case is in the two files, nothing is edited.
    again, events = _run(tiny_gpt2, shared, case_order="reverse")
    assert events == [] and again == full


def test_the_store_reads_other_files_and_only_complete_lines(tmp_path):
    forward = AnswerStore(tmp_path, "abc", {}, worker="")
    backward = AnswerStore(tmp_path, "abc", {}, worker="reverse")
    assert forward.path != backward.path
    backward.record("case:1", {"s": "answer"}, None)
    with backward.path.open("a", encoding="utf-8") as handle:
        handle.write('{"case_key": "case:2", "answ')  # still being written
    forward.refresh()
    assert forward.finished("case:1", ["s"]) and forward.finished("case:2", ["s"]) is None
    with backward.path.open("a", encoding="utf-8") as handle:
        handle.write('ers": {"s": "x"}, "failure": null}\n')
    forward.refresh()
    assert forward.finished("case:2", ["s"])["answers"] == {"s": "x"}
    assert json.loads(backward.path.read_text(encoding="utf-8").splitlines()[0])["case_key"] == "case:1"
    assert not AnswerStore(tmp_path, "other", {}).cases  # another run's files are not read


@pytest.mark.parametrize("value, mode, message", [
    ("backwards", "single", "case_order must be one of forward, reverse"),
    ("reverse", "sequential", "cannot be used with edit_mode=sequential"),
])
def test_bad_case_order_is_refused(value, mode, message):
    with pytest.raises(ConfigurationError, match=message):
        check_case_order(value, mode)
    assert check_case_order(" Reverse ", "batch") == "reverse"
