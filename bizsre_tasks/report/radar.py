"""Radar charts in the manner of the paper's Figure 2: one polygon per method over the seven
metrics (F1, percent), one panel per edit language, one PNG per backbone."""

from __future__ import annotations

import math
from pathlib import Path

from bizsre_tasks.errors import BizsreError
from bizsre_tasks.report.results_reader import RunResult
from bizsre_tasks.report.tables import (
    METHOD_ORDER,
    method_label,
    metric_columns,
    ordered,
    sort_runs,
)

SHORT = {"reliability": "Rel.", "generality": "Gen.", "locality": "Loc.", "portability": "Port."}


def _axis_label(metric: str) -> str:
    if metric == "reliability":
        return SHORT[metric]
    split, lang = metric.split("_", 1)
    return f"{SHORT[split]} ({lang})"


class MatplotlibMissing(BizsreError):
    pass


def headless_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MatplotlibMissing("radar charts need matplotlib: pip install 'bizsre-tasks[report]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def write_radar(runs: list[RunResult], languages: list[str], title: str, path: Path) -> Path:
    plt = headless_pyplot()
    metrics = metric_columns(languages)
    angles = [2 * math.pi * i / len(metrics) for i in range(len(metrics))]
    edit_langs = ordered([run.edit_lang for run in runs], list(languages))
    methods = ordered([run.method for run in runs], METHOD_ORDER)
    colors = plt.get_cmap("tab10")
    # A method keeps its colour across panels and charts.
    color_of = {m: colors(METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER) + methods.index(m)) for m in methods}
    fig, axes = plt.subplots(1, len(edit_langs), subplot_kw={"projection": "polar"}, figsize=(5.2 * len(edit_langs), 5.6), squeeze=False)
    for ax, edit_lang in zip(axes[0], edit_langs):
        for run in sort_runs([r for r in runs if r.edit_lang == edit_lang]):
            values = [100 * run.scores[m].f1 if m in run.scores else 0.0 for m in metrics]
            color = color_of[run.method]
            ax.plot(angles + angles[:1], values + values[:1], color=color, linewidth=1.6, label=method_label(run.method))
            ax.fill(angles + angles[:1], values + values[:1], color=color, alpha=0.08)
        ax.set_xticks(angles)
        ax.set_xticklabels([_axis_label(m) for m in metrics], fontsize=9)
        ax.set_ylim(0, 100)
        ax.set_yticks([20, 40, 60, 80, 100])
        ax.set_yticklabels(["20", "40", "60", "80", "100"], fontsize=7, color="grey")
        ax.set_title(f"edit in {edit_lang}", pad=18, fontsize=11)
    handles, labels = [], []
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), frameon=False)
    fig.suptitle(f"{title} — F1 (%)", fontsize=12)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
