"""IKE's demonstration pool: training records turned into copy / update / retain demonstrations.

A demonstration shows the model one new fact and one question answered under it (Zheng et al. 2023):
- copy: the new fact's own question, answered with the new answer;
- update: a paraphrase of it (the record's `rephrase`), answered with the new answer;
- retain: an unrelated question (the record's `loc`), answered with its own answer `loc_ans`.
Records without a rephrase (question<TAB>answer files such as the Chinese TSV) give copy
demonstrations in the update slots; records without a locality question take another record's
question with that record's own answer as their retain question.

Demonstrations are chosen by similarity to the edit: the pool's questions are encoded once and the
features cached on disk (keyed by the training data's fingerprint, the number of records used and
the encoder), so an edit costs one encoding of its own question and a matrix-vector product.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from bizsre_tasks import languages
from bizsre_tasks.tasks import data_loading, prompts
from bizsre_tasks.tasks.data_loading import TrainRecord

logger = logging.getLogger(__name__)

KINDS = ("copy", "update", "retain")
CACHE_VERSION = 1


@dataclass(frozen=True)
class Demonstration:
    kind: str
    fact_question: str
    fact_answer: str
    question: str
    answer: str


def fact_line(question: str, answer: str, lang: str, label: str = "") -> str:
    """'New Fact: <question> <answer>' in the edit's language (no trailing newline)."""
    label = label or languages.get(lang).fact_label
    separator = prompts.answer_separator(prompts.prompt_template(lang))
    return f"{label}{prompts.clean_question(question)}{separator}{answer}"


def format_demonstration(demo: Demonstration, lang: str, label: str = "") -> str:
    """The new fact, then the question in the evaluation template with its answer, then a blank line."""
    template = prompts.prompt_template(lang)
    question = prompts.build_prompt(demo.question, lang)
    return f"{fact_line(demo.fact_question, demo.fact_answer, lang, label)}\n{question}{prompts.answer_separator(template)}{demo.answer}\n\n"


def kind_counts(k: int, ratio: tuple[float, float, float]) -> dict[str, int]:
    """Split k slots by the copy:update:retain ratio (largest remainder, ties to the earlier kind)."""
    total = float(sum(ratio))
    exact = [k * r / total for r in ratio]
    counts = [int(x) for x in exact]
    for index in sorted(range(3), key=lambda i: (counts[i] - exact[i], i))[: k - sum(counts)]:
        counts[index] += 1
    return dict(zip(KINDS, counts))


def kind_sequence(k: int, ratio: tuple[float, float, float]) -> list[str]:
    """The kinds of k demonstrations, interleaved (smooth weighted round-robin) rather than grouped."""
    remaining = kind_counts(k, ratio)
    credit = dict.fromkeys(KINDS, 0.0)
    sequence = []
    for _ in range(k):
        for kind in KINDS:
            credit[kind] += remaining[kind]
        kind = max((kd for kd in KINDS if remaining[kd] > 0), key=lambda kd: (credit[kd], -KINDS.index(kd)))
        credit[kind] -= sum(remaining.values())
        remaining[kind] -= 1
        sequence.append(kind)
    return sequence


class DemonstrationPool:
    """Training records of one language and (after `encode`) their unit-norm question features."""

    def __init__(self, records: list[TrainRecord], lang: str, source: str, fingerprint: str, seed: int = 0):
        if not records:
            raise ValueError("a demonstration pool needs at least one record")
        self.records = records
        self.lang = lang
        self.source = source
        self.fingerprint = fingerprint
        self.seed = seed
        self.embeddings: torch.Tensor | None = None
        self.questions = [prompts.clean_question(record.src) for record in records]

    @classmethod
    def from_file(cls, path: str | os.PathLike, lang: str, max_records: int = 0, seed: int = 0) -> DemonstrationPool:
        path = Path(path).expanduser()
        records = data_loading.load_train_records(path)
        if max_records > 0:
            records = records[:max_records]
        fingerprint = data_loading.file_fingerprint(path.read_bytes())
        return cls(records, lang, str(path), fingerprint, seed)

    @classmethod
    def from_sample(cls, lang: str, seed: int = 0) -> DemonstrationPool:
        """The bundled demo sample's cases as a (tiny) pool, for runs without a training file."""
        test_set = data_loading.load_test_set(data_loading.SAMPLE_TEST_FILE)
        use = lang if lang in test_set.languages else test_set.languages[0]
        records = []
        for case in test_set.cases:
            part = case.part(use)
            records.append(TrainRecord(part.src, part.alt, part.subject, part.rephrase, part.loc, part.loc_ans))
        return cls(records, lang, str(data_loading.SAMPLE_TEST_FILE), f"{test_set.fingerprint}-{use}", seed)

    def cache_path(self, cache_dir: Path, encoder_key: str) -> Path:
        key = hashlib.sha256(f"v{CACHE_VERSION}|{self.fingerprint}|{len(self.records)}|{encoder_key}".encode()).hexdigest()[:24]
        return cache_dir / f"pool-{key}.pt"

    def encode(self, encoder, cache_dir: Path | None, batch_size: int = 32) -> bool:
        """Load or compute the pool's features; True when they came from the cache."""
        path = self.cache_path(cache_dir, encoder.key) if cache_dir is not None else None
        if path is not None and path.is_file():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                if saved.get("count") == len(self.records) and saved.get("encoder") == encoder.key:
                    self.embeddings = saved["embeddings"]
                    return True
            except Exception as exc:  # a truncated or foreign file: recompute and overwrite
                logger.warning("ignoring unreadable IKE pool cache %s (%s)", path, exc)
        features = encoder.encode(self.questions, batch_size=batch_size, progress=f"IKE: encoding {len(self.records)} demonstrations")
        self.embeddings = torch.nn.functional.normalize(features.float(), dim=-1)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({"embeddings": self.embeddings, "count": len(self.records), "encoder": encoder.key, "data": self.fingerprint}, staging)
            staging.replace(path)  # atomic: a killed run never leaves a half-written cache
        return False

    def nearest(self, query: torch.Tensor, n: int, exclude_question: str = "") -> list[int]:
        """Indices of the n records most similar to `query` (most similar first), the edit itself excluded."""
        if self.embeddings is None:
            raise RuntimeError("encode the pool before selecting demonstrations")
        scores = self.embeddings @ torch.nn.functional.normalize(query.float(), dim=-1)
        if exclude_question:
            for index, question in enumerate(self.questions):
                if question == exclude_question:
                    scores[index] = float("-inf")
        n = min(n, len(self.records))
        return scores.topk(n).indices.tolist()

    def _other_record(self, index: int, avoid: set[int]) -> TrainRecord:
        """A record other than `index` (and those in `avoid`), chosen deterministically."""
        rng = random.Random(self.seed * 1_000_003 + index)
        for _ in range(16):
            other = rng.randrange(len(self.records))
            if other != index and other not in avoid:
                return self.records[other]
        return self.records[(index + 1) % len(self.records)]

    def demonstration(self, index: int, kind: str, avoid: set[int]) -> Demonstration:
        record = self.records[index]
        if kind == "update" and not record.rephrase:
            kind = "copy"  # no paraphrase to ask: the new fact is asked verbatim instead
        if kind == "copy":
            return Demonstration("copy", record.src, record.alt, record.src, record.alt)
        if kind == "update":
            return Demonstration("update", record.src, record.alt, record.rephrase, record.alt)
        if record.loc and record.loc_ans:
            return Demonstration("retain", record.src, record.alt, record.loc, record.loc_ans)
        other = self._other_record(index, avoid)
        return Demonstration("retain", record.src, record.alt, other.src, other.alt)

    def select(self, query: torch.Tensor, k: int, ratio: tuple[float, float, float], exclude_question: str = "",
               most_similar_first: bool = False) -> list[Demonstration]:
        """k demonstrations from the k nearest records, least similar first (the nearest ends next to the
        edit), or most similar first (the seed repository's order)."""
        if k <= 0:
            return []
        chosen = self.nearest(query, k, exclude_question)
        avoid = set(chosen)
        kinds = kind_sequence(len(chosen), ratio)
        ordered = list(chosen) if most_similar_first else list(reversed(chosen))
        return [self.demonstration(index, kind, avoid) for index, kind in zip(ordered, kinds)]
