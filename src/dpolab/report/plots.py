"""The report's plots: training curves of several runs and the evaluation results' charts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpolab.analysis.plots import new_figure, save_figure
from dpolab.report.runs import Run, peak

SPLIT_STYLE = {"eval": "-", "train": ":"}


def plot_curves(
    runs: Sequence[Run],
    key: str,
    path: str | os.PathLike,
    *,
    splits=("eval", "train"),
    mark_peak: bool = False,
    title: str | None = None,
) -> Path | None:
    """One metric over steps, a line per run and split; with `mark_peak`, a star on each run's
    highest eval value. None when no run logged the metric."""
    fig, ax = new_figure()
    drawn = False
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        for split in splits:
            steps, values = run.series(key, split)
            if not steps:
                continue
            drawn = True
            label = f"{run.name} ({split})"
            if mark_peak and split == "eval":
                # the peak's value goes in the legend: labels beside the stars overlap when runs
                # peak at the same step
                step, value = peak(steps, values)
                ax.plot([step], [value], marker="*", markersize=14, color=color, markeredgecolor="black")
                label = f"{run.name} (eval; ★ peak {value:.3f} @ {step:g})"
            ax.plot(
                steps,
                values,
                SPLIT_STYLE.get(split, "-"),
                color=color,
                marker="." if split == "eval" else None,
                label=label,
            )
    if not drawn:
        return None
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title or key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_layer_curves(run: Run, metric: str, layers: Sequence[int], path: str | os.PathLike) -> Path | None:
    """`layers/<k>/<metric>` over steps for each logged layer k, with the final layer's `<metric>`."""
    split = "eval" if any(run.series(f"layers/{k}/{metric}", "eval")[0] for k in layers) else "train"
    fig, ax = new_figure()
    for k in layers:
        steps, values = run.series(f"layers/{k}/{metric}", split)
        if steps:
            ax.plot(steps, values, marker=".", label=f"layer {k}")
    steps, values = run.series(metric, split)
    if steps:
        ax.plot(steps, values, "--", color="black", label="final layer")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{run.name}: {metric} per layer ({split})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_winrates(rows: Sequence[tuple[str, dict[str, Any]]], path: str | os.PathLike) -> Path:
    """Stacked bars of win / tie / loss fractions, one bar per (label, winrate result), top to
    bottom; on each, the win rate (ties as half) with its bootstrap 95 % interval (`ci95`)."""
    fig, ax = new_figure(7.5, max(2.0, 0.5 * len(rows) + 1.2))
    y = [len(rows) - 1 - i for i in range(len(rows))]  # the first result on top
    left = [0.0] * len(rows)
    for key, name, color in (
        ("win_fraction", "win", "#4c9a2a"),
        ("tie_fraction", "tie", "#bbbbbb"),
        ("loss_fraction", "loss", "#c0392b"),
    ):
        widths = [r.get(key) or 0.0 for _, r in rows]
        ax.barh(y, widths, left=left, color=color, label=name)
        left = [a + b for a, b in zip(left, widths)]
    draw_win_rate_intervals(ax, y, [r for _, r in rows], horizontal=True)
    for pos, (_, r) in zip(y, rows):
        if r.get("win_rate") is not None:
            ci = r.get("ci95")
            ax.annotate(
                f"win rate {r['win_rate']:.3f}" + (f"\n95% CI [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""),
                (1.0, pos),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
    ax.set_yticks(y, [label for label, _ in rows], fontsize=8)
    ax.set_xlim(0, 1.45)  # room for the labels right of the bars
    ax.set_xticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel("fraction of judged pairs")
    ax.set_title("Pairwise judging (both orders; disagreement = tie)")
    # beside the axes: inside, it covered the win-rate labels
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path)


def draw_win_rate_intervals(
    ax, positions: Sequence[float], results: Sequence[dict[str, Any]], *, horizontal: bool
):
    """Each result's win rate as a black dot with its 95 % interval (`ci95`) as an error bar, at
    the given bar positions (bars along x when `horizontal`, else along y)."""
    for pos, r in zip(positions, results):
        rate, ci = r.get("win_rate"), r.get("ci95")
        if rate is None:
            continue
        error = [[rate - ci[0]], [ci[1] - rate]] if ci else None
        x, y = (rate, pos) if horizontal else (pos, rate)
        kind = {"xerr": error} if horizontal else {"yerr": error}
        ax.errorbar(x, y, **kind, fmt="o", color="black", markersize=4, capsize=4, linewidth=1.2, zorder=3)
    ax.plot([], [], "o-", color="black", markersize=4, label="win rate, 95% CI")


def plot_forgetting(rows: Sequence[tuple[str, dict[str, Any]]], path: str | os.PathLike) -> Path:
    """Token loss of each model beside its reference's."""
    import numpy as np

    fig, ax = new_figure(max(5.0, 1.4 * len(rows) + 2))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["reference"]["loss"] for _, r in rows], 0.4, label="reference", color="#999999")
    ax.bar(x + 0.2, [r["model"]["loss"] for _, r in rows], 0.4, label="model", color="#2a6f9a")
    ax.set_xticks(x, [label for label, _ in rows], fontsize=8)
    ax.set_ylabel("mean token loss (nats)")
    ax.set_title("Forgetting on held-out text")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
