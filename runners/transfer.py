"""Transfer clustering: how a trained model's layers cluster an out-of-distribution set.

The paper's transfer protocol (finding 5): images of another dataset go through the
trained model, every tapped layer is reduced to pooled features (global average
pool; token mean for ViTs), L2-normalised, and clustered as one whole dataset
(no superclasses) into #classes x factor clusters, factors 1..10 by default; each
partition is scored against the transfer set's class labels (AMI, purity). The
clustering is :func:`clusterprobe.runners.engine.whole.score_whole` (exact Ward while the
distances fit memory, else two-stage), so every number records how it was made.

Pure results here; ``commands/transfer.py`` reads the checkpoint from the store and
records them as an eval run nested under the train run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

DEFAULT_FACTORS = tuple(range(1, 11))


@dataclass
class TransferResult:
    """Scores of every layer on one transfer set."""

    layer_names: list[str]
    factors: tuple[int, ...]
    ami: np.ndarray  # float64 [L, F]
    purity: np.ndarray  # float64 [L, F]
    num_images: int
    num_classes: int
    params: dict[str, str] = field(default_factory=dict)  # how the clustering was made
    seconds: dict[str, float] = field(default_factory=dict)
    pooled: list[np.ndarray] = field(default_factory=list)  # per layer float32 [N, C_l]


def transfer_scores(
    model,
    taps,
    data,
    factors=DEFAULT_FACTORS,
    *,
    device,
    method: str = "auto",
    precision: str = "fp32",
    batch_size: int = 256,
    seed: int = 0,
    quiet: bool = True,
) -> TransferResult:
    """Pooled features of every tap on ``data`` (a TransferData), clustered whole per layer."""
    from clusterprobe.runners.engine.embed import pooled_features
    from clusterprobe.runners.engine.whole import score_layers

    factors = tuple(sorted({int(f) for f in factors}))
    t0 = time.perf_counter()
    pooled = pooled_features(
        model,
        taps,
        data.images,
        device=device,
        precision=precision,
        batch_size=batch_size,
        quiet=quiet,
    )
    seconds = {"embed": time.perf_counter() - t0}
    _say(quiet, f"pooled features of {len(data.labels)} images: {seconds['embed']:.1f} s")
    t0 = time.perf_counter()
    ami, purity, params = score_layers(
        pooled,
        data.labels,
        factors,
        method=method,
        seed=seed,
        on_layer=lambda li, row: _say(quiet, f"layer {li} ({taps[li].name}): AMI f1 {row[0]:.3f}"),
    )
    seconds["cluster"] = time.perf_counter() - t0
    return TransferResult(
        layer_names=[t.name for t in taps],
        factors=factors,
        ami=ami,
        purity=purity,
        num_images=int(len(data.labels)),
        num_classes=int(len(np.unique(data.labels))),
        params=params,
        seconds=seconds,
        pooled=[np.ascontiguousarray(x, dtype=np.float32) for x in pooled],
    )


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"[transfer] {message}", file=sys.stderr, flush=True)
