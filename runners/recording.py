"""Write a measured checkpoint into its eval run: metrics, tables and artifacts.

The tidy ``layer_metrics.parquet`` (the table the SQL views read), ``layers.json``,
the per-layer metric series (step = layer index, so the MLflow UI draws the
profile), labels and distance indices of the eval split, Gram matrices, pooled
embeddings and the layer-profile plot, as ``config.save`` asks.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data.record import dataset_record
from clusterprobe.runners.measure import Measurement, relative_depth, summarise
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.conventions import PARAM_DEAD_LAYERS, PARAM_PROTOCOL, TAG_DEAD_LAYERS

# --- tables written as artifacts ----------------------------------------------------------


def layer_metrics_table(
    run_id: str,
    layer_names: list[str],
    superclasses: list[int],
    factors: tuple[int, ...],
    ami: np.ndarray,
    purity: np.ndarray,
    probe_acc: list[float] | None,
    knn_acc: list[float] | None = None,
) -> pd.DataFrame:
    """Tidy rows (LAYER_METRICS_COLUMNS): per (layer, superclass, factor) ami and purity,
    then per layer probe_acc and knn_acc with superclass and factor NULL. Means are left
    to SQL."""
    n = len(layer_names)
    rows = []
    for i, name in enumerate(layer_names):
        depth = relative_depth(i, n)
        for j, s in enumerate(superclasses):
            for k, f in enumerate(factors):
                rows.append((run_id, i, name, depth, s, f, "ami", float(ami[i, j, k])))
                rows.append((run_id, i, name, depth, s, f, "purity", float(purity[i, j, k])))
        if probe_acc:
            rows.append((run_id, i, name, depth, None, None, cv.PROBE_METRIC, float(probe_acc[i])))
        if knn_acc:
            rows.append((run_id, i, name, depth, None, None, cv.KNN_METRIC, float(knn_acc[i])))
    df = pd.DataFrame(rows, columns=list(cv.LAYER_METRICS_COLUMNS))
    df["layer_index"] = df["layer_index"].astype("int64")
    df["superclass"] = df["superclass"].astype("Int64")  # nullable: NULL in SQL
    df["factor"] = df["factor"].astype("Int64")
    df["value"] = df["value"].astype("float64")
    return df


def layers_json(layer_names: list[str], kinds: list[str] | None = None) -> list[dict]:
    n = len(layer_names)
    out = [
        {"index": i, "name": name, "relative_depth": relative_depth(i, n)}
        for i, name in enumerate(layer_names)
    ]
    if kinds:
        for entry, kind in zip(out, kinds, strict=True):
            entry["kind"] = kind
    return out


def per_layer_metric_series(
    factors, mean_ami: np.ndarray, mean_purity: np.ndarray, probe_acc, knn_acc=None
) -> dict[str, list[float]]:
    """metric name -> value per layer (step = layer index)."""
    series: dict[str, list[float]] = {}
    for k, f in enumerate(factors):
        series[cv.ami_metric(f)] = [float(v) for v in mean_ami[:, k]]
        series[cv.purity_metric(f)] = [float(v) for v in mean_purity[:, k]]
    if probe_acc:
        series[cv.PROBE_METRIC] = [float(v) for v in probe_acc]
    if knn_acc:
        series[cv.KNN_METRIC] = [float(v) for v in knn_acc]
    return series


def log_layer_series(ctx, series: dict[str, list[float]]) -> None:
    """Every per-layer metric, step = layer index, in one batched call."""
    ctx.log_metric_table(series)


def log_layer_scores(
    ctx,
    layer_names: list[str],
    superclasses: list,
    factors: tuple[int, ...],
    ami: np.ndarray,
    purity: np.ndarray,
    *,
    probe_acc=None,
    knn_acc=None,
    pixel_ami_f1: float | None = None,
) -> dict[str, float]:
    """What every eval run records about its layers, from ami/purity [L, S, F]: the
    per-layer series (step = layer index), the summary metrics, layer_metrics.parquet
    and layers.json. Returns the summary."""
    mean_ami, mean_purity = ami.mean(axis=1), purity.mean(axis=1)
    log_layer_series(
        ctx, per_layer_metric_series(factors, mean_ami, mean_purity, probe_acc, knn_acc)
    )
    summary = summarise(mean_ami[:, factors.index(1)], probe_acc, pixel_ami_f1, knn_acc)
    ctx.log_metrics(summary)
    table = layer_metrics_table(
        ctx.run_id, layer_names, superclasses, factors, ami, purity, probe_acc, knn_acc
    )
    ctx.log_parquet(table, cv.ART_LAYER_METRICS)
    ctx.log_json(layers_json(layer_names), cv.ART_LAYERS)
    return summary


# --- recording ----------------------------------------------------------------------------


def record_measurement(
    ctx, meas: Measurement, data, config: RunConfig, *, probe_index: np.ndarray | None = None
) -> dict[str, float]:
    """Log one Measurement into the open eval run ``ctx``; returns its summary."""
    emb = meas.embedding
    params = {f"cluster.{k}": str(v) for k, v in meas.cluster_params.items()}
    params.update({f"embed.{k}": str(v) for k, v in (getattr(emb, "params", {}) or {}).items()})
    params["eval_factors"] = ",".join(map(str, meas.factors))
    params[PARAM_PROTOCOL] = "per_superclass"
    if probe_index is not None:
        params["probe_train_images"] = str(len(probe_index))
    dead: dict[int, set[int]] = {}
    for source in (emb.dead or {}, getattr(meas.protocol, "dead", {}) or {}):
        for layer, sups in source.items():
            dead.setdefault(int(layer), set()).update(int(s) for s in sups)
    dead = {k: sorted(v) for k, v in dead.items() if v}
    if dead:
        names = ", ".join(f"{i} ({meas.layer_names[i]})" for i in sorted(dead))
        warnings.warn(
            f"dead layers (all-zero activations for some images): {names}",
            RuntimeWarning,
            stacklevel=2,
        )
        params[PARAM_DEAD_LAYERS] = ",".join(map(str, sorted(dead)))
        ctx.set_tags({TAG_DEAD_LAYERS: _json({str(k): v for k, v in dead.items()})})
    ctx.log_params(params)

    summary = log_layer_scores(
        ctx,
        meas.layer_names,
        meas.superclasses,
        meas.factors,
        meas.ami,
        meas.purity,
        probe_acc=meas.probe_acc,
        knn_acc=meas.knn_acc,
        pixel_ami_f1=meas.pixel_ami_f1,
    )
    ctx.log_metrics({f"seconds_{k}": v for k, v in meas.seconds.items()})
    ctx.log_json(dataset_record(data), cv.ART_DATASET_RECORD)
    if "embeddings" in config.save:
        labels = data.eval_labels
        log_embeddings(ctx, emb.pooled, labels.superclass, labels.subclass)
    if "distances" in config.save:
        for s in sorted(emb.grams):
            ctx.log_numpy(
                np.asarray(emb.grams[s], dtype=np.float32), f"{cv.ART_DIST_DIR}/gram_{s:03d}.npy"
            )
            if s in emb.pixel_grams:
                ctx.log_numpy(
                    np.asarray(emb.pixel_grams[s], dtype=np.float32),
                    f"{cv.ART_DIST_DIR}/pixel_{s:03d}.npy",
                )
        ctx.log_parquet(distance_index_frame(emb, data), f"{cv.ART_DIST_DIR}/index.parquet")
    if "plots" in config.save:
        from clusterprobe.runners.plots import layer_profile

        fig = layer_profile(
            meas.layer_names,
            meas.mean_ami(),
            meas.factors,
            meas.probe_acc,
            knn_acc=meas.knn_acc,
            pixel_ami=meas.pixel_ami_f1,
            title=_plot_title(config, data),
        )
        ctx.log_figure(fig, cv.ART_PLOT)
        import matplotlib.pyplot as plt

        plt.close(fig)
    return summary


def log_embeddings(ctx, pooled: list[np.ndarray], superclass, subclass) -> None:
    """Pooled embeddings per layer and their labels, in the layout ``export`` and
    ``rescore --method`` read: embeddings/pooled_{i:02d}.npy + embeddings/labels.parquet."""
    for i, x in enumerate(pooled):
        ctx.log_numpy(
            np.ascontiguousarray(x, dtype=np.float32), f"{cv.ART_EMBED_DIR}/pooled_{i:02d}.npy"
        )
    n = len(subclass)
    labels = pd.DataFrame(
        {
            "eval_index": np.arange(n, dtype=np.int64),
            "superclass": np.asarray(superclass, dtype=np.int64),
            "subclass": np.asarray(subclass, dtype=np.int64),
        }
    )
    ctx.log_parquet(labels, f"{cv.ART_EMBED_DIR}/labels.parquet")


def distance_index_frame(emb, data) -> pd.DataFrame:
    """Which eval image each row of gram_{s}.npy is: (superclass, row, eval_index, subclass)."""
    parts = []
    for s in sorted(emb.eval_index):
        idx = np.asarray(emb.eval_index[s], dtype=np.int64)
        parts.append(
            pd.DataFrame(
                {
                    "superclass": np.full(len(idx), s, dtype=np.int64),
                    "row": np.arange(len(idx), dtype=np.int64),
                    "eval_index": idx,
                    "subclass": np.asarray(data.eval_labels.subclass, dtype=np.int64)[idx],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _plot_title(config: RunConfig, data) -> str:
    variant = "shuffled" if data.shuffled else "natural"
    return f"{config.arch} on {data.name} ({variant}), seed {config.seed}"


def _json(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True)
