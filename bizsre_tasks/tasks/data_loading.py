"""One loader for every Bi-ZsRE file format, with schema checks.

Formats:
- test schema: a JSON list of cases `{"en": {...}, "zh": {...}}`, each language part holding
  subject, src, rephrase, alt, loc, loc_ans and portability {"New Question", "New Answer"};
- flat train/validation schema: a JSON list of records with subject, src, rephrase, alt, loc,
  loc_ans (case_id optional);
- question<TAB>answer pairs (`.tsv`), one per line.

Every problem is reported as a `DataFormatError` naming the file, the record index and the field,
never as a bare KeyError and never by silently skipping a record. A test case is identified by its
record index; a record that repeats another exactly, or repeats its optional `case_id`, is refused.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from bizsre_tasks import fingerprints
from bizsre_tasks.errors import BizsreError

logger = logging.getLogger(__name__)

TEST_FILE_ENV = "BIZSRE_TEST_FILE"
TRAIN_FILE_ENV = "BIZSRE_TRAIN_FILE"
SAMPLE_TEST_FILE = Path(__file__).parent.parent / "sample_data" / "bizsre_sample_en_zh.json"

PART_FIELDS = ("subject", "src", "rephrase", "alt", "loc", "loc_ans")
PORTABILITY_FIELDS = ("New Question", "New Answer")
TRAIN_FIELDS = ("subject", "src", "rephrase", "alt", "loc", "loc_ans")


class DataFormatError(BizsreError, ValueError):
    """A data file that cannot be used; the message names file, record and field."""

    def __init__(self, file: str | os.PathLike, message: str, record: int | None = None, field: str | None = None):
        self.file, self.record, self.field = str(file), record, field
        where = [f"file {self.file}"]
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}")


@dataclass(frozen=True)
class LanguagePart:
    subject: str
    src: str
    rephrase: str
    alt: str
    loc: str
    loc_ans: str
    portability_question: str | None
    portability_answer: str | None


@dataclass(frozen=True)
class TestCase:
    case_id: int
    parts: dict[str, LanguagePart]

    def part(self, lang: str) -> LanguagePart:
        return self.parts[lang]


@dataclass(frozen=True)
class TestSet:
    path: str
    fingerprint: str
    languages: tuple[str, ...]
    cases: tuple[TestCase, ...]


@dataclass(frozen=True)
class TrainRecord:
    src: str
    alt: str
    subject: str | None = None
    rephrase: str | None = None
    loc: str | None = None
    loc_ans: str | None = None


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataFormatError(path, "file not found")
    if path.is_dir():
        raise DataFormatError(path, "is a directory, expected a file")
    data = path.read_bytes()
    if not data.strip():
        raise DataFormatError(path, "file is empty")
    return data


def _parse_json(path: Path, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, f"not UTF-8 text ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def _visible(text: str) -> bool:
    """Whether the text has a character a tokenizer can keep (not whitespace, control or zero-width)."""
    return any(char.isprintable() and not char.isspace() for char in text)


def _string_field(path: Path, index: int, container: dict, key: str, label: str, required: bool = True) -> str | None:
    if key not in container:
        if required:
            raise DataFormatError(path, "missing required field", record=index, field=label)
        return None
    value = container[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # answers such as 2006 are sometimes stored as numbers
    if not isinstance(value, str):
        raise DataFormatError(path, f"expected a string, got {type(value).__name__}", record=index, field=label)
    if not value.strip():
        raise DataFormatError(path, "empty string", record=index, field=label)
    if not _visible(value):
        # e.g. only zero-width spaces: many tokenizers drop them, leaving an answer of no tokens
        raise DataFormatError(path, f"no visible characters in {value!r} (only whitespace, control or zero-width characters)", record=index, field=label)
    return value.strip()


def _parse_part(path: Path, index: int, lang: str, raw: Any) -> LanguagePart:
    if not isinstance(raw, dict):
        raise DataFormatError(path, f"expected an object, got {type(raw).__name__}", record=index, field=lang)
    values = {key: _string_field(path, index, raw, key, f"{lang}.{key}") for key in PART_FIELDS}
    portability = raw.get("portability")
    question = answer = None
    if portability is not None:
        if not isinstance(portability, dict):
            raise DataFormatError(path, "expected an object", record=index, field=f"{lang}.portability")
        question, answer = (
            _string_field(path, index, portability, key, f"{lang}.portability.{key}") for key in PORTABILITY_FIELDS
        )
    return LanguagePart(portability_question=question, portability_answer=answer, **values)


def file_fingerprint(data: bytes) -> str:
    return fingerprints.bytes_fingerprint(data)


def load_test_set(path: str | os.PathLike, required_languages: tuple[str, ...] = ()) -> TestSet:
    """Load a file of the Bi-ZsRE test schema; every case must have the same language parts."""
    path = Path(path).expanduser()
    data = _read_bytes(path)
    return _load_test_set_cached(str(path.resolve()), file_fingerprint(data), tuple(required_languages))


@lru_cache(maxsize=8)
def _load_test_set_cached(path_str: str, fingerprint: str, required_languages: tuple[str, ...]) -> TestSet:
    path = Path(path_str)
    raw = _parse_json(path, path.read_bytes())
    if not isinstance(raw, list):
        raise DataFormatError(path, f"expected a JSON list of test cases, got {type(raw).__name__}")
    if not raw:
        raise DataFormatError(path, "contains no test cases")
    languages: tuple[str, ...] | None = None
    cases = []
    seen_records: dict[str, int] = {}
    seen_ids: dict[Any, int] = {}
    for index, record in enumerate(raw):
        if not isinstance(record, dict):
            raise DataFormatError(path, f"expected an object with language parts, got {type(record).__name__}", record=index)
        _check_not_repeated(path, index, record, seen_records, seen_ids)
        record_langs = tuple(key for key in record if key != "case_id")
        if languages is None:
            languages = record_langs
            if len(languages) < 1:
                raise DataFormatError(path, "no language parts (expected e.g. 'en' and 'zh')", record=index)
        elif set(record_langs) != set(languages):
            missing = sorted(set(languages) - set(record_langs))
            extra = sorted(set(record_langs) - set(languages))
            detail = f"missing {missing}" if missing else f"unexpected {extra}"
            raise DataFormatError(
                path,
                f"language parts differ from record 0 ({sorted(languages)}): {detail}",
                record=index,
                field=(missing or extra)[0],
            )
        for lang in required_languages:
            if lang not in record:
                raise DataFormatError(path, f"language part '{lang}' is missing", record=index, field=lang)
        parts = {lang: _parse_part(path, index, lang, record[lang]) for lang in languages}
        cases.append(TestCase(case_id=index, parts=parts))
    return TestSet(path=str(path), fingerprint=fingerprint, languages=tuple(languages), cases=tuple(cases))


def _check_not_repeated(path: Path, index: int, record: dict, seen_records: dict[str, int], seen_ids: dict[Any, int]) -> None:
    """Refuse a record that repeats an earlier one: every record is one case and would be counted twice."""
    content = json.dumps(record, sort_keys=True, ensure_ascii=False)
    if content in seen_records:
        first = seen_records[content]
        raise DataFormatError(path, f"repeats record {first} exactly (records {first} and {index} are identical); remove one", record=index)
    seen_records[content] = index
    if "case_id" not in record:
        return
    case_id = record["case_id"]
    if isinstance(case_id, bool) or not isinstance(case_id, (str, int)):
        raise DataFormatError(path, f"expected a string or integer, got {type(case_id).__name__}", record=index, field="case_id")
    if case_id in seen_ids:
        first = seen_ids[case_id]
        raise DataFormatError(path, f"case_id {case_id!r} is also the case_id of record {first}; case ids must be unique", record=index, field="case_id")
    seen_ids[case_id] = index


def load_train_records(path: str | os.PathLike) -> list[TrainRecord]:
    """Load training data: the flat JSON schema (full records) or question<TAB>answer lines."""
    return [record for record in load_indexed_train_records(path) if record is not None]


def load_indexed_train_records(path: str | os.PathLike) -> list[TrainRecord | None]:
    """One entry per JSON record or TSV line, None for a blank line or one without an answer, so that
    record i of one file still meets record i of a file aligned with it (MEND's --aligned-file)."""
    path = Path(path).expanduser()
    data = _read_bytes(path)
    if path.suffix.lower() in (".tsv", ".txt"):
        return _parse_tsv(path, data)
    raw = _parse_json(path, data)
    if not isinstance(raw, list):
        raise DataFormatError(path, f"expected a JSON list of training records, got {type(raw).__name__}")
    records = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise DataFormatError(path, f"expected an object, got {type(item).__name__}", record=index)
        values = {key: _string_field(path, index, item, key, key) for key in TRAIN_FIELDS}
        records.append(TrainRecord(**values))
    if not records:
        raise DataFormatError(path, "contains no training records")
    return records


def _parse_tsv(path: Path, data: bytes) -> list[TrainRecord | None]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, f"not UTF-8 text ({exc})") from None
    records, unanswered = [], []
    for index, line in enumerate(text.splitlines()):
        if not line.strip():
            records.append(None)
            continue
        columns = line.split("\t")
        if len(columns) != 2:
            raise DataFormatError(path, f"expected question<TAB>answer, got {len(columns)} column(s)", record=index, field="line")
        question, answer = columns[0].strip(), columns[1].strip()
        if not question:
            raise DataFormatError(path, "empty string", record=index, field="question")
        if not _visible(question):
            raise DataFormatError(path, f"no visible characters in {question!r}", record=index, field="question")
        if not _visible(answer):
            unanswered.append(index)
            records.append(None)
            continue
        records.append(TrainRecord(src=question, alt=answer))
    if unanswered:
        # The released Bi-ZsRE TSVs have 35 questions without an answer; nothing can be trained on
        # them, so they are left out, loudly.
        shown = ", ".join(str(i) for i in unanswered[:10]) + (" ..." if len(unanswered) > 10 else "")
        logger.warning("%s: left out %d record(s) with an empty or invisible answer (records %s)", path, len(unanswered), shown)
    if not any(records):
        raise DataFormatError(path, "contains no usable question<TAB>answer records")
    return records


def resolve_test_file(test_file: str | None = None) -> Path:
    """model_args/metadata `test_file`, else $BIZSRE_TEST_FILE, else the bundled demo sample."""
    chosen = test_file or os.environ.get(TEST_FILE_ENV)
    return Path(chosen).expanduser() if chosen else SAMPLE_TEST_FILE


def resolve_train_file(train_file: str | None = None) -> Path | None:
    chosen = train_file or os.environ.get(TRAIN_FILE_ENV)
    return Path(chosen).expanduser() if chosen else None
