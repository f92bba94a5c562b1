"""The report's figures: arrays in, matplotlib Figures out (Agg, no display).

The layer profile itself is ``runners.plots.layer_profile`` (also logged as
layer_profile.png); these are the report's other views of a run and of a study.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: servers and tests have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

ANNOTATE_MAX = 12  # write the value in each cell up to this many rows and columns


def heatmap(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    value_label: str,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
) -> Figure:
    """``matrix`` [rows, cols] as coloured cells (values written in small matrices)."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"matrix of shape {matrix.shape} for {len(row_labels)} rows x {len(col_labels)} "
            "columns of labels"
        )
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 0.42 * cols + 2.5), max(3.0, 0.32 * rows + 1.8)))
    im = ax.imshow(matrix, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(cols))
    ax.set_xticklabels(col_labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_yticks(range(rows))
    ax.set_yticklabels(row_labels, fontsize=7)
    if rows <= ANNOTATE_MAX and cols <= ANNOTATE_MAX:
        mid = np.nanmean(matrix) if np.isfinite(matrix).any() else 0.0
        for i in range(rows):
            for j in range(cols):
                v = matrix[i, j]
                if np.isfinite(v):
                    color = "white" if v < mid else "black"
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color=color)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=value_label, fraction=0.04)
    fig.tight_layout()
    return fig


def optimisation_history(
    numbers: Sequence[int], values: Sequence[float], *, objective: str, direction: str
) -> Figure:
    """Each complete trial's value and the best value so far, over the trial number."""
    numbers = np.asarray(numbers)
    values = np.asarray(values, dtype=float)
    better = np.fmax if direction == "maximize" else np.fmin
    best = better.accumulate(values) if len(values) else values
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(numbers, values, "o", color="tab:blue", label=f"trial {objective}")
    ax.step(numbers, best, where="post", color="tab:red", label=f"best so far ({direction})")
    ax.set_xlabel("trial number")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(objective)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"optimisation history: {objective}", fontsize=10)
    fig.tight_layout()
    return fig


def pareto_front(
    values: np.ndarray, on_front: Sequence[bool], numbers: Sequence[int], names: Sequence[str]
) -> Figure:
    """Complete trials on the first two objectives; the Pareto-front trials marked and
    joined, each labelled with its trial number."""
    values = np.asarray(values, dtype=float)
    front = np.asarray(on_front, dtype=bool)
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    ax.scatter(values[~front, 0], values[~front, 1], color="tab:gray", label="dominated")
    order = np.argsort(values[front, 0])
    ax.plot(
        values[front, 0][order],
        values[front, 1][order],
        "o-",
        color="tab:red",
        label="Pareto front",
    )
    for (x, y), n in zip(values, numbers, strict=True):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Pareto front (labels: trial numbers)", fontsize=10)
    fig.tight_layout()
    return fig


def importances(scores: Mapping[str, float], *, objective: str) -> Figure:
    """Parameter importances (Optuna's), the largest on top."""
    names = list(scores)[::-1]
    fig, ax = plt.subplots(figsize=(6.0, max(2.0, 0.4 * len(names) + 1.2)))
    ax.barh(names, [scores[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance for {objective}")
    ax.set_xlim(0, 1)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(f"parameter importances: {objective}", fontsize=10)
    fig.tight_layout()
    return fig
