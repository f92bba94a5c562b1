"""How stable the clusterings are: ARI between cluster assignments (the paper's matrices).

Input is :attr:`clusterprobe.runners.engine.cluster.ProtocolResult.assignments`
(``(layer, superclass) -> int [F, n]``, rows in the superclass's ``eval_index``
order). Output is tidy rows in ``tracker.conventions.ARI_COLUMNS``, one per
(layer_a, layer_b, factor) with the ARI averaged over superclasses (unweighted,
as AMI is):

* ``layer_ari_rows``: every pair of layers of one run (kind 'layer'), the
  layer x layer heatmap; symmetric with a diagonal of exactly 1.
* ``cross_ari_rows``: every layer of run A against every layer of run B
  (kind 'seed' or 'checkpoint'); its diagonal is "the same layer, another seed".

``assignments_frame`` / ``assignments_from_frame`` are the round trip through the
``assignments.parquet`` artifact, so runs logged earlier can be compared later.
numpy + pandas only (no torch, no mlflow).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from clusterprobe.runners.engine import metrics
from clusterprobe.runners.engine.cluster import ari_matrix
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.errors import UsageError

Assignments = Mapping[tuple[int, int], np.ndarray]  # (layer, superclass) -> int [F, n]


def layer_ari_rows(run_id: str, assignments: Assignments, factors: Sequence[int]) -> pd.DataFrame:
    """Layer x layer ARI of one run (kind 'layer', other_run_id = run_id), every factor.

    ARI is symmetric, so each pair is computed once and mirrored; the diagonal is 1.
    """
    layers = sorted({li for li, _ in assignments})
    sups = sorted({s for _, s in assignments})
    if not sups:
        raise UsageError("no cluster assignments to compare")
    rows = []
    for fi, f in enumerate(factors):
        m = np.eye(len(layers))
        for i, la in enumerate(layers):
            for j in range(i + 1, len(layers)):
                lb = layers[j]
                total = sum(
                    metrics.ari(assignments[(la, s)][fi], assignments[(lb, s)][fi]) for s in sups
                )
                m[i, j] = m[j, i] = total / len(sups)
        rows += _matrix_rows(run_id, run_id, "layer", layers, layers, int(f), m)
    return _frame(rows)


def cross_ari_rows(
    run_id: str,
    other_run_id: str,
    kind: str,
    assign_a: Assignments,
    assign_b: Assignments,
    factors: Sequence[int],
    factors_b: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Every layer of run A (layer_a) against every layer of run B (layer_b).

    ``factors`` index the first axis of ``assign_a``; ``factors_b`` those of
    ``assign_b`` (default: the same). Only factors both have are compared, and only
    superclasses both have (their rows must be the same images, in the same order).
    """
    if kind not in cv.ARI_KINDS or kind == "layer":
        raise UsageError(f"ARI kind {kind!r}: choose 'seed' or 'checkpoint' for two runs")
    factors = [int(f) for f in factors]
    factors_b = factors if factors_b is None else [int(f) for f in factors_b]
    layers_a = sorted({li for li, _ in assign_a})
    layers_b = sorted({li for li, _ in assign_b})
    rows = []
    for fa, f in enumerate(factors):
        if f not in factors_b:
            continue
        a = {key: v[fa : fa + 1] for key, v in assign_a.items()}
        b = {key: v[factors_b.index(f) : factors_b.index(f) + 1] for key, v in assign_b.items()}
        m = ari_matrix(a, b, 0)
        rows += _matrix_rows(run_id, other_run_id, kind, layers_a, layers_b, f, m)
    return _frame(rows)


def _matrix_rows(run_id, other_run_id, kind, layers_a, layers_b, factor, m) -> list[tuple]:
    return [
        (run_id, other_run_id, kind, int(la), int(lb), factor, float(m[i, j]))
        for i, la in enumerate(layers_a)
        for j, lb in enumerate(layers_b)
    ]


def _frame(rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(cv.ARI_COLUMNS))
    return df.astype(
        {
            "run_id": "object",
            "other_run_id": "object",
            "kind": "object",
            "layer_a": "int64",
            "layer_b": "int64",
            "factor": "int64",
            "value": "float64",
        }
    )


# --- the assignments.parquet artifact ------------------------------------------------


def assignments_frame(
    assignments: Assignments, factors: Sequence[int], eval_index: Mapping[int, np.ndarray]
) -> pd.DataFrame:
    """Tidy rows (ASSIGNMENTS_COLUMNS): the cluster of every eval image per layer and factor.

    ``eval_index[s]`` names the eval image of each row of the superclass's assignments.
    """
    factors = [int(f) for f in factors]
    parts = []
    for (li, s), labels in sorted(assignments.items()):
        labels = np.asarray(labels)
        idx = np.asarray(eval_index[s], dtype=np.int64)
        if labels.shape != (len(factors), len(idx)):
            raise UsageError(
                f"layer {li}, superclass {s}: assignments of shape {labels.shape}, expected "
                f"{(len(factors), len(idx))} (factors x images)"
            )
        parts.append(
            pd.DataFrame(
                {
                    "layer_index": np.full(labels.size, li, dtype=np.int64),
                    "superclass": np.full(labels.size, s, dtype=np.int64),
                    "factor": np.repeat(np.asarray(factors, dtype=np.int64), len(idx)),
                    "eval_index": np.tile(idx, len(factors)),
                    "cluster": labels.astype(np.int64).ravel(),
                }
            )
        )
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in cv.ASSIGNMENTS_COLUMNS})
    return pd.concat(parts, ignore_index=True)[list(cv.ASSIGNMENTS_COLUMNS)]


def assignments_from_frame(
    df: pd.DataFrame,
) -> tuple[dict[tuple[int, int], np.ndarray], tuple[int, ...], dict[int, np.ndarray]]:
    """Inverse of :func:`assignments_frame`: ``(assignments, factors, eval_index)``.

    Rows keep the order they were written in (the superclass's ``eval_index``).
    """
    missing = set(cv.ASSIGNMENTS_COLUMNS) - set(df.columns)
    if missing:
        raise UsageError(f"assignments table lacks columns {sorted(missing)}")
    # Stable sort: factor-major within each (layer, superclass), images in written order.
    df = df.sort_values(["layer_index", "superclass", "factor"], kind="stable")
    factors = tuple(int(f) for f in pd.unique(df["factor"]))
    assignments: dict[tuple[int, int], np.ndarray] = {}
    eval_index: dict[int, np.ndarray] = {}
    for (li, s), part in df.groupby(["layer_index", "superclass"], sort=True):
        labels = part["cluster"].to_numpy(dtype=np.int64)
        if len(labels) % len(factors):
            raise UsageError(f"layer {li}, superclass {s}: not every factor has every image")
        assignments[(int(li), int(s))] = labels.reshape(len(factors), -1)
        idx = part["eval_index"].to_numpy(dtype=np.int64)[: labels.size // len(factors)]
        eval_index.setdefault(int(s), idx)
    return assignments, factors, eval_index


def same_images(index_a: Mapping[int, np.ndarray], index_b: Mapping[int, np.ndarray]) -> bool:
    """Whether two runs clustered the same eval images, superclass by superclass, in order."""
    return set(index_a) == set(index_b) and all(
        np.array_equal(np.asarray(index_a[s]), np.asarray(index_b[s])) for s in index_a
    )
