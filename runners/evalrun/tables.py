"""The tables an eval run stores as artifacts, built from arrays and parsed back.

Column names and orders are ``tracker.conventions`` (the SQL views read them);
the builders here are the only code that lays them out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from clusterprobe.runners.evalrun.scores import LayerScores, relative_depth
from clusterprobe.tracker import conventions as cv


def layer_metrics_table(run_id: str, scores: LayerScores) -> pd.DataFrame:
    """Tidy rows (LAYER_METRICS_COLUMNS): per (layer, superclass, factor) ami and purity,
    then per layer probe_acc and knn_acc with superclass and factor NULL. Means are left
    to SQL."""
    rows = []
    n = scores.num_layers
    for i, name in enumerate(scores.layer_names):
        depth = relative_depth(i, n)
        for j, s in enumerate(scores.superclasses):
            for k, f in enumerate(scores.factors):
                rows.append((run_id, i, name, depth, s, f, "ami", float(scores.ami[i, j, k])))
                rows.append((run_id, i, name, depth, s, f, "purity", float(scores.purity[i, j, k])))
        for metric, values in (
            (cv.PROBE_METRIC, scores.probe_acc),
            (cv.KNN_METRIC, scores.knn_acc),
        ):
            if values:
                rows.append((run_id, i, name, depth, None, None, metric, float(values[i])))
    df = pd.DataFrame(rows, columns=list(cv.LAYER_METRICS_COLUMNS))
    df["layer_index"] = df["layer_index"].astype("int64")
    df["superclass"] = df["superclass"].astype("Int64")  # nullable: NULL in SQL
    df["factor"] = df["factor"].astype("Int64")
    df["value"] = df["value"].astype("float64")
    return df


def layers_json(layer_names: Sequence[str]) -> list[dict]:
    """``layers.json``: the layer index -> name map, with relative depth."""
    n = len(layer_names)
    return [
        {"index": i, "name": name, "relative_depth": relative_depth(i, n)}
        for i, name in enumerate(layer_names)
    ]


def labels_frame(superclass, subclass) -> pd.DataFrame:
    """``embeddings/labels.parquet``: the labels of every row of the pooled arrays."""
    n = len(subclass)
    return pd.DataFrame(
        {
            "eval_index": np.arange(n, dtype=np.int64),
            "superclass": np.asarray(superclass, dtype=np.int64),
            "subclass": np.asarray(subclass, dtype=np.int64),
        }
    )


def distance_index_frame(eval_index: Mapping[int, np.ndarray], subclass) -> pd.DataFrame:
    """``distances/index.parquet``: which eval image each row of gram_SSS.npy is
    (superclass, row, eval_index, subclass)."""
    subclass = np.asarray(subclass, dtype=np.int64)
    parts = []
    for s in sorted(eval_index):
        idx = np.asarray(eval_index[s], dtype=np.int64)
        parts.append(
            pd.DataFrame(
                {
                    "superclass": np.full(len(idx), s, dtype=np.int64),
                    "row": np.arange(len(idx), dtype=np.int64),
                    "eval_index": idx,
                    "subclass": subclass[idx],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


# --- stability and similarity: assignments.parquet, ari.parquet, cka.parquet ---------------


def ari_frame(
    run_id: str,
    other_run_id: str,
    kind: str,
    layers_a: Sequence[int],
    layers_b: Sequence[int],
    matrices: Mapping[int, np.ndarray],
) -> pd.DataFrame:
    """Rows of ``ari.parquet`` (ARI_COLUMNS) from ``{factor: [La, Lb]}`` ARI matrices."""
    if kind not in cv.ARI_KINDS:
        raise ValueError(f"ARI kind {kind!r}: choose one of {', '.join(cv.ARI_KINDS)}")
    rows = [
        (run_id, other_run_id, kind, int(la), int(lb), int(f), float(m[i, j]))
        for f, m in matrices.items()
        for i, la in enumerate(layers_a)
        for j, lb in enumerate(layers_b)
    ]
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


def cka_frame(run_id: str, other_run_id: str, kind: str, cka) -> pd.DataFrame:
    """Rows of ``cka.parquet`` (CKA_COLUMNS) from an ``engine.cka.CkaMatrices``: every
    layer pair per superclass, then their mean over superclasses (superclass NULL)."""
    if kind not in cv.CKA_KINDS:
        raise ValueError(f"CKA kind {kind!r}: choose one of {', '.join(cv.CKA_KINDS)}")
    n_a, n_b = cka.mean.shape
    la, lb = np.meshgrid(np.arange(n_a), np.arange(n_b), indexing="ij")
    parts = []
    for s, m in [*zip(cka.superclasses, cka.per_superclass, strict=True), (None, cka.mean)]:
        parts.append(
            pd.DataFrame(
                {
                    "layer_a": la.ravel(),
                    "layer_b": lb.ravel(),
                    "superclass": pd.array([s] * la.size, dtype="Int64"),  # NULL: the mean
                    "value": np.asarray(m, dtype=np.float64).ravel(),
                }
            )
        )
    df = pd.concat(parts, ignore_index=True)
    df["run_id"], df["other_run_id"], df["kind"] = run_id, other_run_id, kind
    df["estimator"] = cka.estimator
    return df[list(cv.CKA_COLUMNS)].astype({"layer_a": "int64", "layer_b": "int64"})


def assignments_frame(
    assignments: Mapping[tuple[int, int], np.ndarray],
    factors: Sequence[int],
    eval_index: Mapping[int, np.ndarray],
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
            raise ValueError(
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
        raise ValueError(f"assignments table lacks columns {sorted(missing)}")
    # Stable sort: factor-major within each (layer, superclass), images in written order.
    df = df.sort_values(["layer_index", "superclass", "factor"], kind="stable")
    factors = tuple(int(f) for f in pd.unique(df["factor"]))
    assignments: dict[tuple[int, int], np.ndarray] = {}
    eval_index: dict[int, np.ndarray] = {}
    for (li, s), part in df.groupby(["layer_index", "superclass"], sort=True):
        labels = part["cluster"].to_numpy(dtype=np.int64)
        if len(labels) % len(factors):
            raise ValueError(f"layer {li}, superclass {s}: not every factor has every image")
        assignments[(int(li), int(s))] = labels.reshape(len(factors), -1)
        idx = part["eval_index"].to_numpy(dtype=np.int64)[: labels.size // len(factors)]
        eval_index.setdefault(int(s), idx)
    return assignments, factors, eval_index
