"""Data parallel for real: two processes of one evaluation, ranks 0 and 1 of 2 through the harness's
own mechanism (`accelerate launch --multi_gpu`, the same launcher and code path as on GPUs, here with
a gloo process group on CPU), against one process.

Together the two ranks must edit every case exactly once and give every document the same answers
as one process; the harness gathers the per-sample results on rank 0.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = 5  # odd, so the ranks get 3 and 2 cases and the harness pads rank 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _lm_eval_args(model: Path, out: Path, edit_log: Path, store: Path) -> list[str]:
    model_args = (
        f"pretrained={model},method=tests.fake_methods:SlowLoggedEdit,hparams={edit_log.parent / 'h.yaml'},"
        f"answer_store={store}"
    )
    return ["-m", "lm_eval", "--model", "edited-hf", "--model_args", model_args, "--tasks", "bizsre",
            "--limit", str(CASES), "--gen_kwargs", "max_gen_toks=4", "--output_path", str(out), "--log_samples"]


def _run(prefix: list[str], args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([*prefix, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _samples(out: Path) -> dict[str, list[dict]]:
    samples = {}
    for path in out.rglob("samples_*.jsonl"):
        task = path.name[len("samples_"):].rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    return samples


def test_two_ranks_answer_every_case_once_as_one_process_does(tiny_gpt2, tmp_path):
    (tmp_path / "h.yaml").write_text(f"sleep: 0.0\nlog_file: {tmp_path / 'edits-1.log'}\n")
    _run([sys.executable], _lm_eval_args(tiny_gpt2, tmp_path / "one", tmp_path / "edits-1.log", tmp_path / "store-1"), ROOT)

    (tmp_path / "h.yaml").write_text(f"sleep: 0.0\nlog_file: {tmp_path / 'edits-2.log'}\n")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    _run(launch, _lm_eval_args(tiny_gpt2, tmp_path / "two", tmp_path / "edits-2.log", tmp_path / "store-2"), ROOT)

    # Every case edited exactly once over both processes, and by one process only.
    one_edits = (tmp_path / "edits-1.log").read_text().split()
    two_edits = (tmp_path / "edits-2.log").read_text().split()
    assert len(one_edits) == CASES and sorted(two_edits) == sorted(one_edits)
    per_rank = [{json.loads(line)["case_key"] for line in path.read_text().splitlines()}
                for path in sorted((tmp_path / "store-2").glob("answers-*-rank*.jsonl"))]
    assert len(per_rank) == 2 and all(per_rank), "both ranks must have answered cases"
    assert not per_rank[0] & per_rank[1] and per_rank[0] | per_rank[1] == set(one_edits)
    assert sorted(len(keys) for keys in per_rank) == [2, 3]

    # The gathered samples: every document once, with the answers one process gives.
    one, two = _samples(tmp_path / "one"), _samples(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 7
    for task in one:
        by_doc = {s["doc_id"]: s["filtered_resps"] for s in two[task]}
        assert sorted(s["doc_id"] for s in two[task]) == list(range(CASES)), task
        assert {s["doc_id"]: s["filtered_resps"] for s in one[task]} == by_doc, task
