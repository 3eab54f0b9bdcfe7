"""`bizsre report`: reads runs, writes report.md, the CSV tables, radar PNGs and (optionally) cases."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from bizsre_tasks.errors import BizsreError
from bizsre_tasks.report import cases as case_drill
from bizsre_tasks.report import findings as paper_findings
from bizsre_tasks.report import tables
from bizsre_tasks.report.radar import MatplotlibMissing, write_radar
from bizsre_tasks.report.reference import REFERENCE_PROTOCOL, load_reference
from bizsre_tasks.report.results_reader import RunResult, load_runs

CELL_NOTE = (
    "Cells are `F1 / EM` in percent (one decimal), means over the cases of each run. Reliability is asked in the "
    "edit language; locality is the agreement of the post-edit with the pre-edit answer. Cases = test cases per run."
)
GAP_NOTE = (
    "Generality F1 in the edit language minus generality F1 in the other language, in points; positive values "
    "mean the edit carries over less to the other language."
)
FORGETTING_NOTE = (
    "edit_mode=sequential: reliability of each case's edit after the whole sequence, beside the same question "
    "answered right after that case's own edit (`f1_immediate`); the difference is what the later edits undid."
)
FINDINGS_NOTE = (
    "The paper's four findings as tests on these runs' F1 scores; the criteria are in `bizsre_tasks/report/findings.py` "
    "(docs/cli.md). A finding whose runs are missing is not decided."
)
PAPER = 'Wang et al., "Cross-Lingual Knowledge Editing in Large Language Models", Tables 2 and 4'


@dataclass
class ReportOptions:
    inputs: list[Path]
    out: Path
    reference: Path | None = None  # None: no comparison
    reference_backbones: list[str] = field(default_factory=list)  # empty: all in the TSV
    cases: bool = False
    skip_incomplete: bool = False


@dataclass
class Report:
    markdown: str  # everything in report.md
    summary: str  # the Table 2 layout of each backbone, for the terminal
    files: list[Path]
    runs: list[RunResult]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def group_runs(runs: list[RunResult]) -> dict[tuple[str, str, str], list[RunResult]]:
    """(backbone, protocol, edit mode) -> its runs: a sequential run is another experiment than a single one."""
    groups: dict[tuple[str, str, str], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.backbone, run.protocol, run.edit_mode), []).append(run)
    return dict(sorted(groups.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] != "single", item[0][2])))


def _select_reference(options: ReportOptions) -> dict[str, list[RunResult]]:
    if options.reference is None:
        return {}
    reference = load_reference(options.reference)
    unknown = [name for name in options.reference_backbones if name not in reference]
    if unknown:
        raise BizsreError(f"backbone(s) {', '.join(unknown)} not in {options.reference}; it has: {', '.join(reference)}")
    chosen = options.reference_backbones or list(reference)
    return {name: reference[name] for name in chosen}


def _display_path(path: Path, out: Path) -> str:
    return os.path.relpath(path, out) if path.is_absolute() == out.is_absolute() else str(path)


@dataclass
class _Parts:
    """What the backbone sections add up to, besides report.md."""

    files: list[Path] = field(default_factory=list)
    table_csv: list = field(default_factory=list)
    gap_csv: list = field(default_factory=list)
    compare_csv: list = field(default_factory=list)
    forgetting_csv: list = field(default_factory=list)
    findings_csv: list = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    case_md: list[str] = field(default_factory=list)
    case_groups: list = field(default_factory=list)


def build_report(options: ReportOptions, warn=print) -> Report:
    runs = load_runs(options.inputs, skip_incomplete=options.skip_incomplete, warn=warn)
    reference = _select_reference(options)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    everything = runs + [r for refs in reference.values() for r in refs]
    # Shared by every section, so the CSV rows of all backbones have the same columns.
    languages, directions = tables.languages_of(everything), tables.gap_directions(everything)
    parts = _Parts()
    md = ["# Bi-ZsRE results", "", f"From {len(runs)} lm-eval run(s) under {', '.join(map(str, options.inputs))}.", "", CELL_NOTE, ""]
    for (backbone, protocol, mode), group in group_runs(runs).items():
        md += _backbone_section(backbone, protocol, mode, group, reference, languages, directions, options, parts, warn)
    if reference:
        md += [f"## Published numbers ({PAPER})", "", "Teacher-forced decoding, as in the paper.", ""]
        for ref_backbone, refs in reference.items():
            radar = _radar(refs, languages, f"{ref_backbone} (published)", out / f"radar_paper_{slug(ref_backbone)}.png", parts.files, warn)
            md += [f"### {ref_backbone}", "", tables.to_markdown(tables.results_table(refs, languages)), radar, ""]
            md += ["The same finding criteria applied to the published numbers:", "",
                   paper_findings.to_markdown(paper_findings.evaluate(refs)), ""]
    parts.files += _write_tables(out, parts.table_csv, parts.gap_csv, parts.compare_csv, parts.forgetting_csv, parts.findings_csv)
    if options.cases:
        path = out / "cases.md"
        path.write_text("# Edits that held in the edit language but not in the other\n\n" + "\n".join(parts.case_md), encoding="utf-8")
        case_drill.write_cases_csv(out / "cases.csv", parts.case_groups)
        parts.files += [path, out / "cases.csv"]
    report_md = out / "report.md"
    report_md.write_text("\n".join(md), encoding="utf-8")
    return Report("\n".join(md), "\n".join(parts.summary), [report_md, *parts.files], runs)


def _backbone_section(backbone, protocol, mode, group, reference, languages, directions, options, parts: _Parts, warn) -> list[str]:
    labels = {"Backbone": backbone, "Protocol": protocol, "Edit mode": mode}
    title = f"{backbone}, protocol {protocol}" + ("" if mode == "single" else f", edit_mode {mode}")
    figure = f"radar_{slug(backbone)}_{protocol}" + ("" if mode == "single" else f"_{slug(mode)}")
    main, gaps = tables.results_table(group, languages), tables.gap_table(group, reference, directions)
    parts.table_csv.append((labels, main))
    parts.gap_csv.append((labels, gaps))
    parts.summary += [f"{title}:", tables.to_markdown(main)]
    radar = _radar(group, languages, title, options.out / f"{figure}.png", parts.files, warn)
    md = [f"## {title}", "", tables.to_markdown(main), radar, ""]
    forgetting = tables.forgetting_table(group)
    if forgetting.rows:
        parts.forgetting_csv.append((labels, forgetting))
        md += ["### Reliability right after each edit", "", FORGETTING_NOTE, "", tables.to_markdown(forgetting), ""]
    md += ["### Cross-lingual gap (generality F1)", "", GAP_NOTE, "", tables.to_markdown(gaps)]
    if mode == "single":
        measured = paper_findings.evaluate(group)
        parts.findings_csv.append((labels, paper_findings.to_table(measured)))
        md += ["", "### The paper's findings, measured here", "", FINDINGS_NOTE, "", paper_findings.to_markdown(measured), ""]
    if mode != "single" and reference:
        md += ["", f"(No comparison with the published numbers: the paper edits each case alone; these runs used edit_mode {mode}.)"]
        reference = {}
    for ref_backbone, refs in reference.items():
        comparison = tables.comparison_table(group, refs, languages)
        parts.compare_csv.append(({**labels, "Paper backbone": ref_backbone}, comparison))
        md += [f"### Ours beside the published numbers for {ref_backbone}", ""]
        if protocol != REFERENCE_PROTOCOL:
            md += [f"Note: the paper used protocol {REFERENCE_PROTOCOL}; these runs used {protocol}.", ""]
        md.append(tables.to_markdown(comparison))
    md += ["### Runs", "", "| Edit | Method | Cases | Results file |", "|---|---|---|---|"]
    md += [f"| {r.edit_lang} | {tables.method_label(r.method)} | {r.cases or tables.MISSING} | {_display_path(r.path, options.out)} |"
           for r in tables.sort_runs(group)]
    md.append("")
    if options.cases:
        text, items = case_drill.cases_markdown(title, group)
        parts.case_md.append(text)
        parts.case_groups.append(({"backbone": backbone, "protocol": protocol, "edit_mode": mode}, items))
    return md


def _radar(runs: list[RunResult], languages: list[str], title: str, path: Path, files: list[Path], warn) -> str:
    """Writes one chart; returns its Markdown image line ('' when matplotlib is missing: the tables still come)."""
    try:
        files.append(write_radar(runs, languages, title, path))
    except MatplotlibMissing as exc:
        warn(f"warning: {exc}; no radar chart")
        return ""
    return f"![radar chart]({path.name})"


def _write_tables(out: Path, table_csv, gap_csv, compare_csv, forgetting_csv, findings_csv) -> list[Path]:
    written = []
    for name, content in (("table2.csv", table_csv), ("gap.csv", gap_csv), ("comparison.csv", compare_csv),
                          ("forgetting.csv", forgetting_csv), ("findings.csv", findings_csv)):
        if content:
            tables.write_csv(out / name, content)
            written.append(out / name)
    return written
