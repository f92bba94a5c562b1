"""Per-layer scores: what every eval run records about its layers, whoever measured them.

:class:`LayerScores` holds AMI and purity per (layer, superclass, factor), and the
layer-level accuracies; from it come the per-layer metric series (step = layer
index), the summary metrics the MLflow UI sorts on, and the table a command prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from clusterprobe.tracker import conventions as cv


def relative_depth(index: int, num_layers: int) -> float:
    """Layer ``index`` (0-based) of ``num_layers``: 1/L for the first, 1.0 for the last."""
    return (index + 1) / num_layers


@dataclass
class LayerScores:
    """Clusterability of every layer of one model on one evaluation set."""

    layer_names: list[str]
    superclasses: list  # superclass ids; [None]: one whole-dataset clustering
    factors: tuple[int, ...]  # clusters per subclass; always holds 1 (best_ami is defined on it)
    ami: np.ndarray  # float64 [L, S, F]
    purity: np.ndarray  # float64 [L, S, F]
    probe_acc: list[float] = field(default_factory=list)  # per layer; empty: not measured
    knn_acc: list[float] = field(default_factory=list)  # per layer; empty: not measured
    pixel_ami_f1: float | None = None  # raw pixels clustered the same way, factor 1

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    def mean_ami(self) -> np.ndarray:
        return self.ami.mean(axis=1)  # [L, F], the mean over superclasses

    def mean_purity(self) -> np.ndarray:
        return self.purity.mean(axis=1)

    def series(self) -> dict[str, list[float]]:
        """Metric name -> value per layer (step = layer index)."""
        mean_ami, mean_purity = self.mean_ami(), self.mean_purity()
        out: dict[str, list[float]] = {}
        for k, f in enumerate(self.factors):
            out[cv.ami_metric(f)] = [float(v) for v in mean_ami[:, k]]
            out[cv.purity_metric(f)] = [float(v) for v in mean_purity[:, k]]
        if self.probe_acc:
            out[cv.PROBE_METRIC] = [float(v) for v in self.probe_acc]
        if self.knn_acc:
            out[cv.KNN_METRIC] = [float(v) for v in self.knn_acc]
        return out

    def summary(self) -> dict[str, float]:
        """The summary metrics (``cv.SUMMARY_METRICS``): best layer at factor 1 (ties: the
        shallower), best probe and k-NN accuracy, the pixel baseline."""
        ami_f1 = self.mean_ami()[:, self.factors.index(1)]
        best = int(np.nanargmax(ami_f1))
        out = {"best_ami": float(ami_f1[best]), "best_layer": float(best)}
        if len(self.probe_acc):
            out["best_probe_acc"] = float(np.nanmax(self.probe_acc))
        if len(self.knn_acc):
            out["best_knn_acc"] = float(np.nanmax(self.knn_acc))
        if self.pixel_ami_f1 is not None:
            out["pixel_ami_f1"] = float(self.pixel_ami_f1)
        return out

    def rows(self) -> list[dict]:
        """One dict per layer: index, name, relative_depth, ami_f1, purity_f1, probe_acc and
        knn_acc (NaN where not measured)."""
        f1 = list(self.factors).index(1)
        mean_ami, mean_purity = self.mean_ami(), self.mean_purity()
        n = self.num_layers
        return [
            {
                "index": i,
                "name": name,
                "relative_depth": relative_depth(i, n),
                "ami_f1": float(mean_ami[i, f1]),
                "purity_f1": float(mean_purity[i, f1]),
                "probe_acc": float(self.probe_acc[i]) if len(self.probe_acc) else float("nan"),
                "knn_acc": float(self.knn_acc[i]) if len(self.knn_acc) else float("nan"),
            }
            for i, name in enumerate(self.layer_names)
        ]


def format_layers(rows: list[dict]) -> str:
    """The per-layer table the commands print (a probe not run shows as '-')."""
    width = max([len("name")] + [len(str(r["name"])) for r in rows])
    lines = [
        f"{'layer':>5}  {'name':<{width}}  {'AMI f1':>7}  {'purity f1':>9}  {'probe acc':>9}"
        f"  {'kNN acc':>7}"
    ]
    for r in rows:
        probe, knn = (r.get(key, float("nan")) for key in ("probe_acc", "knn_acc"))
        probe_text = "-" if probe != probe else f"{probe:.3f}"  # NaN: no probe
        knn_text = "-" if knn != knn else f"{knn:.3f}"
        lines.append(
            f"{r['index']:>5}  {r['name']:<{width}}  {r['ami_f1']:>7.3f}  "
            f"{r['purity_f1']:>9.3f}  {probe_text:>9}  {knn_text:>7}"
        )
    return "\n".join(lines)
