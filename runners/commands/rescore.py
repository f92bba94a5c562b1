"""`clusterprobe rescore RUN_ID`: re-cluster a stored eval run without the model.

Default: the paper's per-superclass protocol, from the run's stored Gram matrices
(``distances/gram_SSS.npy`` + ``distances/index.parquet``). With ``--method M``:
whole-dataset clustering of each layer's stored pooled embeddings
(``embeddings/pooled_LL.npy`` + ``embeddings/labels.parquet``) via
``runners.whole.score_whole``. Either way the result is a NEW eval run nested under
the same train run (tag ``clusterprobe.source_run``), with the same metric names
(``ami_f{k}``, ``purity_f{k}`` at step = layer index, ``best_ami``, ``best_layer``).
Every artifact is read and checked before the new run starts, so a corrupt or
missing file gives one error line and stores nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.errors import UsageError

# Params of the source run that describe how IT was measured, not the model: replaced.
_MEASUREMENT_PARAMS = ("factors", "eval_factors", "protocol", "probe_train_images")


@dataclass
class StoredDistances:
    layer_names: list[str]
    grams: dict[int, np.ndarray]  # superclass -> float32 [L, n, n]
    pixel_grams: dict[int, np.ndarray]  # superclass -> [n, n] (may be empty)
    subclass: dict[int, np.ndarray]  # superclass -> int64 [n], rows of grams[s]


@dataclass
class StoredPooled:
    layer_names: list[str]
    pooled: list[np.ndarray]  # per layer [N_eval, C_l]
    superclass: np.ndarray  # int64 [N_eval]
    subclass: np.ndarray


def open_eval_run(tracker, run_id: str):
    """The stored eval run ``run_id``; UsageError if unknown or of another kind."""
    run = tracker.open_run(run_id)
    kind = run.data.tags.get(cv.TAG_KIND)
    if kind != "eval":
        raise UsageError(
            f"RUN_ID {run_id!r} is a {kind or 'non-clusterprobe'} run; "
            "give an eval run (tag clusterprobe.kind = eval)"
        )
    return run


def _artifact(tracker, run_id: str, path: str, what: str) -> Path:
    try:
        return Path(tracker.artifact_path(run_id, path))
    except Exception:
        raise UsageError(
            f"run {run_id} has no {path!r} artifact; it was run without {what} "
            "(rerun with --save all)"
        ) from None


def _load_npy(path: Path, *, mmap: bool = True) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as err:
        raise UsageError(f"{path}: unreadable array ({type(err).__name__}: {err})") from None


def _read_parquet(path: Path):
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as err:
        raise UsageError(f"{path}: unreadable Parquet ({type(err).__name__}: {err})") from None


def _need_columns(df, columns, path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UsageError(f"{path}: missing column(s) {', '.join(missing)}")


def _finite(array: np.ndarray, path: Path) -> np.ndarray:
    array = np.asarray(array)
    if not np.isfinite(array).all():
        raise UsageError(f"{path}: contains NaN or Inf values")
    return array


def layer_names(tracker, run_id: str) -> list[str]:
    path = _artifact(tracker, run_id, cv.ART_LAYERS, "its layer map")
    try:
        entries = json.loads(path.read_text())
        names = [str(e["name"]) for e in sorted(entries, key=lambda e: int(e["index"]))]
    except Exception as err:
        raise UsageError(f"{path}: unreadable layer map ({type(err).__name__}: {err})") from None
    if not names:
        raise UsageError(f"{path}: empty layer map")
    return names


def load_distances(tracker, run_id: str) -> StoredDistances:
    """The run's per-superclass Gram matrices, checked for shape and finiteness."""
    names = layer_names(tracker, run_id)
    folder = _artifact(tracker, run_id, cv.ART_DIST_DIR, "distances")
    index_path = folder / "index.parquet"
    if not index_path.is_file():
        raise UsageError(f"{index_path}: missing; the distances of run {run_id} are incomplete")
    index = _read_parquet(index_path)
    _need_columns(index, ("superclass", "row", "subclass"), index_path)
    grams, pixels, subclass = {}, {}, {}
    for s, rows in index.groupby("superclass", sort=True):
        s = int(s)
        rows = rows.sort_values("row")
        n = len(rows)
        path = folder / f"gram_{s:03d}.npy"
        if not path.is_file():
            raise UsageError(f"{path}: missing; the distances of run {run_id} are incomplete")
        gram = _load_npy(path)
        if gram.ndim != 3 or gram.shape != (len(names), n, n):
            raise UsageError(
                f"{path}: shape {gram.shape}, expected {(len(names), n, n)} "
                f"({len(names)} layers x {n} images of superclass {s})"
            )
        grams[s] = _finite(gram, path)
        pixel_path = folder / f"pixel_{s:03d}.npy"
        if pixel_path.is_file():
            pixel = _load_npy(pixel_path)
            if pixel.shape == (n, n):
                pixels[s] = _finite(pixel, pixel_path)
        subclass[s] = rows["subclass"].to_numpy(dtype=np.int64)
    if not grams:
        raise UsageError(f"{index_path}: no superclasses listed")
    if len(pixels) != len(grams):
        pixels = {}  # a partial pixel baseline would be a different number: leave it out
    return StoredDistances(names, grams, pixels, subclass)


def load_pooled(tracker, run_id: str, layers: list[int] | None = None) -> StoredPooled:
    """The run's pooled embeddings (memory-mapped) and eval labels, checked."""
    names = layer_names(tracker, run_id)
    folder = _artifact(tracker, run_id, cv.ART_EMBED_DIR, "embeddings")
    labels_path = folder / "labels.parquet"
    if not labels_path.is_file():
        raise UsageError(f"{labels_path}: missing; the embeddings of run {run_id} are incomplete")
    labels = _read_parquet(labels_path)
    _need_columns(labels, ("eval_index", "superclass", "subclass"), labels_path)
    labels = labels.sort_values("eval_index")
    n = len(labels)
    pooled = []
    for i in range(len(names)) if layers is None else layers:
        if not 0 <= i < len(names):
            raise UsageError(f"--layer {i}: run {run_id} has layers 0..{len(names) - 1}")
        path = folder / f"pooled_{i:02d}.npy"
        if not path.is_file():
            raise UsageError(f"{path}: missing; the embeddings of run {run_id} are incomplete")
        x = _load_npy(path)
        if x.ndim != 2 or x.shape[0] != n:
            raise UsageError(f"{path}: shape {x.shape}, expected ({n}, channels)")
        pooled.append(_finite(x, path))
    return StoredPooled(
        names,
        pooled,
        labels["superclass"].to_numpy(dtype=np.int64),
        labels["subclass"].to_numpy(dtype=np.int64),
    )


# --- the command ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clusterprobe.tracker.store import add_store_arguments

    parser.add_argument("run_id", metavar="RUN_ID", help="a stored eval run")
    parser.add_argument(
        "--factors",
        default=None,
        metavar="SPEC",
        help="overclustering factors, e.g. 1-5 (default: the source run's)",
    )
    parser.add_argument(
        "--method",
        default=None,
        metavar="M",
        help="cluster each layer's pooled embeddings as a whole dataset "
        "(auto, exact, knn-ward, two-stage, kmeans) instead of the "
        "per-superclass protocol on stored Gram matrices",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    add_store_arguments(parser)


def _source_factors(params: dict) -> tuple[int, ...]:
    from clusterprobe.runners.config import parse_factors

    return parse_factors(params.get("eval_factors") or params.get("factors") or "1-5")


def main(args: argparse.Namespace) -> int:
    from clusterprobe.runners.config import parse_factors
    from clusterprobe.tracker.store import store_from_args
    from clusterprobe.tracker.tracking import Tracker

    factors = parse_factors(args.factors) if args.factors is not None else None
    if args.method is not None:
        from clusterprobe.runners.engine.whole import METHODS

        if args.method not in METHODS:
            raise UsageError(f"--method {args.method!r}: choose from {', '.join(METHODS)}")
    tracker = Tracker(store_from_args(args))
    result = rescore(tracker, args.run_id, factors=factors, method=args.method, quiet=args.quiet)
    from clusterprobe.runners.commands.run import format_table

    print(format_table(result["layers"]))
    print(
        f"\nbest layer {int(result['summary']['best_layer'])} "
        f"(AMI f1 {result['summary']['best_ami']:.3f})"
    )
    print(
        f"eval run: {result['run_id']} (re-scored from {args.run_id}, "
        f"train run {result['parent_run_id']})"
    )
    return 0


def rescore(
    tracker,
    run_id: str,
    *,
    factors: tuple[int, ...] | None = None,
    method: str | None = None,
    quiet: bool = True,
) -> dict:
    """Re-cluster eval run ``run_id`` into a new eval run; returns its id, summary, layers."""
    from clusterprobe.runners import recording
    from clusterprobe.runners.measure import layer_rows

    source = open_eval_run(tracker, run_id)
    params = dict(source.data.params)
    parent = source.data.tags.get(cv.TAG_PARENT)
    if not parent:
        raise UsageError(f"RUN_ID {run_id!r} is not nested under a train run")
    factors = tuple(sorted(set(factors or _source_factors(params)) | {1}))
    if method is None and params.get(cv.PARAM_PROTOCOL) == "whole":
        raise UsageError(
            f"RUN_ID {run_id!r} was clustered as a whole dataset (no superclasses); "
            "re-score it with --method auto|exact|knn-ward|two-stage|kmeans"
        )

    # Read and check everything before a run exists: a bad file stores nothing.
    if method is None:
        stored = load_distances(tracker, run_id)
        names = stored.layer_names
    else:
        pooled = load_pooled(tracker, run_id)
        names = pooled.layer_names
    dataset_json = None
    try:
        dataset_json = json.loads(
            Path(tracker.artifact_path(run_id, cv.ART_DATASET_RECORD)).read_text()
        )
    except Exception:
        pass  # optional: only copied along

    if not quiet:
        print(
            f"clusterprobe: re-scoring {run_id} "
            f"({'per superclass' if method is None else f'whole dataset, {method}'}, "
            f"factors {','.join(map(str, factors))})",
            file=sys.stderr,
        )
    if method is None:
        from clusterprobe.runners.engine.cluster import cluster_protocol

        result = cluster_protocol(stored.grams, stored.subclass, factors)
        ami = np.asarray(result.ami, dtype=float)  # [L, S, F]
        purity = np.asarray(result.purity, dtype=float)
        superclasses = list(result.superclasses)
        how = {f"cluster.{k}": str(v) for k, v in (getattr(result, "params", {}) or {}).items()}
        how[cv.PARAM_PROTOCOL] = "per_superclass"
        pixel = None
        if stored.pixel_grams:
            pixel = float(np.mean(cluster_protocol(stored.pixel_grams, stored.subclass, (1,)).ami))
    else:
        from clusterprobe.runners.engine.whole import score_layers

        ami, purity, whole_params = score_layers(
            pooled.pooled,
            pooled.subclass,
            factors,
            method=method,
            seed=int(params.get("seed", 0) or 0),
        )
        ami, purity = ami[:, None, :], purity[:, None, :]  # [L, 1, F]
        superclasses = [None]  # one whole-dataset clustering: superclass NULL in the table
        how = {f"whole.{k}": v for k, v in whole_params.items()}
        how[cv.PARAM_PROTOCOL] = "whole"
        pixel = None

    new_params = {
        k: v
        for k, v in params.items()
        if k not in _MEASUREMENT_PARAMS and not k.startswith(("cluster.", "whole."))
    }
    new_params.update(how)
    new_params["factors"] = ",".join(map(str, factors))
    new_params["eval_factors"] = new_params["factors"]
    tags = {cv.TAG_SOURCE_RUN: run_id}
    for key in (cv.TAG_DEVICE,):
        if key in source.data.tags:
            tags[key] = source.data.tags[key]
    with tracker.start_run(
        "eval",
        params=new_params,
        parent_run_id=parent,
        tags=tags,
        run_name=f"rescore {source.info.run_name or run_id}",
    ) as ctx:
        summary = recording.log_layer_scores(
            ctx, names, superclasses, factors, ami, purity, pixel_ami_f1=pixel
        )
        if dataset_json is not None:
            ctx.log_json(dataset_json, cv.ART_DATASET_RECORD)
    layers = layer_rows(names, factors, ami.mean(axis=1), purity.mean(axis=1))
    return {"run_id": ctx.run_id, "parent_run_id": parent, "summary": summary, "layers": layers}
