"""How stable the clusterings are: ARI between cluster assignments (the paper's matrices).

Input is :attr:`clusterprobe.runners.engine.cluster.ProtocolResult.assignments`
(``(layer, superclass) -> int [F, n]``, rows in the superclass's ``eval_index``
order). Output is one matrix per factor, the ARI averaged over superclasses
(unweighted, as AMI is):

* :func:`layer_ari`: every pair of layers of one run, the layer x layer heatmap;
  symmetric with a diagonal of exactly 1.
* :func:`cross_ari`: every layer of run A against every layer of run B (another
  seed or checkpoint); its diagonal is "the same layer, another seed".

numpy only; how the matrices are stored is the eval run's business
(``runners/evalrun/tables.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from clusterprobe.runners.engine import metrics
from clusterprobe.runners.engine.cluster import ari_matrix

Assignments = Mapping[tuple[int, int], np.ndarray]  # (layer, superclass) -> int [F, n]


def layer_ari(
    assignments: Assignments, factors: Sequence[int]
) -> tuple[list[int], dict[int, np.ndarray]]:
    """``(layers, {factor: [L, L] ARI})`` of one run's layers against each other.

    ARI is symmetric, so each pair is computed once and mirrored; the diagonal is 1.
    """
    layers = sorted({li for li, _ in assignments})
    sups = sorted({s for _, s in assignments})
    if not sups:
        raise ValueError("no cluster assignments to compare")
    out: dict[int, np.ndarray] = {}
    for fi, f in enumerate(factors):
        m = np.eye(len(layers))
        for i, la in enumerate(layers):
            for j in range(i + 1, len(layers)):
                lb = layers[j]
                total = sum(
                    metrics.ari(assignments[(la, s)][fi], assignments[(lb, s)][fi]) for s in sups
                )
                m[i, j] = m[j, i] = total / len(sups)
        out[int(f)] = m
    return layers, out


def cross_ari(
    assign_a: Assignments,
    assign_b: Assignments,
    factors: Sequence[int],
    factors_b: Sequence[int] | None = None,
) -> tuple[list[int], list[int], dict[int, np.ndarray]]:
    """``(layers_a, layers_b, {factor: [La, Lb] ARI})``: every layer of run A against
    every layer of run B.

    ``factors`` index the first axis of ``assign_a``; ``factors_b`` those of
    ``assign_b`` (default: the same). Only factors both have are compared, and only
    superclasses both have (their rows must be the same images, in the same order).
    """
    factors = [int(f) for f in factors]
    factors_b = factors if factors_b is None else [int(f) for f in factors_b]
    layers_a = sorted({li for li, _ in assign_a})
    layers_b = sorted({li for li, _ in assign_b})
    out: dict[int, np.ndarray] = {}
    for fa, f in enumerate(factors):
        if f not in factors_b:
            continue
        fb = factors_b.index(f)
        a = {key: v[fa : fa + 1] for key, v in assign_a.items()}
        b = {key: v[fb : fb + 1] for key, v in assign_b.items()}
        out[f] = ari_matrix(a, b, 0)
    return layers_a, layers_b, out


def same_images(index_a: Mapping[int, np.ndarray], index_b: Mapping[int, np.ndarray]) -> bool:
    """Whether two runs clustered the same eval images, superclass by superclass, in order."""
    return set(index_a) == set(index_b) and all(
        np.array_equal(np.asarray(index_a[s]), np.asarray(index_b[s])) for s in index_a
    )
