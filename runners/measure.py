"""Measure one checkpoint on the eval split: pure results, nothing stored.

``measure`` embeds the eval images (``embed.embed_eval``), clusters every layer
inside every superclass (``cluster.cluster_protocol``) and fits the linear probes
(``probe.probe_layers``); a :class:`Measurement` holds what they return, with the
per-layer table and summary metrics an eval run records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from clusterprobe.runners.config import RunConfig


@dataclass
class Measurement:
    """One checkpoint measured on the eval split (pure results, nothing stored yet)."""

    layer_names: list[str]
    factors: tuple[int, ...]
    ami: np.ndarray  # [L, S, F]
    purity: np.ndarray  # [L, S, F]
    superclasses: list[int]
    probe_acc: list[float]  # per layer
    pixel_ami_f1: float
    embedding: object  # runners.embed.Embedding
    protocol: object  # runners.cluster.ProtocolResult
    cluster_params: dict
    seconds: dict[str, float]
    knn_acc: list[float] = field(default_factory=list)  # per layer

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    def mean_ami(self) -> np.ndarray:
        return self.ami.mean(axis=1)  # [L, F]

    def mean_purity(self) -> np.ndarray:
        return self.purity.mean(axis=1)

    def summary(self) -> dict[str, float]:
        return summarise(
            self.mean_ami()[:, self.factors.index(1)],
            self.probe_acc,
            self.pixel_ami_f1,
            self.knn_acc,
        )

    def layers(self) -> list[dict]:
        return layer_rows(
            self.layer_names,
            self.factors,
            self.mean_ami(),
            self.mean_purity(),
            self.probe_acc,
            self.knn_acc,
        )


def layer_rows(
    layer_names, factors, mean_ami: np.ndarray, mean_purity: np.ndarray, probe_acc=(), knn_acc=()
) -> list[dict]:
    """The per-layer table a command prints: factor-1 AMI and purity (means over
    superclasses, [L, F] in), probe and k-NN accuracy (NaN where not measured)."""
    f1 = list(factors).index(1)
    n = len(layer_names)
    return [
        {
            "index": i,
            "name": name,
            "relative_depth": relative_depth(i, n),
            "ami_f1": float(mean_ami[i, f1]),
            "purity_f1": float(mean_purity[i, f1]),
            "probe_acc": float(probe_acc[i]) if len(probe_acc) else float("nan"),
            "knn_acc": float(knn_acc[i]) if len(knn_acc) else float("nan"),
        }
        for i, name in enumerate(layer_names)
    ]


def relative_depth(index: int, num_layers: int) -> float:
    return (index + 1) / num_layers


def summarise(
    ami_f1: np.ndarray, probe_acc, pixel_ami_f1: float | None, knn_acc=None
) -> dict[str, float]:
    """The eval run's summary metrics (tracker.conventions.SUMMARY_METRICS)."""
    ami_f1 = np.asarray(ami_f1, dtype=float)
    best = int(np.nanargmax(ami_f1))
    out = {"best_ami": float(ami_f1[best]), "best_layer": float(best)}
    if probe_acc is not None and len(probe_acc):
        out["best_probe_acc"] = float(np.nanmax(probe_acc))
    if knn_acc is not None and len(knn_acc):
        out["best_knn_acc"] = float(np.nanmax(knn_acc))
    if pixel_ami_f1 is not None:
        out["pixel_ami_f1"] = float(pixel_ami_f1)
    return out


def probe_indices(labels, per_subclass: int, seed: int) -> np.ndarray:
    """Up to ``per_subclass`` train images of every subclass, seeded, in index order."""
    rng = np.random.default_rng(seed)
    picks = []
    for k in np.unique(labels.subclass):
        idx = np.flatnonzero(labels.subclass == k)
        picks.append(rng.permutation(idx)[:per_subclass])
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


# --- measurement: one checkpoint, pure results ------------------------------------------


def measure(
    model, config: RunConfig, data, device, *, probe_index: np.ndarray, quiet: bool = False
) -> Measurement:
    """Embed the eval split, cluster every layer per superclass, probe every layer."""
    from clusterprobe.runners.engine.cluster import cluster_protocol
    from clusterprobe.runners.engine.embed import embed_eval, pooled_features
    from clusterprobe.runners.engine.probe import knn_layers, probe_layers
    from clusterprobe.runners.models import layer_taps

    factors = tuple(sorted(set(config.factors) | {1}))  # f1 always: best_ami is defined on it
    model.eval()
    taps = layer_taps(model, config)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    emb = embed_eval(
        model,
        taps,
        data.eval,
        data.eval_labels,
        device=device,
        precision=config.precision,
        batch_size=config.batch_size,
        quiet=quiet,
    )
    seconds["embed"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sub = {s: data.eval_labels.subclass[idx] for s, idx in emb.eval_index.items()}
    result = cluster_protocol(emb.grams, sub, factors)
    pixels = cluster_protocol(emb.pixel_grams, sub, (1,))
    pixel_ami = float(np.mean(pixels.ami))  # [1, S, 1]: one "layer", factor 1
    seconds["cluster"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    probe_acc: list[float] = []
    knn_acc: list[float] = []
    if len(probe_index):
        train_pooled = pooled_features(
            model,
            taps,
            data.train_plain,
            probe_index,
            device=device,
            precision=config.precision,
            batch_size=config.batch_size,
        )
        probe_acc = [
            float(a)
            for a in probe_layers(
                train_pooled,
                data.train_labels.subclass[probe_index],
                emb.pooled,
                data.eval_labels.subclass,
                seed=config.seed,
            )
        ]
        knn_acc = knn_layers(
            train_pooled,
            data.train_labels.subclass[probe_index],
            emb.pooled,
            data.eval_labels.subclass,
        )
    seconds["probe"] = time.perf_counter() - t0

    return Measurement(
        layer_names=list(emb.layer_names),
        factors=factors,
        ami=np.asarray(result.ami, dtype=float),
        purity=np.asarray(result.purity, dtype=float),
        superclasses=list(result.superclasses),
        probe_acc=probe_acc,
        pixel_ami_f1=pixel_ami,
        embedding=emb,
        protocol=result,
        cluster_params=dict(getattr(result, "params", {}) or {}),
        seconds=seconds,
        knn_acc=knn_acc,
    )
