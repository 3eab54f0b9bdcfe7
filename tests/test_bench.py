"""Smoke test of the benchmark on a tiny model: it runs, counts edits and writes its tables."""

from __future__ import annotations

import json

from bizsre_tasks.cli import main
from tests.test_scale_study import bundled_tasks_only  # noqa: F401  - fixture


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


def test_edit_mode_cost_writes_its_section_and_bench_keeps_it(tiny_gemma, tmp_path, monkeypatch, bundled_tasks_only):  # noqa: F811
    import importlib.util

    from bizsre_tasks.benchmark import report
    from bizsre_tasks.tasks.data_loading import SAMPLE_TEST_FILE

    monkeypatch.setenv("BIZSRE_CACHE_DIR", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("edit_mode_cost_script", "scripts/edit_mode_cost.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out_json, out_md = tmp_path / "modes.json", tmp_path / "BENCH.md"
    out_md.write_text("# Benchmarks\n\nthe bench's part\n")
    (tmp_path / "ft.yaml").write_text("layers: [1]\nsteps: 3\n")
    (tmp_path / "memit.yaml").write_text("layers: [1, 2]\n")
    argv = ["--pretrained", str(tiny_gemma), "--test-file", str(SAMPLE_TEST_FILE), "--sequential-methods", "ft",
            "--sequential-cases", "3", "--batch-methods", "memit", "--batch-cases", "3",
            "--hparams", f"ft={tmp_path / 'ft.yaml'}", "--hparams", f"memit={tmp_path / 'memit.yaml'}", "--json", str(out_json), "--markdown", str(out_md)]
    assert script.main(argv) == 0
    result = json.loads(out_json.read_text())
    (sequential,), (batch,) = result["sequential"], result["batch"]
    assert sequential["cases"] == 3 and sequential["sequential_s"] > 0 and sequential["single_applies_s"] > 0
    assert sequential["ratio"] == sequential["sequential_s"] / (sequential["single_applies_s"] + sequential["answering_pass_s"])
    assert batch["cases"] == 3 and batch["ratio"] == batch["batch_apply_s"] / batch["single_applies_s"]
    # Another method measured into the same JSON later: the earlier rows stay.
    again = list(argv)
    again[again.index("--sequential-methods") + 1] = "none"
    again[again.index("--batch-methods") + 1] = ""
    assert script.main(again) == 0
    result = json.loads(out_json.read_text())
    assert [row["method"] for row in result["sequential"]] == ["ft", "none"] and [row["method"] for row in result["batch"]] == ["memit"]
    report.replace_section(out_md, "edit-modes", "## Edit modes: cost\n\nagain")  # a second run replaces its section
    text = out_md.read_text()
    assert text.count("## Edit modes: cost") == 1 and text.startswith("# Benchmarks\n\nthe bench's part")
    # What `bizsre bench` keeps when it rewrites its own part: the section, once.
    assert report.kept_sections(out_md).count("## Edit modes: cost") == 1
