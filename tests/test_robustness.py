"""Failed edits, interruption and resumption, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bizsre_tasks.editing import registry
from tests.harness import metric, run_harness

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fake_method_registry(monkeypatch):
    monkeypatch.setitem(registry.METHODS, "counting", "tests.fake_methods:CountingWeightEdit")


def _answers(results, task="bizsre_reliability"):
    return [s["resps"] for s in results["samples"][task]]


def test_failure_in_the_middle_leaves_later_cases_untouched(tiny_gpt2, tmp_path):
    failing_hparams, clean_hparams = tmp_path / "fail.yaml", tmp_path / "clean.yaml"
    failing_hparams.write_text(yaml.safe_dump({"fail_on_cases": [1], "scale": 0.5}))
    clean_hparams.write_text(yaml.safe_dump({"scale": 0.5}))
    args = {"pretrained": str(tiny_gpt2), "device": "cpu", "method": "counting", "verify_restore": True}
    failing = run_harness({**args, "hparams": str(failing_hparams)}, ["bizsre_reliability", "bizsre_generality_zh"], limit=4)
    clean = run_harness({**args, "hparams": str(clean_hparams)}, ["bizsre_reliability", "bizsre_generality_zh"], limit=4)
    unedited = run_harness({**args, "method": "none"}, ["bizsre_reliability", "bizsre_generality_zh"], limit=4)
    for task in ("bizsre_reliability", "bizsre_generality_zh"):
        failing_answers, clean_answers, plain = _answers(failing, task), _answers(clean, task), _answers(unedited, task)
        assert failing_answers[0] == clean_answers[0]
        assert failing_answers[2:] == clean_answers[2:]  # cases after the failure: as if it never happened
        assert failing_answers[1] == plain[1]  # the failed case is answered by the restored, unedited model
    assert metric(failing, "bizsre_reliability", "edit_failed") == pytest.approx(0.25)
    assert metric(clean, "bizsre_reliability", "edit_failed") == 0.0


def test_same_command_twice_is_byte_identical(tiny_gemma):
    args = {"pretrained": str(tiny_gemma), "device": "cpu", "method": "counting"}
    first = run_harness(args, ["bizsre"], limit=3)
    second = run_harness(args, ["bizsre"], limit=3)
    for task in first["samples"]:
        assert json.dumps(_answers(first, task)) == json.dumps(_answers(second, task))


def _command(model_dir, store, hparams, output):
    model_args = f"pretrained={model_dir},method=tests.fake_methods:SlowLoggedEdit,hparams={hparams},answer_store={store}"
    return [
        sys.executable, "-m", "bizsre_tasks.cli", "run", "--model", "edited-hf", "--model_args", model_args,
        "--device", "cpu", "--tasks", "bizsre", "--limit", "6", "--output_path", str(output), "--log_samples", "--gen_kwargs", "max_gen_toks=4",
    ]


def _samples(output: Path) -> dict[str, list]:
    found = {}
    for path in output.rglob("samples_*.jsonl"):
        task = path.name.split("samples_")[1].rsplit("_", 1)[0]
        found[task] = [json.loads(line)["resps"] for line in path.read_text().splitlines()]
    return found


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_cases(tiny_gpt2, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = tmp_path / "edited.log"
    hparams = tmp_path / "h.yaml"
    hparams.write_text(yaml.safe_dump({"log_file": str(log), "sleep": 0.5, "scale": 0.3}))
    store = tmp_path / "store"

    process = subprocess.Popen(_command(tiny_gpt2, store, hparams, tmp_path / "out1"), env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline:
        stored = list(store.glob("answers-*.jsonl"))
        if stored and len(stored[0].read_text().splitlines()) >= 3:
            break
        if process.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(log.read_text().splitlines())
    stored_keys = [json.loads(line)["case_key"] for line in next(store.glob("answers-*.jsonl")).read_text().splitlines() if line.strip()]
    assert 3 <= len(stored_keys) < 6

    resumed = subprocess.run(_command(tiny_gpt2, store, hparams, tmp_path / "out2"), env=env, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed_cases = log.read_text().splitlines()[done_before:]
    assert len(resumed_cases) == 6 - len(stored_keys)  # only the unfinished cases were edited again
    assert not set(resumed_cases) & set(stored_keys)

    log.write_text("")
    fresh = subprocess.run(_command(tiny_gpt2, tmp_path / "fresh-store", hparams, tmp_path / "out3"), env=env, cwd=REPO, capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert _samples(tmp_path / "out2") == _samples(tmp_path / "out3")


def _accelerate_command(model_dir, hparams, output, processes):
    model_args = f"pretrained={model_dir},method=tests.fake_methods:SlowLoggedEdit,hparams={hparams}"
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bizsre_tasks.cli", "run",
        "--model", "edited-hf", "--model_args", model_args, "--tasks", "bizsre", "--limit", "5",
        "--output_path", str(output), "--log_samples", "--gen_kwargs", "max_gen_toks=4",
    ]


def _results(output: Path) -> dict:
    path = next(output.rglob("results_*.json"))
    return json.loads(path.read_text())["results"]


@pytest.mark.slow
def test_two_processes_edit_each_case_once_and_agree_with_one(tiny_gpt2, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    runs = {}
    for processes in (1, 2):
        log = tmp_path / f"edits-{processes}.log"
        hparams = tmp_path / f"h{processes}.yaml"
        hparams.write_text(yaml.safe_dump({"log_file": str(log), "sleep": 0.0, "scale": 0.3}))
        output = tmp_path / f"out{processes}"
        done = subprocess.run(_accelerate_command(tiny_gpt2, hparams, output, processes), env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        edited = log.read_text().splitlines()
        assert sorted(edited) == sorted(set(edited)) and len(edited) == 5  # every case edited exactly once overall
        runs[processes] = (_results(output), _samples(output))
    (results_1, samples_1), (results_2, samples_2) = runs[1], runs[2]
    for task, metrics in results_1.items():
        for name, value in metrics.items():
            if name.endswith(",none") and "stderr" not in name:
                assert results_2[task][name] == pytest.approx(value), (task, name)
    for task in samples_1:
        assert sorted(map(json.dumps, samples_1[task])) == sorted(map(json.dumps, samples_2[task]))
