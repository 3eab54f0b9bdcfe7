"""scripts/device_check.py (the GPU check) runs its lm_eval runs and reports each; here on the CPU, one run."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_reports_every_run_and_the_answers_it_compared(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run(
        [sys.executable, "scripts/device_check.py", "--device", "cpu", "--reference-device", "", "--only", "ft", "--limit", "1",
         "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [(r["run"], r["protocol"]) for r in report["runs"]] == [("ft", "teacher_forced"), ("ft", "paper")]
    for row in report["runs"]:
        assert row["cpu"]["ok"] and "same_answers" not in row  # no reference device asked for
        assert set(row["cpu"]["f1"]) >= {"bizsre_reliability", "bizsre_locality_zh"}


def test_the_reference_device_must_differ():
    done = subprocess.run([sys.executable, "scripts/device_check.py", "--device", "cpu", "--reference-device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "must differ" in done.stderr
