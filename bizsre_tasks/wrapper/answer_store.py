"""Per-case answers persisted as they are produced, so a killed run resumes where it stopped.

`edited-hf ... answer_store=DIR` keeps one JSONL file per run identity (model weights fingerprint,
method, resolved hparams, edit language, protocol, package version) and process (rank, case order). Each line holds one finished
case: its answers keyed by request signature, and the failure reason if its edit failed. A line is
written (and flushed to disk) only after the case is complete and the model restored, so a crash at
any point loses at most the case in progress; a truncated last line is ignored on reading.

The store reads every answer file of its run identity in the folder (other ranks', and that of a
process working through the same run in the other direction, `case_order=reverse`), and `refresh`
reads what those processes wrote since, so two processes can share one long run without doing a case twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def request_signature(request: Any, occurrence: int) -> str:
    """Identifies one answer: task, document, occurrence (pre/post for locality), prompt and settings."""
    task = str((getattr(request, "metadata", None) or ("",))[0])
    context, gen_kwargs = request.args
    payload = json.dumps([task, getattr(request, "doc_id", None), occurrence, context, gen_kwargs], sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def run_identity(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:20]


class AnswerStore:
    def __init__(self, folder: str | os.PathLike, identity: str, description: dict[str, Any], rank: int = 0, worker: str = ""):
        """`worker`: a suffix for this process's own file (`reverse` for case_order=reverse), so that two
        processes of one run never append to the same file."""
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.identity = identity
        self.path = self.folder / f"answers-{identity}-rank{rank}{'-' + worker if worker else ''}.jsonl"
        (self.folder / f"run-{identity}.json").write_text(json.dumps(description, indent=2, sort_keys=True, default=str))
        self.cases: dict[str, dict[str, Any]] = {}
        self._read_upto: dict[Path, int] = {}  # bytes of each answer file already read (complete lines only)
        self.refresh()

    def refresh(self) -> None:
        """Reads the complete lines added to any answer file of this run since the last read."""
        for path in sorted(self.folder.glob(f"answers-{self.identity}-rank*.jsonl")):
            start = self._read_upto.get(path, 0)
            with path.open("rb") as handle:
                handle.seek(start)
                data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next read
            self._read_upto[path] = start + len(complete)
            for line in complete.splitlines():
                try:
                    entry = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue  # the line a killed run was writing
                if isinstance(entry, dict) and "case_key" in entry:
                    self.cases[entry["case_key"]] = entry

    def finished(self, case_key: str, signatures: list[str]) -> dict[str, Any] | None:
        """The stored entry when it holds an answer for every signature asked for."""
        entry = self.cases.get(case_key)
        if entry and all(signature in entry["answers"] for signature in signatures):
            return entry
        return None

    def record(self, case_key: str, answers: dict[str, str], failure: str | None, immediate: str | None = None) -> None:
        """`immediate`: edit_mode=sequential's reliability answer right after the case's own edit."""
        entry: dict[str, Any] = {"case_key": case_key, "answers": answers, "failure": failure}
        if immediate is not None:
            entry["immediate"] = immediate
        self.cases[case_key] = entry
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
