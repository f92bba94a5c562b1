"""Read a stored eval run back: the run, its layer names, Grams, pooled embeddings,
cluster assignments, and one layer exported in ``clusterprobe score``'s format.

Every reader checks shapes and values before anything is computed from them, and
a missing or corrupt artifact is one UsageError line naming the file (so the
commands that read runs store nothing when the input is bad). Each file is checked
against the sha256 the run recorded when it was written (``checksums.json``); runs
written before checksums existed are read unverified.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.checksums import verify_file
from clusterprobe.tracker.errors import UsageError


@dataclass
class StoredDistances:
    layer_names: list[str]
    grams: dict[int, np.ndarray]  # superclass -> float32 [L, n, n]
    pixel_grams: dict[int, np.ndarray]  # superclass -> [n, n] (may be empty)
    subclass: dict[int, np.ndarray]  # superclass -> int64 [n], rows of grams[s]
    eval_index: dict[int, np.ndarray]  # superclass -> int64 [n]: which eval image each row is


@dataclass
class StoredPooled:
    layer_names: list[str]
    pooled: list[np.ndarray]  # per layer [N_eval, C_l] (memory-mapped)
    superclass: np.ndarray  # int64 [N_eval]
    subclass: np.ndarray


# --- runs ---------------------------------------------------------------------------------


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


def train_run_of(tracker, run_id: str):
    """The train run ``run_id`` names (itself, or the parent of an eval run)."""
    run = tracker.open_run(run_id)
    kind = run.data.tags.get(cv.TAG_KIND)
    if kind == "eval" and run.data.tags.get(cv.TAG_PARENT):
        return train_run_of(tracker, run.data.tags[cv.TAG_PARENT])
    if kind != "train":
        raise UsageError(
            f"RUN_ID {run_id!r} is a {kind or 'non-clusterprobe'} run; give a train run or "
            "one of its eval runs"
        )
    return run


def dataset_record(tracker, run_id: str) -> dict | None:
    """The run's ``dataset.json``, or None where it has none (it is optional)."""
    try:
        return json.loads(Path(tracker.artifact_path(run_id, cv.ART_DATASET_RECORD)).read_text())
    except Exception:
        return None


# --- artifacts ----------------------------------------------------------------------------


def _artifact(tracker, run_id: str, path: str, what: str) -> Path:
    try:
        return Path(tracker.artifact_path(run_id, path))
    except Exception:
        raise UsageError(
            f"run {run_id} has no {path!r} artifact; it was run without {what} "
            "(rerun with --save all)"
        ) from None


def _file(folder: Path, name: str, run_id: str, what: str, tracker=None) -> Path:
    path = folder / name
    if not path.is_file():
        raise UsageError(f"{path}: missing; the {what} of run {run_id} are incomplete")
    return path if tracker is None else verified(tracker, run_id, path)


def verified(tracker, run_id: str, path: Path) -> Path:
    """``path`` (an artifact of run ``run_id``), refused in one line if its sha256 is not the
    one recorded when the run was written. Remote artifacts (downloaded copies) pass."""
    root = tracker.artifact_dir(run_id)
    if root is not None:
        verify_file(root, Path(path), run_id)
    return Path(path)


def _load_npy(path: Path, *, mmap: bool = True) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as err:
        raise UsageError(f"{path}: unreadable array ({type(err).__name__}: {err})") from None


def _read_parquet(path: Path, columns):
    import pandas as pd

    try:
        df = pd.read_parquet(path)
    except Exception as err:
        raise UsageError(f"{path}: unreadable Parquet ({type(err).__name__}: {err})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UsageError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def _finite(array: np.ndarray, path: Path) -> np.ndarray:
    array = np.asarray(array)
    if not np.isfinite(array).all():
        raise UsageError(f"{path}: contains NaN or Inf values")
    return array


def layer_names(tracker, run_id: str) -> list[str]:
    path = verified(tracker, run_id, _artifact(tracker, run_id, cv.ART_LAYERS, "its layer map"))
    try:
        entries = json.loads(path.read_text())
        names = [str(e["name"]) for e in sorted(entries, key=lambda e: int(e["index"]))]
    except Exception as err:
        raise UsageError(f"{path}: unreadable layer map ({type(err).__name__}: {err})") from None
    if not names:
        raise UsageError(f"{path}: empty layer map")
    return names


def load_layer_metrics(tracker, run_id: str):
    """The run's ``layer_metrics.parquet`` (LAYER_METRICS_COLUMNS), checked for its columns."""
    path = _artifact(tracker, run_id, cv.ART_LAYER_METRICS, "its per-layer table")
    return _read_parquet(verified(tracker, run_id, path), cv.LAYER_METRICS_COLUMNS)


def load_ari(tracker, run_id: str):
    """The run's ``ari.parquet`` (ARI_COLUMNS), or None where it has none (runs recorded
    before ARI tables existed, and rescored runs, have none)."""
    try:
        path = Path(tracker.artifact_path(run_id, cv.ART_ARI))
    except Exception:
        return None
    return _read_parquet(verified(tracker, run_id, path), cv.ARI_COLUMNS)


def load_distances(tracker, run_id: str) -> StoredDistances:
    """The run's per-superclass Gram matrices, checked for shape and finiteness."""
    names = layer_names(tracker, run_id)
    folder = _artifact(tracker, run_id, cv.ART_DIST_DIR, "distances")
    index_path = _file(folder, cv.DIST_INDEX, run_id, "distances", tracker)
    index = _read_parquet(index_path, ("superclass", "row", "subclass"))
    grams, pixels, subclass, eval_index = {}, {}, {}, {}
    for s, rows in index.groupby("superclass", sort=True):
        s, n = int(s), len(rows)
        path = _file(folder, cv.DIST_GRAM.format(superclass=s), run_id, "distances", tracker)
        gram = _load_npy(path)
        if gram.ndim != 3 or gram.shape != (len(names), n, n):
            raise UsageError(
                f"{path}: shape {gram.shape}, expected {(len(names), n, n)} "
                f"({len(names)} layers x {n} images of superclass {s})"
            )
        grams[s] = _finite(gram, path)
        pixel_path = folder / cv.DIST_PIXEL.format(superclass=s)
        if pixel_path.is_file():
            pixel = _load_npy(verified(tracker, run_id, pixel_path))
            if pixel.shape == (n, n):
                pixels[s] = _finite(pixel, pixel_path)
        rows = rows.sort_values("row")
        subclass[s] = rows["subclass"].to_numpy(dtype=np.int64)
        if "eval_index" in rows:
            eval_index[s] = rows["eval_index"].to_numpy(dtype=np.int64)
    if not grams:
        raise UsageError(f"{index_path}: no superclasses listed")
    if len(pixels) != len(grams):
        pixels = {}  # a partial pixel baseline would be a different number: leave it out
    return StoredDistances(names, grams, pixels, subclass, eval_index)


def load_pooled(tracker, run_id: str, layers: list[int] | None = None) -> StoredPooled:
    """The run's pooled embeddings (memory-mapped) and eval labels, checked."""
    names = layer_names(tracker, run_id)
    folder = _artifact(tracker, run_id, cv.ART_EMBED_DIR, "embeddings")
    labels_path = _file(folder, cv.EMBED_LABELS, run_id, "embeddings", tracker)
    labels = _read_parquet(labels_path, ("eval_index", "superclass", "subclass"))
    labels = labels.sort_values("eval_index")
    n = len(labels)
    pooled = []
    for i in range(len(names)) if layers is None else layers:
        if not 0 <= i < len(names):
            raise UsageError(f"layer {i}: run {run_id} has layers 0..{len(names) - 1}")
        path = _file(folder, cv.EMBED_POOLED.format(layer=i), run_id, "embeddings", tracker)
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


def load_assignments(tracker, run_id: str):
    """``(assignments, factors, eval_index)`` from the run's assignments.parquet;
    FileNotFoundError where it has none."""
    import pandas as pd
    from clusterprobe.runners.evalrun.tables import assignments_from_frame

    path = verified(tracker, run_id, tracker.artifact_path(run_id, cv.ART_ASSIGNMENTS))
    return assignments_from_frame(pd.read_parquet(path))


def require_assignments(tracker, run_id: str):
    """:func:`load_assignments` for a command that needs them: a missing or unreadable
    file is one UsageError line naming it."""
    try:
        return load_assignments(tracker, run_id)
    except FileNotFoundError:
        raise UsageError(
            f"run {run_id} has no {cv.ART_ASSIGNMENTS!r} artifact (cluster assignments); "
            "it was recorded without them"
        ) from None
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(
            f"run {run_id}: unreadable {cv.ART_ASSIGNMENTS} ({type(err).__name__}: {err})"
        ) from None


# --- one layer, in `clusterprobe score`'s format -------------------------------------------


def resolve_layer(spec: str, names: list[str]) -> int:
    """A layer index (negative counts from the end) or name -> its index."""
    try:
        index = int(spec)
    except ValueError:
        if spec in names:
            return names.index(spec)
        raise UsageError(
            f"layer {spec!r}: not a layer index or name; "
            f"valid: 0..{len(names) - 1} or {', '.join(names)}"
        ) from None
    if not -len(names) <= index < len(names):
        raise UsageError(f"layer {spec}: valid indices are 0..{len(names) - 1}")
    return index % len(names)


def export_layer(tracker, run_id: str, layer: str, out: str | os.PathLike) -> dict:
    """Write one layer's pooled embeddings of eval run ``run_id`` as ``clusterprobe score``
    reads them (features [N, C] float32, superclass and subclass int64 [N], eval-set
    order); returns {path, layer, name, shape}."""
    open_eval_run(tracker, run_id)
    names = layer_names(tracker, run_id)
    index = resolve_layer(str(layer), names)
    out = Path(out)
    if out.suffix != ".npz":
        raise UsageError(f"output {str(out)!r}: give a file name ending in .npz")
    if not out.parent.is_dir():
        raise UsageError(f"output {str(out)!r}: folder {str(out.parent)!r} does not exist")
    stored = load_pooled(tracker, run_id, layers=[index])
    features = np.asarray(stored.pooled[0], dtype=np.float32)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, features=features, superclass=stored.superclass, subclass=stored.subclass)
    os.replace(tmp, out)  # never leave a half-written file under the asked name
    return {"path": str(out), "layer": index, "name": names[index], "shape": features.shape}
