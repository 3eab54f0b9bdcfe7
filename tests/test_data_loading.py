"""The loader names file, record and field for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bizsre_tasks.tasks import data_loading
from bizsre_tasks.tasks.data_loading import DataFormatError


def _part(**overrides):
    part = {
        "subject": "Paris",
        "src": "Which country is Paris in?",
        "rephrase": "Paris lies in which country?",
        "alt": "Italy",
        "loc": "nq question: who wrote hamlet",
        "loc_ans": "Shakespeare",
        "portability": {"New Question": "What language is spoken in Paris?", "New Answer": "Italian"},
    }
    part.update(overrides)
    return part


def _write(tmp_path, data, name="test.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_sample_file_loads():
    test_set = data_loading.load_test_set(data_loading.SAMPLE_TEST_FILE)
    assert test_set.languages == ("en", "zh")
    assert len(test_set.cases) == 20


def test_shared_file_loads(shared_test_file):
    test_set = data_loading.load_test_set(shared_test_file)
    assert len(test_set.cases) == 743 and set(test_set.languages) == {"en", "zh"}


@pytest.mark.parametrize(
    "content, expected",
    [
        ("", "file is empty"),
        ("{not json", "invalid JSON at line 1"),
        ({"en": {}}, "expected a JSON list"),
        ([], "contains no test cases"),
        (["text"], "record 0: expected an object"),
    ],
)
def test_bad_files(tmp_path, content, expected):
    path = _write(tmp_path, content)
    with pytest.raises(DataFormatError, match=expected) as info:
        data_loading.load_test_set(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataFormatError, match="file not found"):
        data_loading.load_test_set(tmp_path / "absent.json")


def test_missing_field_names_record_and_field(tmp_path):
    second = {"en": _part(), "zh": _part()}
    del second["zh"]["alt"]
    path = _write(tmp_path, [{"en": _part(), "zh": _part()}, second])
    with pytest.raises(DataFormatError, match=r"record 1, field 'zh.alt': missing required field"):
        data_loading.load_test_set(path)


def test_missing_language_part(tmp_path):
    path = _write(tmp_path, [{"en": _part(), "zh": _part()}, {"en": _part()}])
    with pytest.raises(DataFormatError, match=r"record 1, field 'zh': language parts differ"):
        data_loading.load_test_set(path)


def test_wrong_type_and_empty_string(tmp_path):
    path = _write(tmp_path, [{"en": _part(src=["a list"]), "zh": _part()}])
    with pytest.raises(DataFormatError, match=r"record 0, field 'en.src': expected a string, got list"):
        data_loading.load_test_set(path)
    path = _write(tmp_path, [{"en": _part(alt="  "), "zh": _part()}])
    with pytest.raises(DataFormatError, match=r"field 'en.alt': empty string"):
        data_loading.load_test_set(path)


def test_bad_portability(tmp_path):
    path = _write(tmp_path, [{"en": _part(portability={"New Question": "q?"}), "zh": _part()}])
    with pytest.raises(DataFormatError, match=r"field 'en.portability.New Answer'"):
        data_loading.load_test_set(path)


def test_numeric_answers_accepted(tmp_path):
    path = _write(tmp_path, [{"en": _part(alt=2006), "zh": _part()}])
    assert data_loading.load_test_set(path).cases[0].part("en").alt == "2006"


def test_train_json_and_tsv(tmp_path):
    record = {k: v for k, v in _part().items() if k != "portability"}
    records = data_loading.load_train_records(_write(tmp_path, [record], "train.json"))
    assert records[0].rephrase == "Paris lies in which country?"
    tsv = _write(tmp_path, "问题一？\t答案\nQ2?\tA2\nQ3?\t\n", "train.tsv")
    assert [r.alt for r in data_loading.load_train_records(tsv)] == ["答案", "A2"]


def test_train_errors(tmp_path):
    with pytest.raises(DataFormatError, match=r"record 1, field 'line': expected question<TAB>answer"):
        data_loading.load_train_records(_write(tmp_path, "q\ta\nno tab here\n", "bad.tsv"))
    with pytest.raises(DataFormatError, match=r"record 0, field 'loc_ans': missing required field"):
        data_loading.load_train_records(_write(tmp_path, [{"subject": "s", "src": "q", "rephrase": "r", "alt": "a", "loc": "l"}], "t.json"))


def test_shared_train_files(shared_test_file):
    folder = shared_test_file.parent
    assert len(data_loading.load_train_records(folder / "zsre_train_en_10000.json")) == 10000
    # 35 released questions have no answer; they are left out with a warning naming them.
    assert len(data_loading.load_train_records(folder / "train_qa_zh.tsv")) == 10000 - 35


def test_cli_validate_exit_code(tmp_path):
    bad = _write(tmp_path, [{"en": _part()}, {"zh": _part()}])
    result = subprocess.run([sys.executable, "-m", "bizsre_tasks.cli", "validate", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(bad) in result.stderr and "record 1" in result.stderr
