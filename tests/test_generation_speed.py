"""scripts/generation_speed.py runs both settings and records them (tiny model, demo sample)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests.tiny_models import SAMPLE

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "generation_speed.py"


def test_benchmark_compares_both_settings_and_writes_its_files(tiny_gemma, tmp_path):
    spec = importlib.util.spec_from_file_location("generation_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out_json, out_md = tmp_path / "speed.json", tmp_path / "speed.md"
    code = module.main(["--test-file", str(SAMPLE), "--pretrained", str(tiny_gemma), "--cases", "2",
                        "--json", str(out_json), "--markdown", str(out_md), "--note", "test run"])
    report = json.loads(out_json.read_text())
    assert code == 0 and report["same_answers"] == report["answers"] == 14  # 2 cases x 7 tasks
    for setting in ("dropped", "harness_generate"):
        assert report[setting]["calls"] >= 1 and report[setting]["steps"] >= 1
    assert report["dropped"]["steps"] == report["harness_generate"]["steps"]
    text = out_md.read_text()
    assert "drop_finished_rows=true" in text and "Same answers: 14 of 14" in text and "test run" in text
