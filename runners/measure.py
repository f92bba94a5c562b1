"""Measure one checkpoint on its dataset's eval split: pure results, nothing stored.

``measure`` embeds the eval images (``engine.embed.embed_eval``), clusters every
layer inside every superclass (``engine.cluster.cluster_protocol``, raw pixels too,
as a baseline), compares every pair of layers by CKA from the same Grams
(``engine.cka``) and fits the linear and k-NN probes (``engine.probe``); a
:class:`Measurement` holds what they return. ``evalrun.record_measurement`` writes it.

Where the model's head predicts the eval set's labels (``head_labels``), the embed
pass also keeps its outputs and the Measurement holds the model's own accuracy
(``test_acc``): the pass that reaches the last tap runs on through the head, so
no second forward pass over the eval set is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.evalrun import LayerScores


@dataclass
class Measurement:
    """One checkpoint measured on the eval split (pure results, nothing stored yet)."""

    scores: LayerScores
    embedding: object  # engine.embed.Embedding: Grams, pooled features, eval_index
    protocol: object  # engine.cluster.ProtocolResult: assignments, dead layers
    cluster_params: dict  # how the clustering was computed
    seconds: dict[str, float]  # embed, cluster, cka, probe
    test_acc: float | None = None  # the model's own accuracy on the eval set (head_labels)
    test_acc_labels: str | None = None  # "superclass" | "subclass": what test_acc is on
    cka: object = None  # engine.cka.CkaMatrices: layer x layer CKA per superclass

    @property
    def layer_names(self) -> list[str]:
        return self.scores.layer_names

    @property
    def factors(self) -> tuple[int, ...]:
        return self.scores.factors


def head_labels(width: int, data, trained_on: str | None = None) -> str | None:
    """Which labels of ``data`` a classifier head of ``width`` outputs predicts, or None.

    ``trained_on`` ("superclass" | "subclass"), when known (a model trained here): those
    labels if the width equals their count. Unknown (a weights file): whichever count
    the width equals (superclass first), else None.
    """
    counts = {"superclass": data.num_superclasses, "subclass": data.num_subclasses}
    candidates = [trained_on] if trained_on is not None else list(counts)
    return next((name for name in candidates if counts[name] == width), None)


def probe_indices(labels, per_subclass: int, seed: int) -> np.ndarray:
    """Up to ``per_subclass`` train images of every subclass, seeded, in index order."""
    rng = np.random.default_rng(seed)
    picks = []
    for k in np.unique(labels.subclass):
        idx = np.flatnonzero(labels.subclass == k)
        picks.append(rng.permutation(idx)[:per_subclass])
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def measure(
    model,
    config: RunConfig,
    data,
    device,
    *,
    probe_index: np.ndarray,
    head_labels: str | None = None,
    batch_size: int | None = None,
    quiet: bool = False,
) -> Measurement:
    """Embed the eval split, cluster every layer per superclass, CKA between every pair
    of layers, probe every layer; with ``head_labels`` ("superclass" | "subclass", see
    :func:`head_labels`) also the model's own accuracy on those labels of the eval split.
    ``batch_size``: images per forward pass (default ``config.batch_size``)."""
    from clusterprobe.runners.engine.cka import cka_by_superclass
    from clusterprobe.runners.engine.cluster import cluster_protocol
    from clusterprobe.runners.engine.embed import embed_eval
    from clusterprobe.runners.engine.projection import Projector
    from clusterprobe.runners.models import layer_taps

    factors = tuple(sorted(set(config.factors) | {1}))  # f1 always: best_ami is defined on it
    batch_size = batch_size or config.batch_size
    model.eval()
    taps = layer_taps(model, config)
    seconds: dict[str, float] = {}
    # The projected probe input of the eval images comes from the embed's own passes.
    projector = None
    if config.probe_features == "projected" and len(probe_index):
        projector = Projector(config.probe_dim, config.seed)  # the same matrices for both sets

    t0 = time.perf_counter()
    emb = embed_eval(
        model,
        taps,
        data.eval,
        data.eval_labels,
        device=device,
        precision=config.precision,
        batch_size=batch_size,
        quiet=quiet,
        outputs=head_labels is not None,
        reduce=projector,
    )
    seconds["embed"] = time.perf_counter() - t0
    test_acc = None
    if head_labels is not None:
        truth = getattr(data.eval_labels, head_labels)
        test_acc = float(np.mean(np.argmax(emb.outputs, axis=1) == truth))

    t0 = time.perf_counter()
    sub = {s: data.eval_labels.subclass[idx] for s, idx in emb.eval_index.items()}
    result = cluster_protocol(emb.grams, sub, factors)
    pixels = cluster_protocol(emb.pixel_grams, sub, (1,))
    seconds["cluster"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cka = cka_by_superclass(emb.grams, estimator=config.cka)
    seconds["cka"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    probe_acc, knn_acc = _probes(
        model, taps, config, data, device, probe_index, emb, projector, batch_size, quiet
    )
    seconds["probe"] = time.perf_counter() - t0

    scores = LayerScores(
        layer_names=list(emb.layer_names),
        superclasses=list(result.superclasses),
        factors=factors,
        ami=np.asarray(result.ami, dtype=float),
        purity=np.asarray(result.purity, dtype=float),
        probe_acc=probe_acc,
        knn_acc=knn_acc,
        pixel_ami_f1=float(np.mean(pixels.ami)),  # [1, S, 1]: one "layer", factor 1
    )
    return Measurement(
        scores, emb, result, dict(result.params or {}), seconds, test_acc, head_labels, cka
    )


def _probes(model, taps, config, data, device, probe_index, emb, projector, batch_size, quiet):
    """Linear- and k-NN-probe accuracy per layer on subclass labels: trained on the
    features of ``probe_index`` train images, tested on the eval split's (``emb``; [] if
    no images). The k-NN probe reads pooled features; the linear probe reads
    ``config.probe_features``: pooled, or the flattened features through ``projector`` (a
    seeded sparse random projection, ``engine.projection``, the paper's probe input),
    streamed per batch. Each probe image goes through the model once."""
    from clusterprobe.runners.engine.embed import layer_features
    from clusterprobe.runners.engine.probe import knn_layers, probe_layers

    if not len(probe_index):
        return [], []
    # The k-NN probe's pooled train features, and the projected ones beside them, from one pass.
    reducers = (None,) if projector is None else (None, projector)
    train = layer_features(
        model,
        taps,
        data.train_plain,
        probe_index,
        reducers=reducers,
        device=device,
        precision=config.precision,
        batch_size=batch_size,
        quiet=quiet,
        desc="probe images",  # at 224 px, minutes of forward passes
    )
    train_pooled, train_x = train[0], train[-1]
    eval_x = emb.pooled if projector is None else emb.reduced
    train_y = data.train_labels.subclass[probe_index]
    eval_y = data.eval_labels.subclass
    fit = probe_layers(train_x, train_y, eval_x, eval_y, seed=config.seed, device=device)
    probe_acc = [float(a) for a in fit]
    return probe_acc, knn_layers(train_pooled, train_y, emb.pooled, eval_y, device=device)
