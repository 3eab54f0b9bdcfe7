"""Summary of a training-scale study (`bizsre scale-study`) from its point files: `summary.csv`,
`summary.md` and `training_scale.png` in the manner of the paper's Figure 3 (F1 against the number
of training examples, log scale; one row of panels per edit language, one panel per metric, one
colour per method, solid in the edit language and dashed in the other language)."""

from __future__ import annotations

import csv
from pathlib import Path

from bizsre_tasks.report.radar import MatplotlibMissing, headless_pyplot
from bizsre_tasks.report.results_reader import Score
from bizsre_tasks.report.tables import (
    LANGUAGE_ORDER,
    METHOD_ORDER,
    cell,
    method_label,
    metric_columns,
    metric_label,
    ordered,
)

SPLITS = ("reliability", "generality", "locality", "portability")
PLOT_NAME = "training_scale.png"


def _score(point: dict, metric: str) -> Score | None:
    """`metric` as in the report's columns: "reliability" or "<split>_<lang>"."""
    split, lang = (metric, point["edit_lang"]) if metric == "reliability" else metric.split("_", 1)
    value = point["scores"].get(lang, {}).get(split)
    return Score(value["f1"], value["em"]) if value else None


def _sorted(points: list[dict]) -> list[dict]:
    langs = ordered([p["edit_lang"] for p in points], LANGUAGE_ORDER)
    methods = ordered([p["method"] for p in points], METHOD_ORDER)
    return sorted(points, key=lambda p: (langs.index(p["edit_lang"]), methods.index(p["method"]), p["train_size"]))


def _languages(points: list[dict]) -> list[str]:
    return ordered([lang for p in points for lang in p["scores"]], LANGUAGE_ORDER)


def size_label(size: int) -> str:
    return f"{size // 1000}K" if size >= 1000 and size % 1000 == 0 else str(size)


def write_csv(path: Path, points: list[dict]) -> Path:
    metrics = metric_columns(_languages(points))
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "edit_lang", "train_size", "cases", *(f"{m}_{k}" for m in metrics for k in ("f1", "em")),
                         "training_seconds", "evaluation_seconds", "checkpoint"])
        for p in _sorted(points):
            values = []
            for metric in metrics:
                score = _score(p, metric)
                values += ["", ""] if score is None else [f"{score.f1:.6g}", f"{score.em:.6g}"]
            writer.writerow([p["method"], p["edit_lang"], p["train_size"], p.get("cases") or "", *values,
                             p["training"].get("seconds", ""), p["evaluation"].get("wall_seconds") or "", p["training"].get("checkpoint") or ""])
    return path


def markdown(points: list[dict], plot: Path | None) -> str:
    metrics = metric_columns(_languages(points))
    lines = ["# Training-scale study", "", "F1 / EM in percent; training seconds as recorded by the trainer (IKE: no training).", ""]
    if plot is not None:
        lines += [f"![training scale]({plot.name})", ""]
    for edit_lang in ordered([p["edit_lang"] for p in points], LANGUAGE_ORDER):
        lines += [f"## Edit in {edit_lang}", "", "| Method | Examples | " + " | ".join(map(metric_label, metrics)) + " | Training s |",
                  "|---|---:|" + "---|" * len(metrics) + "---:|"]
        for p in _sorted([p for p in points if p["edit_lang"] == edit_lang]):
            cells = [cell(_score(p, m)) for m in metrics]
            lines.append(f"| {method_label(p['method'])} | {size_label(p['train_size'])} | " + " | ".join(cells) + f" | {p['training'].get('seconds', '')} |")
        lines.append("")
    return "\n".join(lines)


def figure_legend(fig, axes, max_columns: int) -> None:
    """One legend under the panels, each label once (the panels repeat the same methods)."""
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), max_columns), frameon=False, fontsize=8)


def write_plot(path: Path, points: list[dict]) -> Path:
    plt = headless_pyplot()
    edit_langs = ordered([p["edit_lang"] for p in points], LANGUAGE_ORDER)
    methods = ordered([p["method"] for p in points], METHOD_ORDER)
    languages = _languages(points)
    sizes = sorted({p["train_size"] for p in points})
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(len(edit_langs), len(SPLITS), figsize=(4.0 * len(SPLITS), 3.4 * len(edit_langs)), squeeze=False, sharey=True)
    for row, edit_lang in zip(axes, edit_langs):
        for ax, split in zip(row, SPLITS):
            for method in methods:
                series = sorted((p for p in points if p["edit_lang"] == edit_lang and p["method"] == method), key=lambda p: p["train_size"])
                for lang in languages if split != "reliability" else [edit_lang]:
                    metric = "reliability" if split == "reliability" else f"{split}_{lang}"
                    xy = [(p["train_size"], 100 * s.f1) for p in series if (s := _score(p, metric)) is not None]
                    if xy:
                        ax.plot(*zip(*xy), marker="o", markersize=3.5, linewidth=1.5, linestyle="-" if lang == edit_lang else "--",
                                color=colors(METHOD_ORDER.index(method) if method in METHOD_ORDER else 9),
                                label=f"{method_label(method)} ({lang})")
            ax.set_xscale("log")
            ax.set_xticks(sizes)
            ax.set_xticklabels([size_label(s) for s in sizes], fontsize=8)
            ax.minorticks_off()
            ax.set_ylim(-3, 103)  # lines at 0 and 100 stay visible
            ax.grid(alpha=0.3)
            ax.set_title(f"{split.capitalize()} — edit in {edit_lang}", fontsize=10)
            ax.set_xlabel("training examples", fontsize=8)
        row[0].set_ylabel("F1 (%)")
    figure_legend(fig, axes, max_columns=6)
    fig.suptitle("Performance vs. training data (solid: edit language, dashed: the other language)", fontsize=11)
    fig.tight_layout(rect=(0, 0.1 if len(edit_langs) == 1 else 0.06, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_summary(output: Path, points: list[dict], warn=print) -> list[Path]:
    """Writes the summary files into `output`; returns them (none when there are no points yet)."""
    if not points:
        return []
    output.mkdir(parents=True, exist_ok=True)
    files = [write_csv(output / "summary.csv", points)]
    plot = None
    try:
        plot = write_plot(output / PLOT_NAME, points)
        files.append(plot)
    except MatplotlibMissing as exc:
        warn(f"warning: {exc}; no plot")
    (output / "summary.md").write_text(markdown(points, plot), encoding="utf-8")
    files.append(output / "summary.md")
    return files
