"""Summary of a sequential-edits study (`bizsre sequence-study`) from its curve rows: `sequence.csv`,
`sequence.md` and `sequence_<edit_lang>.png` (F1 against the number of edits in force, log scale; one
panel per split, one colour per method, solid in the edit language and dashed in the other)."""

from __future__ import annotations

import csv
from pathlib import Path

from bizsre_tasks.report.radar import MatplotlibMissing, headless_pyplot
from bizsre_tasks.report.training_scale import figure_legend
from bizsre_tasks.report.tables import LANGUAGE_ORDER, METHOD_ORDER, method_label, ordered

SPLITS = ("reliability", "generality", "locality", "portability")
COLUMNS = ("method", "edit_lang", "edits", "split", "lang", "f1", "em", "cases")


def _sorted(rows: list[dict]) -> list[dict]:
    langs = ordered([r["edit_lang"] for r in rows], LANGUAGE_ORDER)
    methods = ordered([r["method"] for r in rows], METHOD_ORDER)
    splits = [*SPLITS, "reliability_immediate"]
    return sorted(rows, key=lambda r: (langs.index(r["edit_lang"]), methods.index(r["method"]), r["edits"],
                                       splits.index(r["split"]) if r["split"] in splits else 99, r["lang"]))


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in _sorted(rows):
            writer.writerow({key: row.get(key, "") for key in COLUMNS})
    return path


def _columns(rows: list[dict], edit_lang: str) -> list[tuple[str, str]]:
    """(split, lang) columns: reliability, then each split in the edit language and the other(s)."""
    langs = _edit_lang_first(rows, edit_lang)
    return [("reliability", edit_lang)] + [(split, lang) for split in SPLITS[1:] for lang in langs]


def _edit_lang_first(rows: list[dict], edit_lang: str) -> list[str]:
    langs = ordered([r["lang"] for r in rows], LANGUAGE_ORDER)
    return [edit_lang] + [lang for lang in langs if lang != edit_lang]


def overview(rows: list[dict]) -> list[str]:
    """One line per run: reliability F1 at every N and right after each edit, then generality and
    locality F1 after the last edit in the edit language / the other(s) -- the curve in a few numbers."""
    points = sorted({r["edits"] for r in rows})
    last = max(points)
    f1 = {(r["method"], r["edit_lang"], r["edits"], r["split"], r["lang"]): r["f1"] for r in rows}
    header = " | ".join(f"N={n}" if n == points[0] else str(n) for n in points)
    lines = [f"| Run | reliability {header} | immediate | generality@{last} | locality@{last} |",
             "|---|" + "---:|" * (len(points) + 3)]

    def value(*key) -> str:
        return "" if key not in f1 else f"{f1[key]:.1f}"

    runs = {(r["method"], r["edit_lang"]) for r in rows}
    for edit_lang in ordered([lang for _, lang in runs], LANGUAGE_ORDER):
        langs = _edit_lang_first(rows, edit_lang)
        for method in ordered([m for m, lang in runs if lang == edit_lang], METHOD_ORDER):
            run = (method, edit_lang)
            cells = [value(*run, n, "reliability", edit_lang) for n in points]
            cells.append(value(*run, last, "reliability_immediate", edit_lang))
            cells += [" / ".join(value(*run, last, split, lang) for lang in langs) for split in ("generality", "locality")]
            lines.append(f"| {method_label(method)}, edit {edit_lang} | " + " | ".join(cells) + " |")
    return lines


def markdown(rows: list[dict], plots: dict[str, Path]) -> str:
    lines = ["# Sequential-edits study", "",
             "F1 / EM in percent over the first N cases after N sequential edits (nothing restored between them). "
             "`rel. immediate`: each case's reliability answer taken right after its own edit (run's last N only).", "",
             "## Overview", "", "F1 only; generality and locality in the edit language / the other.", "",
             *overview(rows), ""]
    for edit_lang in ordered([r["edit_lang"] for r in rows], LANGUAGE_ORDER):
        mine = [r for r in rows if r["edit_lang"] == edit_lang]
        columns = _columns(mine, edit_lang)
        if edit_lang in plots:
            lines += [f"![edit in {edit_lang}]({plots[edit_lang].name})", ""]
        header = " | ".join(f"{split[:3]}. {lang}" if split != "reliability" else "rel." for split, lang in columns)
        lines += [f"## Edit in {edit_lang}", "", f"| Method | N | {header} | rel. immediate |", "|---|---:|" + "---|" * (len(columns) + 1)]
        by_point: dict[tuple[str, int], dict[tuple[str, str], dict]] = {}
        for r in mine:
            by_point.setdefault((r["method"], r["edits"]), {})[(r["split"], r["lang"])] = r
        for method, edits in sorted(by_point, key=lambda k: (ordered([m for m, _ in by_point], METHOD_ORDER).index(k[0]), k[1])):
            cells = by_point[(method, edits)]
            values = [_cell(cells.get(c)) for c in [*columns, ("reliability_immediate", edit_lang)]]
            lines.append(f"| {method_label(method)} | {edits} | " + " | ".join(values) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(row: dict | None) -> str:
    return "" if row is None else f"{row['f1']:.1f} / {row['em']:.1f}"


def write_plot(path: Path, rows: list[dict], edit_lang: str) -> Path:
    plt = headless_pyplot()
    mine = [r for r in rows if r["edit_lang"] == edit_lang]
    methods = ordered([r["method"] for r in mine], METHOD_ORDER)
    langs = ordered([r["lang"] for r in mine], LANGUAGE_ORDER)
    points = sorted({r["edits"] for r in mine})
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(SPLITS), figsize=(4.0 * len(SPLITS), 3.6), squeeze=False, sharey=True)
    for ax, split in zip(axes[0], SPLITS):
        for method in methods:
            for lang in [edit_lang] if split == "reliability" else langs:
                xy = sorted((r["edits"], r["f1"]) for r in mine if r["method"] == method and r["split"] == split and r["lang"] == lang)
                if xy:
                    ax.plot(*zip(*xy), marker="o", markersize=3.5, linewidth=1.5, linestyle="-" if lang == edit_lang else "--",
                            color=colors(METHOD_ORDER.index(method) if method in METHOD_ORDER else 9),
                            label=f"{method_label(method)} ({lang})")
        ax.set_xscale("log")
        ax.set_xticks(points)
        ax.set_xticklabels([str(p) for p in points], fontsize=8)
        ax.minorticks_off()
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.set_title(f"{split.capitalize()} — edit in {edit_lang}", fontsize=10)
        ax.set_xlabel("sequential edits", fontsize=8)
    axes[0][0].set_ylabel("F1 (%)")
    figure_legend(fig, axes, max_columns=5)
    fig.suptitle(f"Scores vs. number of sequential edits, edit language {edit_lang} (solid: edit language, dashed: other)", fontsize=11)
    fig.tight_layout(rect=(0, 0.16, 1, 0.94))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_summary(output: Path, rows: list[dict], warn=print) -> list[Path]:
    """Writes the summary files into `output`; returns them (none when there are no rows yet)."""
    if not rows:
        return []
    output.mkdir(parents=True, exist_ok=True)
    files = [write_csv(output / "sequence.csv", rows)]
    plots: dict[str, Path] = {}
    try:
        for edit_lang in ordered([r["edit_lang"] for r in rows], LANGUAGE_ORDER):
            plots[edit_lang] = write_plot(output / f"sequence_{edit_lang}.png", rows, edit_lang)
    except MatplotlibMissing as exc:
        warn(f"warning: {exc}; no plot")
    files += list(plots.values())
    (output / "sequence.md").write_text(markdown(rows, plots), encoding="utf-8")
    files.append(output / "sequence.md")
    return files
