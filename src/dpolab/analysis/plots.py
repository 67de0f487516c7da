"""Plots of the analysis results, drawn from their JSON dicts (so the report can redraw them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Plots are drawn at 100 pixels per inch of figure, and saved with PIXEL_RATIO times as many pixels
# (200 per inch): shown at their drawn size (the report's HTML sets each image's width), they stay
# sharp on screens with 2 device pixels per CSS pixel.
DISPLAY_DPI = 100
PIXEL_RATIO = 2


def new_figure(width: float = 6.4, height: float = 4.0):
    """A matplotlib figure and axes on the non-interactive Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DISPLAY_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def save_figure(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DISPLAY_DPI * PIXEL_RATIO)
    return path


def plot_layers(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """DPO likelihood against layer, one line per model (Intermediate DPO, Fig. 3)."""
    fig, ax = new_figure()
    for name, metrics in result["models"].items():
        ax.plot(result["layers"], metrics["dpo_likelihood"], marker="o", markersize=3, label=name)
    ax.axhline(-0.693147, color="grey", linewidth=0.8, linestyle="--", label="reference (log ½)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("DPO likelihood  mean log σ(β(Δw − Δl))")
    ax.set_title(f"Layer-wise DPO likelihood (β = {result['beta']}, {result['n_pairs']} pairs)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_tokens(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Bars of the mean per-token log-prob before and from the first differing token, per model (Smaug, Fig. 3)."""
    import numpy as np

    names = list(result["models"])
    spans = [
        ("chosen_before_m", "chosen, before m"),
        ("chosen_from_m", "chosen, from m"),
        ("rejected_from_m", "rejected, from m"),
    ]
    fig, ax = new_figure(max(6.4, 1.6 * len(names) + 2))
    x = np.arange(len(names))
    width = 0.8 / len(spans)
    for i, (key, label) in enumerate(spans):
        values = [result["models"][n][key]["mean"] for n in names]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(x + (i - 1) * width, heights, width, label=label)
        for bar, value in zip(bars, values):
            ax.annotate(
                "n/a" if value is None else f"{value:.2f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="top" if bar.get_height() < 0 else "bottom",
                fontsize=7,
            )
    ax.set_xticks(x, names)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel("mean per-token log-prob")
    ax.set_title(f"Log-probs around the first differing token m ({result['n_pairs']} pairs)")
    # beside the axes: inside, it covered the last model's bars
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path)
