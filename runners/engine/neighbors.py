"""Exact and approximate k-nearest neighbours and k-means, over FAISS or torch.

One interface, several engines, chosen at run time:

- ``knn(x, k)`` -> ``(distances, indices)``, each ``[N, k]``, nearest first, the
  query point itself excluded (a duplicate of it is a neighbour like any other).
  Backends: ``"faiss"`` (a GPU index when the installed FAISS has GPU support and
  sees a GPU, else CPU; ``index="flat"`` exact, ``"ivf"``/``"hnsw"`` approximate
  for N >= 10^5) and ``"torch"`` (exact: chunked matrix product + ``topk``, on
  CUDA when present, else CPU).
- ``kmeans(x, k, seed=, niter=)`` -> ``KMeansResult``: FAISS k-means, or Lloyd's
  algorithm in torch (CUDA when present) where FAISS is missing or slower.

``backend="auto"`` never trusts a CPU model name: on CUDA it takes FAISS-GPU if
installed, else torch; on CPU, for work big enough to matter, it times a small
probe of both engines once per process and keeps the faster one. (faiss-cpu
wheels bundle their own OpenBLAS, which has been seen to mistake Xeons for old
cores and run 3x slower than numpy's or torch's BLAS on the same machine.) For
small work it takes FAISS if importable (cheap import) and torch otherwise.

faiss and torch are both optional and imported lazily: this module imports with
numpy alone, and the GPU machine (torch, no faiss) uses the torch engines.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import sys
import time
from dataclasses import dataclass

import numpy as np
from clusterprobe.runners.choices import (
    NEIGHBOR_BACKENDS,
    NEIGHBOR_INDEXES,
    NEIGHBOR_METRICS,
    NEIGHBOR_PRECISIONS,
    check_choice,
)

# Work (multiply-adds) below which "auto" does not bother probing: a few seconds at worst.
_PROBE_WORK = 2e11
_PROBE_N = 4096
_decisions: dict[str, str] = {}  # task ("knn" | "kmeans") -> "faiss" | "torch", once per process


# ----------------------------------------------------------------------------- engines


def _have_faiss() -> bool:
    return importlib.util.find_spec("faiss") is not None


def _faiss_gpu() -> bool:
    """True when the installed FAISS is a GPU build that sees a GPU (a CPU build's
    ``Kmeans(gpu=True)`` silently trains on the CPU, so check explicitly)."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _have_torch() -> bool:
    # find_spec, not import: importing torch costs ~1.5 s, more than small jobs take.
    return importlib.util.find_spec("torch") is not None


def _torch_cuda() -> bool:
    """CUDA usable by torch. Without an NVIDIA device node there is no CUDA to find,
    so torch is not imported just to ask (keeps CPU-only runs free of its import)."""
    if not _have_torch():
        return False
    if "torch" not in sys.modules and not glob.glob("/dev/nvidia[0-9]*"):
        return False
    import torch

    return torch.cuda.is_available()


def resolve_backend(
    backend: str = "auto", *, work: float = 0.0, dim: int = 64, task: str = "knn"
) -> str:
    """The engine ``backend`` means here: ``"faiss"`` or ``"torch"``.

    ``work`` is the job's multiply-add count; "auto" probes both CPU engines only
    when it exceeds ``_PROBE_WORK`` (the probe costs ~0.2 s plus torch's import).
    """
    check_choice("backend", backend, NEIGHBOR_BACKENDS)
    if backend == "faiss":
        if not _have_faiss():
            raise ValueError("backend 'faiss' asked but faiss is not installed; use 'torch'")
        return "faiss"
    if backend == "torch":
        if not _have_torch():
            raise ValueError("backend 'torch' asked but torch is not installed; use 'faiss'")
        return "torch"
    has_faiss, has_torch = _have_faiss(), _have_torch()
    if not has_faiss and not has_torch:
        raise ValueError("neither faiss nor torch is installed; install faiss-cpu or torch")
    engine = pick_engine(
        has_faiss=has_faiss,
        faiss_gpu=has_faiss and _faiss_gpu(),
        has_torch=has_torch,
        torch_cuda=has_torch and _torch_cuda(),
        work=work,
    )
    if engine != "probe":
        return engine
    if task not in _decisions:
        _decisions[task] = _probe_cpu(task, dim)
    return _decisions[task]


def pick_engine(
    *, has_faiss: bool, faiss_gpu: bool, has_torch: bool, torch_cuda: bool, work: float
) -> str:
    """The "auto" rule on the machine's facts: ``"faiss"``, ``"torch"``, or ``"probe"``
    (time both CPU engines). A GPU wins over any CPU: FAISS's GPU index where FAISS is a
    GPU build that sees one (``faiss-gpu``), else torch on CUDA; on the CPU, whichever is
    installed, FAISS for small work, the faster measured one for big work."""
    if faiss_gpu:
        return "faiss"
    if torch_cuda:
        return "torch"
    if not has_torch:
        return "faiss"
    if not has_faiss:
        return "torch"
    return "faiss" if work < _PROBE_WORK else "probe"


def _probe_cpu(task: str, dim: int) -> str:
    """Time the task on a small random set with both CPU engines (after a warm-up
    call each; best of two, the machine may be shared) and return the faster."""
    x = np.random.default_rng(0).standard_normal((_PROBE_N, max(dim, 1))).astype(np.float32)
    if task == "kmeans":
        engines = {
            "faiss": lambda a: _kmeans_faiss(a, 128, 0, 3, False),
            "torch": lambda a: _kmeans_torch(a, 128, 0, 3, "cpu"),
        }
    else:
        engines = {
            "faiss": lambda a: _knn_faiss(a, 10, "l2", "flat", "fp32"),
            "torch": lambda a: _knn_torch(a, 10, "l2", "flat", "fp32"),
        }
    times = {}
    for name, fn in engines.items():
        fn(x[:512])  # warm-up: imports, thread pools, lazy init
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    return min(times, key=times.get)


def probe_decisions() -> dict[str, str]:
    """What "auto" decided in this process so far (for the record)."""
    return dict(_decisions)


# ----------------------------------------------------------------------------- k-NN


def _check_x(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"points must be a non-empty 2-D array [N, d]; got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"points must be numeric; got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("points contain NaN or Inf; remove or impute them before clustering")
    return x


def _check_count(name: str, value, high: int | None, what: str) -> None:
    """An integer in 1..high (no upper bound when ``high`` is None), or TypeError/ValueError."""
    allowed = "an integer >= 1" if high is None else f"1 <= {name} <= {high}"
    if not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}={value!r} {what} is not an integer; use {allowed}")
    if value < 1 or (high is not None and value > high):
        raise ValueError(f"{name}={value!r} {what} is invalid; use {allowed}")


def knn(
    x,
    k: int,
    *,
    backend: str = "auto",
    metric: str = "l2",
    index: str = "flat",
    precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of every row of ``x`` among the other rows.

    Returns ``(distances, indices)``: float32 and int64 arrays ``[N, k]``, nearest
    first. ``metric="l2"`` gives Euclidean distances (not squared); ``"ip"`` gives
    inner products, largest first. The point itself is excluded, by index (a
    duplicate point at distance 0 is still returned).

    ``index``: ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"`` (FAISS only,
    approximate; worth it for N >= 10^5). ``precision`` (torch only): ``"fp32"``
    exact, ``"tf32"``/``"bf16"`` faster matrix products on CUDA at ~1e-3 relative
    error in the scores, so near-ties may swap.
    """
    x = _check_x(x)
    n, d = x.shape
    _check_count("k", k, n - 1, f"neighbours for {n} points")
    check_choice("metric", metric, NEIGHBOR_METRICS)
    check_choice("index", index, NEIGHBOR_INDEXES)
    check_choice("precision", precision, NEIGHBOR_PRECISIONS)
    engine = knn_backend(n, d, backend=backend, index=index)
    if engine == "torch":
        return _knn_torch(x, int(k), metric, index, precision)
    return _knn_faiss(x, int(k), metric, index, precision)


def knn_backend(n: int, d: int, *, backend: str = "auto", index: str = "flat") -> str:
    """The engine ``knn`` uses for ``n`` points in ``d`` dimensions (for the record)."""
    if index != "flat":
        if backend == "torch":
            raise ValueError(f"index {index!r} needs backend 'faiss'; the torch backend is exact")
        return resolve_backend("faiss")
    return resolve_backend(backend, work=float(n) * n * d, dim=d, task="knn")


def _drop_self(dist: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 results per row drop the row's own index (or, if absent because of
    duplicates or an approximate index, the farthest result)."""
    own = idx == np.arange(idx.shape[0])[:, None]
    order = np.argsort(own, axis=1, kind="stable")[:, :k]  # self sorts last
    return np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)


def _knn_faiss(x, k, metric, index, precision):
    import faiss

    n, d = x.shape
    kk = min(k + 1, n)
    if index == "flat":
        ix = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
    elif index == "ivf":
        nlist = int(max(1, min(4 * np.sqrt(n), n // 39)))
        quant = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
        fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        ix = faiss.IndexIVFFlat(quant, d, nlist, fmetric)
        rng = np.random.default_rng(0)
        train = x[rng.choice(n, min(n, 64 * nlist), replace=False)]
        ix.train(train)
        ix.nprobe = min(nlist, 16)
    else:  # hnsw
        fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        ix = faiss.IndexHNSWFlat(d, 32, fmetric)
        ix.hnsw.efConstruction = 80
        ix.hnsw.efSearch = max(64, 2 * kk)
    if _faiss_gpu() and index in ("flat", "ivf"):
        ix = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, ix)
    ix.add(x)
    dist, idx = ix.search(x, kk)
    dist, idx = _drop_self(dist, idx.astype(np.int64), k)
    if metric == "l2":
        dist = np.sqrt(np.maximum(dist, 0.0))  # FAISS returns squared L2
    return dist.astype(np.float32), idx


def _matmul_context(torch, precision):
    """Context under which matmuls run at ``precision`` (TF32 off for "fp32")."""
    if precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return _tf32(torch, precision == "tf32")


@contextlib.contextmanager
def _tf32(torch, enabled: bool):
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def _chunk_rows(n: int, device_is_cuda: bool) -> int:
    """Rows per chunk so one [rows, N] float32 score block stays ~256 MB (CPU) / 2 GB (CUDA)."""
    budget = (2 << 30) if device_is_cuda else (256 << 20)
    return int(max(1, min(n, budget // (4 * max(n, 1)))))


def _knn_torch(x, k, metric, index, precision, device=None):
    """Exact k-NN by chunked matrix product + topk; self excluded by masking."""
    import torch

    if index != "flat":
        raise ValueError(f"index {index!r} needs backend 'faiss'; the torch backend is exact only")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    xt = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    xt = xt.to(dev, torch.float32)
    n = xt.shape[0]
    kk = min(k, n - 1)
    sq = (xt * xt).sum(1) if metric == "l2" else None
    rows = _chunk_rows(n, dev.type == "cuda")
    out_d = torch.empty((n, kk), dtype=torch.float32, device=dev)
    out_i = torch.empty((n, kk), dtype=torch.int64, device=dev)
    prec = precision if dev.type == "cuda" else "fp32"
    with torch.no_grad(), _matmul_context(torch, prec):
        for s in range(0, n, rows):
            e = min(n, s + rows)
            score = (xt[s:e] @ xt.T).float()  # [rows, N]
            if metric == "l2":
                # rank by |y|^2 - 2 x.y (|x|^2 is constant per row); negate for topk.
                score.mul_(2.0).sub_(sq[None, :])
            ar = torch.arange(e - s, device=dev)
            score[ar, ar + s] = -float("inf")  # exclude self by index
            val, ind = torch.topk(score, kk, dim=1)
            if metric == "l2":
                val = torch.sqrt(torch.clamp(sq[s:e, None] - val, min=0.0))
            out_d[s:e] = val
            out_i[s:e] = ind
    return out_d.cpu().numpy(), out_i.cpu().numpy()


# ----------------------------------------------------------------------------- k-means


@dataclass(frozen=True)
class KMeansResult:
    centroids: np.ndarray  # float32 [k, d]
    labels: np.ndarray  # int64 [N], index of the nearest centroid
    inertia: float  # sum of squared distances to the assigned centroid
    backend: str  # "faiss-cpu" | "faiss-gpu" | "torch-cpu" | "torch-cuda"
    sizes: np.ndarray  # int64 [k], points per label (0 for an empty cluster)
    means: np.ndarray  # float64 [k, d], mean of the points per label (0 where empty)


def kmeans(
    x,
    k: int,
    *,
    seed: int = 0,
    niter: int = 20,
    gpu: str | bool = "auto",
    backend: str = "auto",
) -> KMeansResult:
    """Lloyd's k-means of the rows of ``x`` into ``k`` clusters.

    FAISS when chosen (``faiss.Kmeans``: random initial centroids from the data,
    empty clusters split from large ones; it trains on at most 256 points per
    centroid, a random subsample, then assigns every point). The torch engine
    (CUDA when present) does the same on all points, initial centroids a random
    sample, empty clusters re-seeded with random points. Both are deterministic
    for a given ``seed`` on the CPU. ``gpu``: "auto" (a GPU when the engine can
    use one), True (required), False (CPU only).
    """
    x = _check_x(x)
    n, d = x.shape
    _check_count("k", k, n, f"clusters for {n} points")
    _check_count("niter", niter, None, "iterations")
    if gpu not in ("auto", True, False):
        raise ValueError(f"gpu={gpu!r} is invalid; use 'auto', True or False")
    engine = resolve_backend(backend, work=float(n) * k * d * niter, dim=d, task="kmeans")
    if gpu is False:
        if engine == "torch":
            return _kmeans_torch(x, int(k), seed, int(niter), "cpu")
        return _kmeans_faiss(x, int(k), seed, int(niter), False)
    if engine == "faiss":
        use_gpu = _faiss_gpu()
        if gpu is True and not use_gpu:
            if _have_torch() and _torch_cuda():
                return _kmeans_torch(x, int(k), seed, int(niter), "cuda")
            raise ValueError(
                "gpu=True asked but no GPU is usable by faiss or torch; use gpu='auto'"
            )
        return _kmeans_faiss(x, int(k), seed, int(niter), use_gpu)
    cuda = _torch_cuda()
    if gpu is True and not cuda:
        raise ValueError("gpu=True asked but torch sees no CUDA device; use gpu='auto'")
    return _kmeans_torch(x, int(k), seed, int(niter), "cuda" if cuda else "cpu")


def _kmeans_faiss(x, k, seed, niter, use_gpu) -> KMeansResult:
    import faiss

    n, d = x.shape
    # min_points_per_centroid=1: micro-clustering asks for few points per centroid on
    # purpose; FAISS would otherwise print a warning to stderr for every call.
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=int(seed),
        gpu=bool(use_gpu),
        min_points_per_centroid=1,
        verbose=False,
    )
    km.train(x)
    dist, idx = km.index.search(x, 1)
    labels = idx[:, 0].astype(np.int64)
    sizes, means = _member_means(x, labels, k)
    return KMeansResult(
        centroids=np.asarray(km.centroids, dtype=np.float32).reshape(k, d),
        labels=labels,
        inertia=float(np.maximum(dist[:, 0], 0).sum(dtype=np.float64)),
        backend="faiss-gpu" if use_gpu else "faiss-cpu",
        sizes=sizes,
        means=means,
    )


def _member_means(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Points per label and their float64 means, by one sort (``np.add.at`` is slow)."""
    sizes = np.bincount(labels, minlength=k).astype(np.int64)
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    order = np.argsort(labels, kind="stable")
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    sums[lab[starts]] = np.add.reduceat(x[order], starts, axis=0, dtype=np.float64)
    nz = sizes > 0
    sums[nz] /= sizes[nz, None]
    return sizes, sums


def _assign_torch(xt, c, rows):
    """Nearest centroid and squared distance per row of ``xt`` (chunked)."""
    import torch

    csq = (c * c).sum(1)[None, :]
    lab = torch.empty(xt.shape[0], dtype=torch.int64, device=xt.device)
    dmin = torch.empty(xt.shape[0], dtype=torch.float32, device=xt.device)
    for s in range(0, xt.shape[0], rows):
        blk = xt[s : s + rows]
        score = torch.addmm(csq, blk, c.T, alpha=-2.0)  # |x - c|^2 - |x|^2, one pass
        val, ind = torch.min(score, dim=1)
        lab[s : s + rows] = ind
        dmin[s : s + rows] = torch.clamp(val + (blk * blk).sum(1), min=0.0)
    return lab, dmin


def _sums_torch(torch, xt, xh, lab, k, rows):
    """Points per label and float64 sums per label. CUDA: ``index_add_`` by chunks;
    CPU: numpy's sort + ``reduceat`` (torch's CPU ``index_add_`` is slow)."""
    if xh is not None:
        sizes, means = _member_means(xh, lab.numpy(), k)
        sums = means * sizes[:, None]
        return torch.from_numpy(sizes), torch.from_numpy(sums)
    counts = torch.bincount(lab, minlength=k)
    sums = torch.zeros((k, xt.shape[1]), dtype=torch.float64, device=xt.device)
    for s in range(0, xt.shape[0], rows):
        sums.index_add_(0, lab[s : s + rows], xt[s : s + rows].double())
    return counts, sums


def _kmeans_torch(x, k, seed, niter, device) -> KMeansResult:
    import torch

    dev = torch.device(device)
    xt = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    xt = xt.to(dev, torch.float32)
    n, d = xt.shape
    gen = torch.Generator().manual_seed(int(seed))  # CPU generator: same draws on any device
    c = xt[torch.randperm(n, generator=gen)[:k].to(dev)].clone()
    # score blocks of ~2 GB on CUDA; ~16 MB on CPU, where cache-sized blocks are faster
    budget = (2 << 30) if dev.type == "cuda" else (16 << 20)
    rows = int(max(1, min(n, budget // (4 * max(k, 1)))))
    xh = None if dev.type == "cuda" else xt.numpy()
    with torch.no_grad(), _matmul_context(torch, "fp32"):
        for _ in range(niter):
            lab, _ = _assign_torch(xt, c, rows)
            counts, sums = _sums_torch(torch, xt, xh, lab, k, rows)
            empty = counts == 0
            if bool(empty.any()):
                m = int(empty.sum())
                pick = torch.randint(0, n, (m,), generator=gen).to(dev)
                sums[empty] = xt[pick].double()
                counts = torch.where(empty, torch.ones_like(counts), counts)
            c = (sums / counts[:, None].double()).float()
        lab, dmin = _assign_torch(xt, c, rows)
        counts, sums = _sums_torch(torch, xt, xh, lab, k, rows)
        means = sums / torch.clamp(counts, min=1)[:, None].double()
    return KMeansResult(
        centroids=c.cpu().numpy().astype(np.float32),
        labels=lab.cpu().numpy().astype(np.int64),
        inertia=float(dmin.double().sum()),
        backend=f"torch-{dev.type}",
        sizes=counts.cpu().numpy().astype(np.int64),
        means=means.cpu().numpy(),
    )
