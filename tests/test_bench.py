"""Smoke test of the benchmark on a tiny model: it runs, counts edits and writes its tables."""

from __future__ import annotations

import json

from bizsre_tasks.cli import main


def test_bench_smoke(tiny_gemma, tmp_path):
    out_json, out_md = tmp_path / "bench.json", tmp_path / "BENCH.md"
    code = main([
        "bench", "--pretrained", str(tiny_gemma), "--methods", "none,tests.fake_methods:CountingWeightEdit",
        "--cases", "2", "--naive", "--naive-cases", "1", "--batching-cases", "3", "--protocol", "teacher_forced",
        "--json", str(out_json), "--markdown", str(out_md),
    ])
    assert code == 0
    result = json.loads(out_json.read_text())
    weight_method = result["methods"][1]
    assert weight_method["edits"] == 2  # one edit per measured case, whatever the number of tasks
    assert weight_method["naive_edits"] == 1 * len(result["tasks"])  # the textbook path edits per (case, task)
    assert weight_method["optimised_over_naive"] > 0
    assert weight_method["full_run_minutes"] == weight_method["mean_case_s"] * result["test_file_cases"] / 60
    assert result["reference_batch"] == 8 and result["batching_cases"] == 3
    assert weight_method["group_over_reliability"] > 0
    assert result["methods"][0]["batch8_over_batch1"] > 0
    markdown = out_md.read_text()
    assert "| none |" in markdown and result["forward_s"] > 0
    # The targets section judges what was measured: one edit per case for the weight method.
    edits_line = next(line for line in markdown.splitlines() if line.startswith("| edits per case = 1"))
    assert edits_line.endswith("CountingWeightEdit | 1 | yes |")
