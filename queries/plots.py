"""Figures of the canned queries: DataFrame in, matplotlib Figure out.

Each plot draws the rows of one canned query (`PLOTS` maps plot name -> query,
default parameters and drawing function), so a figure shows exactly what
`clusterprobe query NAME` prints. One line per design (the query's design_key,
labelled with its ``design`` text: the params that tell the store's designs apart);
bands and error bars are the query's 95% intervals (ci_lo..ci_hi; single-run groups
have none), except norm_peak_shift's, which are one standard deviation of the peak
depth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _label(row: pd.Series, keys: list[str]) -> str:
    parts = []
    for key in keys:
        value = row[key]
        if key == "shuffled":
            parts.append("shuffled" if value else "natural")
        elif value is not None and not (isinstance(value, float) and np.isnan(value)):
            parts.append(str(value))
    return " ".join(parts) or "all"


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in this store yet", ha="center", va="center")
    ax.set_axis_off()


def _varying(df: pd.DataFrame, keys: list[str]) -> list[str]:
    return [k for k in keys if k in df and df[k].nunique(dropna=False) > 1]


def _lines(ax, df: pd.DataFrame, keys: list[str], x: str, y: str = "mean") -> None:
    """One line per design x ``keys``, labelled by the design text (else the columns
    ``keys`` and the design's own columns), with its 95% interval as a band."""
    fallback = _varying(df, ["dataset", "arch", "shuffled", "labels"]) or ["arch"]
    for _, group in df.groupby(["design", "design_key", *keys], dropna=False, sort=True):
        group = group.sort_values(x)
        first = group.iloc[0]
        extra = _label(first, _varying(df, keys)) if _varying(df, keys) else ""
        name = first["design"] or _label(first, fallback)
        label = f"{name} {extra}".strip()
        (line,) = ax.plot(group[x], group[y], marker="o", ms=3, label=label)
        lo = group["ci_lo"].astype(float).to_numpy()
        hi = group["ci_hi"].astype(float).to_numpy()
        if np.any(np.isfinite(lo) & np.isfinite(hi)):
            ax.fill_between(group[x], lo, hi, color=line.get_color(), alpha=0.15)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)


def layer_profile(df: pd.DataFrame, ax) -> None:
    """Clustering metric over relative depth, one line per design group."""
    if df.empty:
        return _empty(ax, "eval runs")
    _lines(ax, df, ["metric", "factor"], "relative_depth")
    metric = "/".join(sorted(df["metric"].dropna().unique()))
    ax.set(
        xlabel="relative depth ((layer index + 1) / layers)", ylabel=f"{metric} (mean over runs)"
    )


def natural_vs_shuffled(df: pd.DataFrame, ax) -> None:
    df = df[df["layer_index"].notna()]
    if df.empty:
        return _empty(ax, "eval runs")
    _lines(ax, df, ["factor"], "relative_depth")
    ax.set(xlabel="relative depth", ylabel="AMI (mean over runs)", title="natural vs shuffled")


def architectures_by_depth(df: pd.DataFrame, ax) -> None:
    if df.empty:
        return _empty(ax, "eval runs")
    df = df.assign(depth=(df["depth_lo"] + df["depth_hi"]) / 2)
    _lines(ax, df, ["factor"], "depth")
    ax.set(xlabel="relative depth (bin centre)", ylabel="AMI (mean over runs)")


def norm_peak_shift(df: pd.DataFrame, ax) -> None:
    if df.empty:
        return _empty(ax, "eval runs")
    labels = [f"{r.arch_base} {r.norm}" for r in df.itertuples()]
    if df["design_key"].nunique() > df[["arch_base", "norm"]].drop_duplicates().shape[0]:
        labels = [r.design or r.design_key for r in df.itertuples()]
    x = np.arange(len(df))
    ax.bar(x, df["peak_depth_mean"], yerr=df["peak_depth_std"].fillna(0.0), capsize=3)
    for xi, value, n in zip(x, df["peak_value_mean"], df["n"], strict=True):
        ax.annotate(f"AMI {value:.2f}\nn={n}", (xi, 0.02), ha="center", fontsize=7)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="peak layer (relative depth)", ylim=(0, 1.05), title="peak-layer shift")


def clusterability_vs_probe(df: pd.DataFrame, ax) -> None:
    """Scatter of per-layer AMI against probe accuracy (rows from the `pairs` SQL)."""
    if df.empty:
        return _empty(ax, "layers with both AMI and probe accuracy")
    for arch, group in df.groupby("arch", dropna=False):
        ax.scatter(group["probe_acc"], group["ami"], s=10, alpha=0.6, label=str(arch))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set(xlabel="linear-probe accuracy", ylabel="AMI", title="clusterability vs probe")


def seed_stability(df: pd.DataFrame, ax) -> None:
    """Layer x layer ARI heatmap of the first design."""
    if df.empty:
        return _empty(ax, "ARI tables (ari.parquet)")
    first = df.iloc[0]
    df = df[(df["design_key"] == first["design_key"]) & (df["kind"] == first["kind"])]
    n = int(max(df["layer_a"].max(), df["layer_b"].max())) + 1
    grid = np.full((n, n), np.nan)
    for r in df.itertuples():
        grid[int(r.layer_a), int(r.layer_b)] = r.mean
        if np.isnan(grid[int(r.layer_b), int(r.layer_a)]):
            grid[int(r.layer_b), int(r.layer_a)] = r.mean
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="lower")
    ax.figure.colorbar(image, ax=ax, label="ARI (mean)")
    ax.set(
        xlabel="layer",
        ylabel="layer",
        title=f"ARI {first['kind']}: {first['design'] or first['arch']}",
    )


def layer_cka(df: pd.DataFrame, ax) -> None:
    """Layer x layer CKA heatmap (mean over a design's runs) of the first (design,
    estimator) group (rows from CKA_SQL)."""
    if df.empty:
        return _empty(ax, "layer x layer CKA tables")
    keys = ["design_key", "estimator"]
    first = df.iloc[0]
    df = df[(df[keys] == first[keys]).all(axis=1)]
    n = int(max(df["layer_a"].max(), df["layer_b"].max())) + 1
    grid = np.full((n, n), np.nan)
    grid[df["layer_a"].astype(int), df["layer_b"].astype(int)] = df["mean"]
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="lower")
    ax.figure.colorbar(image, ax=ax, label=f"{first['estimator']} CKA (mean over runs)")
    ax.set(
        xlabel="layer",
        ylabel="layer",
        title=f"CKA: {first['dataset']} {first['design'] or first['arch']}"
        f" (n = {int(df['n'].max())} runs)",
    )


def training_dynamics(df: pd.DataFrame, ax) -> None:
    df = df[df["layer_index"].isna()]  # each run's best layer
    if df.empty:
        return _empty(ax, "eval runs with checkpoint_epoch")
    _lines(ax, df, ["factor"], "checkpoint_epoch")
    ax.set(xlabel="checkpoint epoch", ylabel="best-layer AMI (mean over runs)")


def design_effects(df: pd.DataFrame, ax) -> None:
    """Mean matched-pair difference per choice x level pair, ranked, with its interval."""
    if df.empty:
        return _empty(ax, "pairs of runs one design choice apart")
    df = df.sort_values("rank", ascending=False)
    y = np.arange(len(df))
    lo = (df["mean_diff"] - df["ci_lo"]).astype(float).fillna(0.0).to_numpy()
    hi = (df["ci_hi"] - df["mean_diff"]).astype(float).fillna(0.0).to_numpy()
    ax.barh(y, df["mean_diff"], xerr=np.vstack([lo, hi]), capsize=3)
    labels = [f"{r.choice}: {r.level_a} -> {r.level_b} (n={r.n})" for r in df.itertuples()]
    ax.set_yticks(y, labels, fontsize=7)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.grid(alpha=0.3, axis="x")
    ax.set(xlabel="best-layer difference, level b - level a (95% interval)", title="design effects")


# Scatter points for clusterability_vs_probe: one row per (run, layer), over the runs
# the query reads.
PAIRS_SQL = """
SELECT s.run_id, e.dataset, e.arch, s.layer_index,
       max(s.value) FILTER (WHERE s.metric = 'ami' AND s.factor = 1) AS ami,
       max(s.value) FILTER (WHERE s.metric = 'probe_acc') AS probe_acc
FROM layer_scores s JOIN final_evals e USING (run_id)
GROUP BY ALL HAVING ami IS NOT NULL AND probe_acc IS NOT NULL
"""


# Cells of the layer_cka heatmap: each final in-domain eval run's layer x layer CKA
# (mean over superclasses), averaged over the runs of one design.
CKA_SQL = """
SELECT e.design_key, e.design, e.dataset, e.arch, e.shuffled, c.estimator, c.layer_a,
       c.layer_b, avg(c.value) AS mean, count(*) AS n
FROM cka c JOIN final_evals e USING (run_id)
WHERE c.kind = 'layer' AND c.superclass IS NULL
GROUP BY ALL
ORDER BY e.dataset, e.arch, e.design, c.estimator, c.layer_a, c.layer_b
"""


@dataclass(frozen=True)
class Plot:
    query: str | None  # canned query whose rows are drawn (None: `sql` below)
    draw: Callable[[pd.DataFrame, object], None]
    params: dict = field(default_factory=dict)  # defaults for the query's parameters
    sql: str | None = None


PLOTS: dict[str, Plot] = {
    "layer_profile": Plot("layer_profile", layer_profile, {"metric": "ami", "factor": 1}),
    "natural_vs_shuffled": Plot("natural_vs_shuffled", natural_vs_shuffled),
    "architectures_by_depth": Plot("architectures_by_depth", architectures_by_depth),
    "norm_peak_shift": Plot("norm_peak_shift", norm_peak_shift),
    "clusterability_vs_probe": Plot(None, clusterability_vs_probe, sql=PAIRS_SQL),
    "seed_stability": Plot("seed_stability", seed_stability, {"kind": "layer"}),
    "layer_cka": Plot(None, layer_cka, sql=CKA_SQL),
    "training_dynamics": Plot("training_dynamics", training_dynamics),
    "design_effects": Plot("design_effects", design_effects),
}


def figure(name: str, df: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    PLOTS[name].draw(df, ax)
    return fig
