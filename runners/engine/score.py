"""Score bring-your-own embeddings with the paper's protocol (``clusterprobe score``).

numpy + scipy only: this path never imports torch, sklearn or mlflow, so the
command starts in well under a second. Features are flattened and L2-normalised
per example (an all-zero row stays zero); per superclass their Gram matrix is
formed in float64, in column chunks so that wide features (hundreds of
thousands of values per example) never need a float64 copy, and handed to the
same :func:`clusterprobe.runners.engine.cluster.cluster_protocol` that ``run`` uses.

Bad input raises ValueError (TypeError for a non-numeric array) naming the
problem: :func:`load_npz` and :func:`superclass_grams` find everything that can be
wrong with a file before any clustering starts, so ``clusterprobe score`` can
report it as a usage error.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from clusterprobe.runners.engine.cluster import ProtocolResult, cluster_protocol, resolve_workers
from clusterprobe.runners.engine.progress import progress_bar

NPZ_KEYS = ("features", "superclass", "subclass")
CHUNK_BYTES = 64 << 20  # float64 working set per column chunk


def check_arrays(
    features, superclass, subclass, *, need_superclass: bool = True, check_finite: bool = True
) -> tuple:
    """Validate the three arrays (ValueError/TypeError naming the problem); return them cleaned.

    features: [N, ...] real numbers, finite. superclass, subclass: [N] integers.
    check_finite=False skips the one full pass over the features for callers that
    find NaN/Inf on the way (:func:`protocol` reads it off the Gram diagonals).
    Returns (features [N, D] (a view where possible), superclass int64, subclass int64).
    """
    features = np.asarray(features)
    if features.ndim < 2:
        raise ValueError(
            f"features has shape {features.shape}; expected [N, ...] with one row per example"
        )
    if features.shape[0] == 0:
        raise ValueError("features has no rows (N = 0)")
    if not (
        np.issubdtype(features.dtype, np.floating) or np.issubdtype(features.dtype, np.integer)
    ):
        raise TypeError(f"features has dtype {features.dtype}; expected floats")
    features = features.reshape(features.shape[0], -1)
    if features.shape[1] == 0:
        raise ValueError(f"features has shape {features.shape}: zero values per example")
    n = features.shape[0]
    out = []
    for name, arr in (("superclass", superclass), ("subclass", subclass)):
        if arr is None:
            if name == "superclass" and not need_superclass:
                out.append(np.zeros(n, dtype=np.int64))
                continue
            raise ValueError(f"missing array {name!r}")
        arr = np.asarray(arr)
        if arr.ndim != 1 or arr.shape[0] != n:
            raise ValueError(
                f"{name} has shape {arr.shape}; expected ({n},), one label per row of features"
            )
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise TypeError(f"{name} has dtype {arr.dtype}; labels must be integers")
        out.append(arr.astype(np.int64))
    if check_finite and np.issubdtype(features.dtype, np.floating):
        bad = _first_nonfinite_row(features)
        if bad is not None:
            raise _nonfinite(bad)
    return features, out[0], out[1]


def _nonfinite(row: int) -> ValueError:
    return ValueError(f"features row {row} holds NaN or Inf; every value must be finite")


def _first_nonfinite_row(features: np.ndarray) -> int | None:
    step = max(1, CHUNK_BYTES // max(1, features.shape[1] * features.itemsize))
    for start in range(0, features.shape[0], step):
        ok = np.isfinite(features[start : start + step]).all(axis=1)
        if not ok.all():
            return start + int(np.argmin(ok))
    return None


def row_norms(features: np.ndarray) -> np.ndarray:
    """float64 L2 norms of the rows, computed in chunks of columns."""
    n, d = features.shape
    sq = np.zeros(n)
    step = max(1, CHUNK_BYTES // (8 * n))
    for c0 in range(0, d, step):
        block = features[:, c0 : c0 + step].astype(np.float64)
        sq += np.einsum("ij,ij->i", block, block)
    return np.sqrt(sq)


def unit_gram(features: np.ndarray) -> np.ndarray:
    """Gram matrix (float64) of the L2-normalised rows; zero rows stay zero.

    One pass over the columns: the raw Gram ``X X^T`` accumulated in float64
    chunks, then scaled by the inverse row norms read off its diagonal, i.e.
    ``G_ij = x_i.x_j / (|x_i| |x_j|)`` (equal to normalising first up to rounding).
    """
    n, d = features.shape
    gram = np.zeros((n, n))
    step = max(1, CHUNK_BYTES // (8 * n))
    # A row with NaN or Inf (or a norm past float64) leaves NaN on the diagonal, which
    # the caller turns into one error naming the row; numpy's warnings would come first.
    with np.errstate(invalid="ignore", over="ignore"):
        for c0 in range(0, d, step):
            block = features[:, c0 : c0 + step].astype(np.float64)
            gram += block @ block.T
        norms = np.sqrt(np.diagonal(gram))
        inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
        gram *= inv[:, None]
        gram *= inv[None, :]
    return gram


def unit_rows(features: np.ndarray, dtype=np.float32) -> np.ndarray:
    """L2-normalised rows (zero rows stay zero), as ``dtype``."""
    norms = row_norms(features)
    inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
    return (features * inv[:, None]).astype(dtype, copy=False)


def protocol(
    features, superclass, subclass, factors=(1, 2, 3, 4, 5), *, n_jobs=None, progress=False
) -> ProtocolResult:
    """The per-superclass protocol on one feature matrix (one "layer")."""
    grams, subs = superclass_grams(features, superclass, subclass, n_jobs=n_jobs, progress=progress)
    return cluster_protocol(grams, subs, factors, n_jobs=n_jobs)


def superclass_grams(
    features, superclass, subclass, *, n_jobs=None, progress=False
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Checked input of :func:`cluster_protocol`: per superclass, the unit Gram and subclasses.

    Validates the arrays (:func:`check_arrays`); NaN/Inf are found from the Gram
    diagonals instead of by an extra pass over the features, so after this returns
    nothing about the input is left to fail. Grams of the superclasses are formed in
    parallel threads (numpy's BLAS releases the GIL), each with a single-threaded
    BLAS: on a shared machine a multi-threaded BLAS on these small products
    spin-waits for descheduled partners and was measured 10-20x slower than one
    thread per superclass.
    """
    features, superclass, subclass = check_arrays(
        features, superclass, subclass, check_finite=False
    )
    sups = [int(s) for s in np.unique(superclass)]
    rows = {s: _rows(superclass, s) for s in sups}
    workers = resolve_workers(n_jobs, len(sups))
    bar = progress_bar(len(sups), show=progress, desc="gram", unit="superclass")
    grams = {}
    with _single_threaded_blas():
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                done = pool.map(lambda s: unit_gram(features[rows[s]]), sups)
                for s, g in zip(sups, done, strict=True):
                    grams[s] = g
                    bar.update(1)
        else:
            for s in sups:
                grams[s] = unit_gram(features[rows[s]])
                bar.update(1)
    bar.close()
    for s in sups:
        _check_gram_finite(grams[s], features, rows[s])
    return grams, {s: subclass[rows[s]] for s in sups}


def _rows(superclass: np.ndarray, s: int) -> slice | np.ndarray:
    """The rows of superclass s: a slice (a view, no copy) when they are contiguous."""
    idx = np.flatnonzero(superclass == s)
    if idx[-1] - idx[0] + 1 == idx.size:
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def _check_gram_finite(gram: np.ndarray, features: np.ndarray, rows) -> None:
    """A unit Gram's diagonal is NaN exactly where a row holds NaN or Inf (or its float64
    squared norm overflows): name the first such row of the whole file."""
    bad = np.flatnonzero(~np.isfinite(np.diagonal(gram)))
    if bad.size == 0:
        return
    global_rows = np.arange(features.shape[0])[rows]
    row = int(global_rows[bad[0]])
    if np.isfinite(features[row]).all():
        raise ValueError(
            f"features row {row} is too large: its squared norm overflows float64; rescale "
            "the features"
        )
    raise _nonfinite(int(global_rows[_first_nonfinite_row(features[rows])]))


@contextlib.contextmanager
def _single_threaded_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS keeps its own threading
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def score_features(
    features, superclass, subclass, factors=(1, 2, 3, 4, 5), *, n_jobs=None, progress=False
) -> dict:
    """JSON-ready result: mean AMI and purity per factor, plus one entry per superclass.

    ``{"ami": {"1": a, ...}, "purity": {"1": p, ...}, "per_superclass": [{"superclass":
    s, "factor": f, "ami": a, "purity": p}, ...], "params": {...}}``. Means are
    unweighted over superclasses, as in the paper.
    """
    result = protocol(features, superclass, subclass, factors, n_jobs=n_jobs, progress=progress)
    return result_json(result)


def result_json(result: ProtocolResult, layer: int = 0) -> dict:
    mean_ami = result.mean_ami()[layer]
    mean_pur = result.mean_purity()[layer]
    per = [
        {
            "superclass": int(s),
            "factor": int(f),
            "ami": float(result.ami[layer, si, fi]),
            "purity": float(result.purity[layer, si, fi]),
        }
        for si, s in enumerate(result.superclasses)
        for fi, f in enumerate(result.factors)
    ]
    return {
        "ami": {str(f): float(mean_ami[fi]) for fi, f in enumerate(result.factors)},
        "purity": {str(f): float(mean_pur[fi]) for fi, f in enumerate(result.factors)},
        "per_superclass": per,
        "params": dict(result.params),
    }


def _mapped_member(path: Path, name: str) -> np.ndarray | None:
    """Memory-map an uncompressed .npz member (``np.savez``) instead of copying it.

    Wide feature files (GBs) are then read once, straight from the page cache, by
    the finiteness check and the Gram products. None when the member is
    compressed (``np.savez_compressed``) or not a plain numeric array.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(name + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
            if local[:4] != b"PK\x03\x04":
                return None
            name_len = int.from_bytes(local[26:28], "little")
            extra_len = int.from_bytes(local[28:30], "little")
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
            offset = fh.tell()
        if dtype.hasobject or not shape or int(np.prod(shape)) == 0:
            return None
        order = "F" if fortran else "C"
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
    except (KeyError, OSError, ValueError, zipfile.BadZipFile):
        return None


def load_npz(
    path, *, need_superclass: bool = True, check_finite: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and check ``features``, ``superclass``, ``subclass`` from an .npz (no pickles).

    check_finite: as in :func:`check_arrays`. Every problem with the file is a
    ValueError (TypeError for arrays of the wrong dtype) naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file; give an .npz with features, superclass, subclass")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for non-npz bytes
        raise ValueError(f"{path}: not a readable .npz file ({type(err).__name__})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a bare .npy array, not an .npz with keys {', '.join(NPZ_KEYS)}")
    with npz:
        keys = set(npz.files)
        required = [k for k in NPZ_KEYS if need_superclass or k != "superclass"]
        missing = [k for k in required if k not in keys]
        if missing:
            raise ValueError(
                f"{path}: missing array(s) {', '.join(missing)}; found {', '.join(sorted(keys)) or 'none'}"
            )
        try:
            arrays = {k: npz[k] for k in NPZ_KEYS if k in keys and k != "features"}
            features = _mapped_member(path, "features")
            arrays["features"] = npz["features"] if features is None else features
        except ValueError as err:  # object arrays need pickles, which we refuse
            raise ValueError(f"{path}: cannot read arrays without pickle ({err})") from None
    return check_arrays(
        arrays["features"],
        arrays.get("superclass"),
        arrays["subclass"],
        need_superclass=need_superclass,
        check_finite=check_finite,
    )


def undersized_superclasses(subclass: dict[int, np.ndarray], factors) -> list[tuple[int, int, int]]:
    """``(superclass, rows, clusters)`` where a superclass has no more rows than the clusters
    asked of it at the largest factor (#subclasses x factor): there Ward puts every row in
    a cluster of its own, so purity is 1 and AMI as high as it goes, meaning nothing."""
    top = max(factors)
    out = []
    for s in sorted(subclass):
        labels = np.asarray(subclass[s])
        clusters = len(np.unique(labels)) * top
        if len(labels) <= clusters:
            out.append((int(s), len(labels), int(clusters)))
    return out
