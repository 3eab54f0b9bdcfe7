#!/usr/bin/env python
"""Every editing method through lm_eval on an accelerator, against the same run on the CPU.

CI has no GPU, so nothing else checks that the methods keep their tensors on the model's device. This script
builds the tests' tiny random Gemma 3 model (no download), trains tiny SERAC and MEND checkpoints with the real
`bizsre train` command on the device, and runs `edited-hf` with every method (`--tasks bizsre`, the bundled
sample, `verify_restore=true`) under `teacher_forced` and `paper`, plus MEMIT in sequential and batch mode. The
same runs on the CPU give the reference: for each run the JSON records whether it finished, its wall time, its F1
per task and how many answers equal the CPU's (a random tiny model's answers can flip on float rounding, so a
difference is reported, not failed). Exit status 1 when a run fails on the device.

    python scripts/device_check.py --device cuda --out device_check.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import run_harness  # noqa: E402
from tests.tiny_models import build_tiny_model, flat_train_file  # noqa: E402

# (run name, model_args beyond pretrained/device); the tiny model has 4 layers, so the layer methods edit 1-2.
RUNS = [
    ("none", {"method": "none"}),
    ("ft", {"method": "ft", "hparams": "layers: [1]"}),  # Gemma's default layer 4 is past the tiny model's 3
    ("ike", {"method": "ike"}),
    ("kn", {"method": "kn"}),
    ("rome", {"method": "rome"}),
    ("memit", {"method": "memit"}),
    ("alphaedit", {"method": "alphaedit"}),
    ("serac", {"method": "serac"}),
    ("mend", {"method": "mend"}),
    ("memit_sequential", {"method": "memit", "edit_mode": "sequential"}),
    ("memit_batch", {"method": "memit", "edit_mode": "batch", "edits_per_batch": 2}),
]
PROTOCOLS = ("teacher_forced", "paper")
CHECKPOINTED = {"serac", "mend"}


def train(method: str, model: Path, train_file: Path, out: Path, device: str) -> Path | str:
    """A tiny checkpoint made by the real `bizsre train` command on `device`, or the end of its error output."""
    small = {
        "serac": ["--val-size", "4", "--steps", "6", "--batch-size", "8", "--proj-dim", "16"],
        "mend": ["--steps", "6", "--batch-size", "2", "--train-vocab", "64", "--rank", "8"],
    }[method]
    command = [sys.executable, "-m", "bizsre_tasks.cli", "train", method, "--pretrained", str(model), "--train-file",
               str(train_file), "--train-size", "8", "--out", str(out), "--device", device, "--quiet", *small]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    return out if done.returncode == 0 else f"bizsre train {method} failed on {device}:\n{done.stderr[-3000:]}"


def run_once(args: dict, limit: int) -> tuple[dict, float]:
    start = time.perf_counter()
    results = run_harness(args, ["bizsre"], limit=limit)
    return results, time.perf_counter() - start


def answers(results: dict) -> dict[str, list]:
    return {task: [s["filtered_resps"] for s in samples] for task, samples in results["samples"].items()}


def check_run(name: str, extra: dict, protocol: str, devices: list[str], model: Path, train_file: Path,
              checkpoints: dict, work: Path, limit: int) -> dict:
    """One run on every device: whether it finished, its seconds and F1s, and (two devices) the equal answers."""
    row: dict = {"run": name, "protocol": protocol}
    outputs = {}
    for device in devices:
        args = {"pretrained": str(model), "device": device, "protocol": protocol, "verify_restore": True,
                "train_file": str(train_file), **extra}
        if "hparams" in extra:
            hparams_file = work / f"{name}.yaml"
            hparams_file.write_text(extra["hparams"] + "\n", encoding="utf-8")
            args["hparams"] = str(hparams_file)
        if extra["method"] in CHECKPOINTED:
            checkpoint = checkpoints[(extra["method"], device)]
            if isinstance(checkpoint, str):  # its training failed
                row[device] = {"ok": False, "error": checkpoint}
                continue
            args["checkpoint"] = str(checkpoint)
        try:
            results, seconds = run_once(args, limit)
        except Exception:  # noqa: BLE001 - recorded and counted; the other runs go on
            row[device] = {"ok": False, "error": traceback.format_exc(limit=6)[-3000:]}
            continue
        outputs[device] = answers(results)
        row[device] = {"ok": True, "seconds": round(seconds, 2),
                       "f1": {t: round(r["f1,none"], 4) for t, r in results["results"].items() if "f1,none" in r}}
    if len(outputs) == 2:
        mine, reference = (outputs[d] for d in devices)
        pairs = [(a, b) for task in mine for a, b in zip(mine[task], reference.get(task, []))]
        row["same_answers"] = f"{sum(a == b for a, b in pairs)}/{len(pairs)}"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="the accelerator to check (default cuda)")
    parser.add_argument("--reference-device", default="cpu", help="device of the reference runs ('' = none)")
    parser.add_argument("--limit", type=int, default=3, help="cases per run (default 3)")
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("device_check.json"))
    options = parser.parse_args(argv)
    if options.reference_device == options.device:
        parser.error("--reference-device must differ from --device ('' for no reference runs)")
    wanted = set(filter(None, options.only.split(",")))
    work = Path(tempfile.mkdtemp(prefix="device_check_"))
    model = build_tiny_model(work / "tiny_gemma")
    train_file = flat_train_file(work, count=16)
    devices = [options.device] + ([options.reference_device] if options.reference_device else [])
    checkpoints = {(m, d): train(m, model, train_file, work / f"{m}-{d}", d) for m in sorted(CHECKPOINTED) for d in devices
                   if not wanted or any(name.startswith(m) for name in wanted)}
    report, failed = {"device": options.device, "reference": options.reference_device, "limit": options.limit, "runs": []}, 0
    for protocol in PROTOCOLS:
        for name, extra in RUNS:
            if wanted and name not in wanted:
                continue
            row = check_run(name, extra, protocol, devices, model, train_file, checkpoints, work, options.limit)
            failed += not row[options.device]["ok"]
            report["runs"].append(row)
            status = "ok" if row[options.device]["ok"] else "FAILED"
            print(f"{protocol:14s} {name:18s} {status:6s} same answers as {options.reference_device or '-'}: {row.get('same_answers', '-')}", flush=True)
            for device in devices:
                if not row[device]["ok"]:
                    print(f"  on {device}: {row[device]['error'].strip().splitlines()[-1]}", flush=True)
            # written after every run, so a run stopped by a time limit keeps what it measured
            options.out.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    options.out.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"{failed} run(s) failed on {options.device}; details in {options.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
