"""Per-run plots: the layer profile of one eval run (AMI and probe accuracy over depth).

Pure drawing: arrays in, a matplotlib Figure out (Agg backend, no display needed).
The caller logs it as an artifact; SQL-level plots across runs live in ``queries/``.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in tests without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def layer_profile(
    layer_names: Sequence[str],
    ami: np.ndarray,
    factors: Sequence[int],
    probe_acc: Sequence[float] | None = None,
    *,
    knn_acc: Sequence[float] | None = None,
    pixel_ami: float | None = None,
    title: str = "",
) -> Figure:
    """AMI per factor (solid lines), linear-probe and k-NN accuracy (dashed) over layer index.

    ``ami`` is [L, F] (mean over superclasses), columns in the order of ``factors``.
    ``pixel_ami`` draws the raw-pixel AMI (factor 1) as a dotted baseline.
    """
    ami = np.asarray(ami, dtype=float)
    n_layers = len(layer_names)
    x = np.arange(n_layers)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * n_layers + 3.0), 4.5), dpi=110)
    cmap = plt.get_cmap("viridis")
    for j, factor in enumerate(factors):
        color = cmap(j / max(1, len(factors) - 1) * 0.85)
        ax.plot(x, ami[:, j], marker="o", ms=3.5, lw=1.6, color=color, label=f"AMI f{factor}")
    if probe_acc is not None:
        ax.plot(
            x,
            probe_acc,
            ls="--",
            marker="s",
            ms=3.5,
            lw=1.8,
            color="tab:red",
            label="linear probe acc",
        )
    if knn_acc is not None and len(knn_acc):
        ax.plot(
            x, knn_acc, ls="--", marker="^", ms=3.5, lw=1.4, color="tab:orange", label="k-NN acc"
        )
    if pixel_ami is not None and np.isfinite(pixel_ami):
        ax.axhline(pixel_ami, ls=":", lw=1.4, color="grey", label="raw pixels AMI f1")
    ax.set_xticks(x)
    if n_layers <= 10:
        ax.set_xticklabels(
            [f"{i}\n{name}" for i, name in zip(x, layer_names, strict=True)], fontsize=7
        )
    else:  # many layers: one rotated "index name" label each
        ax.set_xticklabels(
            [f"{i} {name}" for i, name in zip(x, layer_names, strict=True)],
            fontsize=7,
            rotation=60,
            ha="right",
            rotation_mode="anchor",
        )
    ax.set_xlabel("layer (index, name), input to output")
    ax.set_ylabel("score")
    top = max(1.0, float(np.nanmax(ami)) if ami.size else 1.0)
    ax.set_ylim(min(0.0, float(np.nanmin(ami)) - 0.02 if ami.size else 0.0), top + 0.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
