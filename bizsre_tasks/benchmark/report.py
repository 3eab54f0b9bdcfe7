"""Tables for the benchmark: a Markdown table, the JSON file and BENCHMARKS.md."""

from __future__ import annotations

import json
import platform
from importlib.metadata import version
from pathlib import Path
from typing import Any


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _spread(values: dict[str, float] | None) -> str:
    if not values:
        return "—"
    return f"{values['median']:.2f} ({values['min']:.2f}–{values['max']:.2f})"


def markdown_table(figures: list[dict[str, Any]]) -> str:
    header = (
        "| method | cases | edits | prepare s | apply s/edit | case s | restore s | apply fwd-eq | case fwd-eq "
        "| peak RSS GB | naive case s | opt/naive | group/reliability | batch8/batch1 | mean case s | full run min |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for f in figures:
        rows.append(
            f"| {f['method']} | {f['cases']} | {f['edits']} | {_fmt(f['prepare_s'], 1)} | {_spread(f['apply_s'])} | "
            f"{_spread(f['case_s'])} | {_spread(f['restore_s'])} | {_fmt(f['apply_forward_equivalents'], 1)} | "
            f"{_fmt(f['case_forward_equivalents'], 1)} | {_fmt(f['peak_rss_gb'])} | {_spread(f['naive_case_s'])} | "
            f"{_fmt(f['optimised_over_naive'])} | {_fmt(f['group_over_reliability'])} | {_fmt(f['batch8_over_batch1'])} | "
            f"{_fmt(f.get('mean_case_s'))} | {_fmt(f.get('full_run_minutes'), 0)} |"
        )
    return header + "\n".join(rows) + "\n"


# The targets for the default model on the 2-core reference machine: (figure, methods, bound, label).
TARGETS = [
    ("apply_s", ("rome",), 10.0, "ROME apply s/edit ≤ 10"),
    ("apply_s", ("memit",), 15.0, "MEMIT apply s/edit ≤ 15"),
    ("apply_s", ("ft",), 3.0, "FT apply s/edit ≤ 3"),
    ("case_s", ("ike",), 2.0, "IKE s/case (all answers) ≤ 2"),
    ("peak_rss_gb", None, 2.5, "peak RSS < 2.5 GB"),
    ("edits_per_case", None, 1.0, "edits per case = 1 (weight methods)"),
    ("group_over_reliability", ("rome",), 1.6, "ROME whole group / reliability only ≤ 1.6"),
    ("optimised_over_naive", ("rome", "memit", "ft"), 0.3, "optimised / naive case time ≤ 0.3"),
    ("apply_forward_equivalents", ("rome",), 60.0, "ROME apply ≤ 60 forward-equivalents"),
    ("apply_forward_equivalents", ("memit",), 150.0, "MEMIT apply ≤ 150 forward-equivalents"),
    ("restore_fraction", None, 0.01, "restore < 1% of apply"),
    ("batch8_over_batch1", None, 0.35, "weight-free: batch 8 / batch 1 per-case ≤ 0.35"),
    ("full_run_minutes", ("rome",), 45.0, "ROME full test file, all tasks < 45 min (mean case s × cases)"),
]


def _figure(f: dict[str, Any], key: str) -> float | None:
    if key in ("apply_s", "case_s"):
        return f[key]["median"]
    if key == "edits_per_case":
        return f["edits"] / f["cases"] if f.get("modifies_weights") and f["cases"] else None
    if key == "restore_fraction":
        apply = f["apply_s"]["median"]
        return f["restore_s"]["median"] / apply if f.get("modifies_weights") and apply > 0 else None
    return f.get(key)


def targets_table(figures: list[dict[str, Any]]) -> str:
    """Each target against what this run measured ('—' where the run did not measure it)."""
    lines = ["| target | method | measured | met |", "|---|---|---|---|"]
    for key, methods, bound, label in TARGETS:
        for f in figures:
            if methods is not None and f["method"] not in methods:
                continue
            value = _figure(f, key)
            if value is None:
                continue
            met = value == bound if key == "edits_per_case" else value <= bound
            lines.append(f"| {label} | {f['method']} | {value:.3g} | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def environment() -> dict[str, str]:
    import os

    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": str(os.cpu_count())}
    for package in ("torch", "transformers", "lm_eval"):
        try:
            info[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing package is simply not reported
            info[package] = "?"
    return info


# Sections after this line belong to other benchmarks (scripts/edit_mode_cost.py); `bizsre bench` keeps them.
KEPT_SECTIONS = "<!-- sections below are written by other benchmarks and kept when bizsre bench rewrites the part above -->"


def kept_sections(path: Path) -> str:
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    return text[text.index(KEPT_SECTIONS):] if KEPT_SECTIONS in text else ""


def replace_section(path: Path, name: str, body: str) -> None:
    """Writes `body` as section `name` of the kept part of `path` (replacing its earlier version)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if KEPT_SECTIONS not in text:
        text = text.rstrip("\n") + "\n\n" + KEPT_SECTIONS + "\n"
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    section = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def write_outputs(result: dict[str, Any], json_path: Path, markdown_path: Path | None) -> str:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2))
    table = markdown_table(result["methods"])
    if markdown_path is not None:
        env = ", ".join(f"{k} {v}" for k, v in result["environment"].items())
        kept = kept_sections(markdown_path)
        markdown_path.write_text(
            "# Benchmarks\n\nRegenerated by `bizsre bench` (scripts/bench.py); do not edit by hand.\n\n"
            f"- command: `{result['command']}`\n- machine: {env}\n"
            f"- model: {result['model']}; test file: {result['test_file']}; cases measured per method: "
            f"{result['cases']} (+1 warm-up); tasks: {', '.join(result['tasks'])}; protocol: {result['protocol']}\n"
            f"- one-time: model load {result['model_load_s']:.1f} s; reference forward (batch of "
            f"{result['reference_batch']} prompts, no grad) {result['forward_s'] * 1000:.0f} ms\n\n"
            "Seconds are medians with (min–max) over cases; *fwd-eq* = multiples of the reference forward; "
            "*prepare* is one-time work (statistics, demonstration pools); *naive* = one edit per (case, task), "
            "gradients for all weights, logits at all positions, no activation reuse ("
            + (f"timed on {result['naive_cases']} cases" if result.get("naive_cases") else "not run") + "); *batch8/batch1* compares per-case time of weight-free methods at "
            f"batch size 8 and 1 over {result.get('batching_cases', '?')} cases; *full run min* = mean case seconds × the "
            f"test file's {result.get('test_file_cases', '?')} cases. Weight methods take cases in chunks of "
            f"{result.get('edit_batch', 1)} (`edit_batch`): work a method does for a whole chunk (ROME/MEMIT's δ "
            "optimisation) is counted in equal shares in each case's *apply* and *case* times.\n\n" + table
            + "\n## Targets\n\n" + targets_table(result["methods"])
            + ("\n" + kept if kept else "")
        )
    return table + "\n" + targets_table(result["methods"])
