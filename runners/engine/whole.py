"""Whole-dataset clustering: Ward (or k-means) on all N points at once, no superclass.

``score_whole(features, subclass, factors)`` clusters the rows of ``features``
into ``n_subclasses * factor`` clusters for every factor and scores each
partition against ``subclass`` (AMI, purity). Hierarchical methods build one
tree and cut it at every factor (never refit per factor). Methods
(``choices.WHOLE_METHODS``):

- ``exact``: Ward's method on all points. Euclidean distances come from a matrix
  product (BLAS, float64, blockwise into scipy's condensed vector) rather than
  scipy's ``pdist``, then ``scipy.cluster.hierarchy.linkage(method="ward")``.
  Same tree as ``sklearn.cluster.AgglomerativeClustering(linkage="ward")``, ~2x
  faster; memory ~16 N^2/2 bytes (condensed float64 + scipy's working copy):
  3.2 GB at N = 20,000.
- ``exact-rnn``: the same tree (same merges, same order, scipy's heights) without
  the distance matrix: rounds of reciprocal-nearest-neighbour merges on
  centroids and sizes, nearest neighbours by blockwise matrix products in torch
  on the CPU or CUDA (``rnn_ward``). Memory O(N d) plus bounded blocks (~0.9 GB
  of arrays at N = 100,000 x 512); ~1.0-1.4 N^2 (d + 2) float32 multiply-adds
  at N = 5,000-20,000, in ~40-50 rounds.
- ``knn-ward``: sklearn's Ward restricted to a symmetrised k-NN graph
  (``neighbors.knn``). A graph with several connected components is never
  handed to sklearn (which would warn and patch it at extra cost): each
  component gets its own tree, and the components are then joined by exact
  size-weighted Ward on their centroids.
- ``two-stage``: k-means to ``micro_clusters`` centroids (default
  ``max(1000, 4 * largest cluster count)``, at most N), then exact size-weighted
  Ward on the centroids (``weighted_ward``), points labelled through their
  micro-cluster. Memory O(N d + m^2); the default at N >= 50,000.
- ``kmeans``: k-means straight into each factor's cluster count (one fit per
  factor, not hierarchical).
- ``auto``: ``exact`` while its distance matrices fit ``memory_budget_gb``
  (default 2 GB: N <~ 15,800), else ``exact-rnn`` up to ``RNN_MAX_POINTS`` (its
  ~10-minute point on the device at hand), else ``two-stage``.

Every other choice (k, index, precision, micro-clusters, iterations, seed,
backend, device, memory budget, exact-rnn's limit, refinement, quiet) is one frozen :class:`WholeOptions`
that :func:`cluster_whole`, :func:`score_whole` and :func:`score_layers` share.
``WholeResult.params`` records how every number was made (algorithm, k, index,
backend, precision, micro-clusters, ...). Bad input raises ValueError (TypeError
for a wrong type) naming the bad value.

GPU use (e.g. 1,000,000 x 512 points on one H100; torch installed, faiss not):

    from clusterprobe.runners.engine.whole import WholeOptions, score_whole
    res = score_whole(x, subclass, (1,), method="two-stage",
                      options=WholeOptions(micro_clusters=2000))
    res.timings["cluster"]   # clustering alone; res.timings["scores"]: AMI/purity
    res.params["backend"]    # "torch-cuda": k-means ran on the GPU

With faiss absent and CUDA present, ``backend="auto"`` runs the k-means through
torch on CUDA (Lloyd, fp32 matmuls with TF32 off; ``WholeOptions(backend="torch")``
forces it); the size-weighted Ward on the centroids then runs on the host
(~0.5 s for 2,000). ``cluster_whole(x, [100, 200])`` gives the partitions
without scoring. An exact k-NN graph on the GPU: ``neighbors.knn(x, 10,
backend="torch")`` (chunked matmul + topk; ``precision="tf32"`` is faster,
approximate near ties); k-means alone: ``neighbors.kmeans(x, 2000, backend="torch")``.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np
from clusterprobe.runners.choices import (
    NEIGHBOR_BACKENDS,
    NEIGHBOR_INDEXES,
    NEIGHBOR_PRECISIONS,
    WHOLE_DEVICES,
    WHOLE_METHODS,
    check_choice,
)
from clusterprobe.runners.engine import metrics
from clusterprobe.runners.engine.ward import cut_tree, relabel, ward

DEFAULT_MEMORY_BUDGET_GB = 2.0
# auto: exact-rnn up to this many points (two-stage above), about where its time
# passes 10 minutes. "cpu": measured on 2 idle cores, d = 512 (benchmarks/rnn_scaling.py):
# 100,000 points in 168 s (3.5 GB), 180,000 in 640 s (9.2 GB, 79 rounds), 200,000 in
# 850 s (10.8 GB); time grows as ~N^2.3 from 100k to 180k, which puts 600 s near
# 175,000. "cuda": not measured (no GPU lent yet); ~2 N^2 (d + 2) multiply-adds at 1M
# are ~1e15, under a minute at an H100/H200's ~50 TFLOP/s, so 1M stays well inside
# 10 minutes even if the passes over each block cost several times the products.
RNN_MAX_POINTS = {"cpu": 170_000, "cuda": 1_000_000}


@dataclass(frozen=True)
class WholeOptions:
    """How whole-dataset clustering runs, apart from the method.

    Each field matters to some methods only, as its comment says; the fields a
    method uses are recorded in its ``params``. ``validate()`` raises ValueError
    (TypeError for a wrong type) naming the bad field.
    """

    k: int = 10  # knn-ward: neighbours per point in the k-NN graph
    index: str = "flat"  # knn-ward: "flat" exact; "ivf"/"hnsw" approximate (FAISS, N >= 10^5)
    precision: str = "fp32"  # knn-ward, torch engine: "tf32"/"bf16" faster, near ties may swap
    micro_clusters: int | None = None  # two-stage: k-means size; None: max(1000, 4 x clusters)
    niter: int = 20  # two-stage and kmeans: k-means iterations
    seed: int = 0  # two-stage and kmeans: k-means initialisation
    backend: str = "auto"  # engine of the k-NN graph and k-means: "auto", "faiss", "torch"
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB  # auto: exact while its distances fit
    device: str = "auto"  # exact-rnn: "cpu", "cuda", "cuda:N"; "auto": CUDA when present
    rnn_max_points: int | None = None  # auto: exact-rnn up to this N; None: RNN_MAX_POINTS
    refine: int = 0  # Lloyd steps from each partition; 0 keeps pure Ward (see lloyd_refine)
    quiet: bool = True  # no progress lines on stderr

    def validate(self) -> WholeOptions:
        """Return self, or raise naming the first bad field."""
        _check_int("k", self.k, 1, "neighbours")
        _check_int("niter", self.niter, 1, "k-means iterations")
        _check_int("refine", self.refine, 0, "Lloyd steps")
        if self.micro_clusters is not None:
            _check_int("micro_clusters", self.micro_clusters, 1, "k-means centroids")
        check_choice("backend", self.backend, NEIGHBOR_BACKENDS)
        check_choice("index", self.index, NEIGHBOR_INDEXES)
        check_choice("precision", self.precision, NEIGHBOR_PRECISIONS)
        if self.index != "flat" and self.backend == "torch":
            raise ValueError(
                f"index {self.index!r} needs backend 'faiss' or 'auto'; torch is exact"
            )
        if self.rnn_max_points is not None:
            _check_int("rnn_max_points", self.rnn_max_points, 2, "points")
        if not (self.device in WHOLE_DEVICES or re.fullmatch(r"cuda:\d+", str(self.device))):
            raise ValueError(
                f"device {self.device!r} is not known; use {', '.join(WHOLE_DEVICES)} or cuda:N"
            )
        if not float(self.memory_budget_gb) > 0:
            raise ValueError(
                f"memory_budget_gb={self.memory_budget_gb!r} is invalid; use a number > 0"
            )
        return self


def _check_int(name: str, value, low: int, what: str) -> None:
    if not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}={value!r} is not an integer; use an integer >= {low} ({what})")
    if value < low:
        raise ValueError(f"{name}={value!r} is invalid; use an integer >= {low} ({what})")


@dataclass
class WholeResult:
    ami: dict[int, float]  # factor -> AMI(subclass, labels)
    purity: dict[int, float]  # factor -> purity
    labels: dict[int, np.ndarray]  # factor -> int64 [N] cluster of every point
    params: dict[str, str]  # how it was computed: algorithm, k, index, backend, precision, ...
    n_clusters: dict[int, int] = field(default_factory=dict)  # factor -> clusters asked
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds


# ----------------------------------------------------------------------------- trees


def weighted_ward(centroids: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Ward's method on weighted points: cluster ``i`` starts as ``sizes[i]`` points
    at ``centroids[i]``. Returns a scipy-format linkage matrix ``Z`` ``[m-1, 4]``.

    Merge cost is the Ward distance between clusters A, B,
    ``sqrt(2 |A| |B| / (|A| + |B|)) * ||c_A - c_B||`` (scipy's convention: the
    Euclidean distance for two single points), updated by the Lance-Williams
    formula, which holds for any starting sizes:
    ``D(k, A+B)^2 = ((n_k + n_A) D(k,A)^2 + (n_k + n_B) D(k,B)^2 - n_k D(A,B)^2)
    / (n_k + n_A + n_B)``. Nearest-neighbour chain (Ward is reducible): O(m^2)
    time in O(m) numpy steps, O(m^2) memory (32 MB at m = 2,000). With unit sizes
    it equals ``scipy.cluster.hierarchy.linkage(x, "ward")``.
    """
    c = np.asarray(centroids, dtype=np.float64)
    w = np.asarray(sizes, dtype=np.float64).ravel().copy()
    m = c.shape[0]
    if m != w.shape[0]:
        raise ValueError(f"{m} centroids but {w.shape[0]} sizes")
    if m < 2:
        return np.zeros((0, 4))
    sq = np.einsum("ij,ij->i", c, c)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (c @ c.T)
    np.maximum(d2, 0.0, out=d2)
    d2 *= 2.0 * (w[:, None] * w[None, :]) / (w[:, None] + w[None, :])  # squared Ward cost
    np.fill_diagonal(d2, np.inf)
    active = np.ones(m, dtype=bool)
    rows = np.empty((m - 1, 4))
    chain: list[int] = []
    for step in range(m - 1):
        while True:
            if not chain:
                chain.append(int(np.flatnonzero(active)[0]))
            a = chain[-1]
            row = d2[a]
            b = int(np.argmin(row))
            if len(chain) > 1 and row[chain[-2]] <= row[b]:
                b = chain[-2]  # prefer the chain's previous node on ties: no cycles
            if len(chain) > 1 and b == chain[-2]:
                chain.pop()
                chain.pop()
                break
            chain.append(b)
        dab = d2[a, b]
        na, nb = w[a], w[b]
        keep, drop = (a, b) if a < b else (b, a)
        upd = ((w + na) * d2[a] + (w + nb) * d2[b] - w * dab) / (w + na + nb)
        np.maximum(upd, 0.0, out=upd)
        upd[~active] = np.inf
        d2[keep] = upd
        d2[:, keep] = upd
        d2[drop] = np.inf
        d2[:, drop] = np.inf
        d2[keep, keep] = np.inf
        active[drop] = False
        w[keep] = na + nb
        rows[step] = (keep, drop, np.sqrt(dab), na + nb)
    return relabel(rows, m)


def condensed_distances(x: np.ndarray, *, block_bytes: int = 256 << 20) -> np.ndarray:
    """scipy's condensed Euclidean distance vector of the rows of ``x`` (float64),
    built blockwise from ``|a|^2 + |b|^2 - 2 a.b`` (one BLAS matrix product per
    block of rows against the rows after it) instead of ``pdist``'s scalar loop."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    out = np.empty(n * (n - 1) // 2, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    rows = int(max(1, block_bytes // (8 * max(n, 1))))
    pos = 0
    for s in range(0, n - 1, rows):
        e = min(n - 1, s + rows)
        blk = x[s:e] @ x[s:].T  # [e-s, n-s]
        blk *= -2.0
        blk += sq[s:e, None]
        blk += sq[None, s:]
        np.maximum(blk, 0.0, out=blk)
        np.sqrt(blk, out=blk)
        for r in range(e - s):
            seg = blk[r, r + 1 :]
            out[pos : pos + seg.size] = seg
            pos += seg.size
    return out


def exact_bytes(n: int) -> int:
    """Peak bytes of ``exact``'s distances: condensed float64 plus scipy's copy."""
    return 2 * 8 * (n * (n - 1) // 2)


# ----------------------------------------------------------------------------- methods


def _log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(f"[whole] {msg}", file=sys.stderr, flush=True)


def _exact(x: np.ndarray, ks: dict[int, int], opts: WholeOptions, params, timings) -> dict:
    """Ward on all points from matmul distances; one tree cut at every count."""
    params.update(distances="matmul-float64", linkage="scipy-ward", precision="fp64")
    t0 = time.perf_counter()
    y = condensed_distances(x)
    timings["distances"] = time.perf_counter() - t0
    _log(opts.quiet, f"distances of {x.shape[0]} points: {timings['distances']:.1f}s; Ward linkage")
    t0 = time.perf_counter()
    z = ward(y, x.shape[0])
    del y
    timings["ward"] = time.perf_counter() - t0
    children = z[:, :2].astype(np.int64)
    return {c: cut_tree(children, x.shape[0], kc) for c, kc in ks.items()}


def _exact_rnn(x: np.ndarray, ks: dict[int, int], opts: WholeOptions, params, timings) -> dict:
    """Ward on all points by reciprocal-nearest-neighbour rounds; one tree cut at every count."""
    from clusterprobe.runners.engine.rnn_ward import rnn_ward

    _log(opts.quiet, f"exact Ward of {x.shape[0]} points by reciprocal-nearest-neighbour rounds")
    res = rnn_ward(x, device=opts.device, quiet=opts.quiet)
    params.update(
        linkage="rnn-ward-centroids",
        precision="fp64",  # every merge decided by float64 costs
        search_filter=res.filter,  # the certified lower bounds that prune the search
        device=res.device,
        rounds=str(res.rounds),
    )
    timings["ward"] = res.seconds["total"]
    timings["search"] = res.seconds["search"]
    _log(opts.quiet, f"{res.rounds} rounds on {res.device}: {res.seconds['total']:.1f}s")
    children = res.linkage[:, :2].astype(np.int64)
    return {c: cut_tree(children, x.shape[0], kc) for c, kc in ks.items()}


def _knn_ward(x: np.ndarray, ks: dict[int, int], opts: WholeOptions, params, timings) -> dict:
    """Ward under a symmetrised k-NN connectivity; one tree cut at every count."""
    n = x.shape[0]
    if opts.k >= n:
        raise ValueError(f"k={opts.k} neighbours needs more than {opts.k} points; got {n}")
    params.update(
        k=str(opts.k),
        index=opts.index,
        precision=opts.precision,
        linkage="sklearn-ward-connectivity",
    )
    xf = np.ascontiguousarray(x, dtype=np.float32)
    children = _knn_ward_children(xf, opts, timings, params)
    return {c: cut_tree(children, n, kc) for c, kc in ks.items()}


def _knn_ward_children(x, opts: WholeOptions, timings, params) -> np.ndarray:
    """Merge order of Ward under a symmetrised k-NN connectivity, components explicit."""
    from clusterprobe.runners.engine import neighbors
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components
    from sklearn.cluster import ward_tree

    n, k = x.shape[0], opts.k
    t0 = time.perf_counter()
    _, idx = neighbors.knn(x, k, backend=opts.backend, index=opts.index, precision=opts.precision)
    timings["knn"] = time.perf_counter() - t0
    params["backend"] = neighbors.knn_backend(n, x.shape[1], backend=opts.backend, index=opts.index)
    _log(opts.quiet, f"{k}-NN graph of {n} points ({params['backend']}): {timings['knn']:.1f}s")
    graph = sparse.csr_matrix(
        (np.ones(idx.size, dtype=np.int8), (np.repeat(np.arange(n), idx.shape[1]), idx.ravel())),
        shape=(n, n),
    )
    graph = ((graph + graph.T) > 0).astype(np.int8).tocsr()
    n_comp, comp = connected_components(graph, directed=False)
    params["graph_components"] = str(n_comp)
    t0 = time.perf_counter()
    pieces = []  # per component: (global point ids, children local, distances)
    by_comp = np.argsort(comp, kind="stable")
    bounds = np.searchsorted(comp[by_comp], np.arange(n_comp + 1))
    for c in range(n_comp):
        ids = by_comp[bounds[c] : bounds[c + 1]]
        if ids.size == 1:
            pieces.append((ids, np.zeros((0, 2), np.int64), np.zeros(0)))
            continue
        sub = graph[ids][:, ids]
        ch, _, _, _, dist = ward_tree(x[ids], connectivity=sub, return_distance=True)
        pieces.append((ids, np.asarray(ch, np.int64), np.asarray(dist, np.float64)))
    timings["ward"] = time.perf_counter() - t0
    if n_comp > 1:
        _log(
            opts.quiet, f"k-NN graph has {n_comp} components: joined by weighted Ward on centroids"
        )
    return _join_components(x, pieces, n)


def _join_components(x, pieces, n) -> np.ndarray:
    """One merge order for a forest of per-component trees: every within-component
    merge (interleaved across components by height, each component's own order
    kept), then the components joined by size-weighted Ward on their centroids."""
    keys, owner, local = [], [], []
    for c, (_, ch, dist) in enumerate(pieces):
        keys.append(np.maximum.accumulate(dist) if dist.size else dist)
        owner.append(np.full(ch.shape[0], c))
        local.append(np.arange(ch.shape[0]))
    keys_a, owner_a, local_a = (np.concatenate(v) for v in (keys, owner, local))
    order = np.argsort(keys_a, kind="stable")
    children = np.empty((n - 1, 2), dtype=np.int64)
    # node id of every component's local node, filled as merges are placed
    maps = []
    for ids, ch, _ in pieces:
        mp = np.empty(ids.size + ch.shape[0], dtype=np.int64)
        mp[: ids.size] = ids
        maps.append(mp)
    for g, j in enumerate(order):
        c, m = int(owner_a[j]), int(local_a[j])
        ids, ch, _ = pieces[c]
        children[g] = maps[c][ch[m]]
        maps[c][ids.size + m] = n + g
    placed = order.size
    if len(pieces) > 1:
        roots = np.array([mp[-1] for mp in maps], dtype=np.int64)
        cent = np.stack([x[ids].mean(0) for ids, _, _ in pieces])
        size = np.array([ids.size for ids, _, _ in pieces], dtype=np.float64)
        z = weighted_ward(cent, size)
        top = np.concatenate([roots, np.empty(len(pieces) - 1, dtype=np.int64)])
        for j in range(z.shape[0]):
            children[placed + j] = top[z[j, :2].astype(np.int64)]
            top[len(pieces) + j] = n + placed + j
    return children


def _two_stage(x: np.ndarray, ks: dict[int, int], opts: WholeOptions, params, timings) -> dict:
    """k-means to micro-clusters, size-weighted Ward on their means, cut at every count."""
    params.update(
        micro_clusters=str(opts.micro_clusters),
        niter=str(opts.niter),
        seed=str(opts.seed),
        precision="fp32",
    )
    params["linkage"] = "weighted-ward-centroids"
    xf = np.ascontiguousarray(x, dtype=np.float32)
    by_k = _micro_ward(xf, sorted(set(ks.values())), opts, timings, params)
    return {c: by_k[kc] for c, kc in ks.items()}


def _micro_ward(x, counts, opts: WholeOptions, timings, params) -> dict[int, np.ndarray]:
    """Labels per cluster count: k-means to ``opts.micro_clusters``, then weighted Ward."""
    from clusterprobe.runners.engine import neighbors

    m = opts.micro_clusters
    t0 = time.perf_counter()
    km = neighbors.kmeans(x, m, seed=opts.seed, niter=opts.niter, backend=opts.backend)
    timings["kmeans"] = time.perf_counter() - t0
    params["backend"] = km.backend
    _log(opts.quiet, f"k-means to {m} micro-clusters ({km.backend}): {timings['kmeans']:.1f}s")
    sizes = km.sizes.astype(np.float64)
    used = np.flatnonzero(sizes > 0)  # an empty micro-cluster would be a phantom leaf
    # Ward needs the member means of the final assignment (k-means' own centroids
    # may lag it by one update).
    cent = km.means[used]
    remap = np.full(m, -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    point_leaf = remap[km.labels]
    params["micro_clusters_used"] = str(used.size)
    t0 = time.perf_counter()
    z = weighted_ward(cent, sizes[used])
    timings["ward"] = time.perf_counter() - t0
    children = z[:, :2].astype(np.int64)
    return {kc: cut_tree(children, used.size, kc)[point_leaf] for kc in counts}


def _kmeans(x: np.ndarray, ks: dict[int, int], opts: WholeOptions, params, timings) -> dict:
    """k-means straight into every count (one fit per count, not hierarchical)."""
    from clusterprobe.runners.engine import neighbors

    params.update(niter=str(opts.niter), seed=str(opts.seed), precision="fp32")
    xf = np.ascontiguousarray(x, dtype=np.float32)
    labels = {}
    t0 = time.perf_counter()
    for c, kc in ks.items():
        km = neighbors.kmeans(xf, kc, seed=opts.seed, niter=opts.niter, backend=opts.backend)
        labels[c] = km.labels
        params["backend"] = km.backend
    timings["kmeans"] = time.perf_counter() - t0
    return labels


# method -> labels per cluster count; "auto" picks one of these (choices.WHOLE_METHODS)
_ALGORITHMS = {
    "exact": _exact,
    "exact-rnn": _exact_rnn,
    "knn-ward": _knn_ward,
    "two-stage": _two_stage,
    "kmeans": _kmeans,
}


def lloyd_refine(x: np.ndarray, labels: np.ndarray, steps: int) -> np.ndarray:
    """``steps`` k-means (Lloyd) iterations started from the partition ``labels``:
    every point moves to the nearest cluster mean, means are recomputed.

    Each step lowers the within-cluster sum of squares, the criterion Ward
    greedily minimises, so the result is no longer a cut of one tree (factors are
    no longer nested) and no longer Ward's partition: on hard data (blobs whose
    sub-clusters overlap) a two-stage partition refined for 3 steps scored AMI
    0.997 where full Ward scored 0.917 (benchmarks/whole.py --spread 1 0.25 1).
    A cluster that loses all its points disappears (fewer clusters, labels
    renumbered 0..c-1).
    """
    from clusterprobe.runners.engine.neighbors import _member_means

    lab = np.asarray(labels, dtype=np.int64)
    rows = 4096
    for _ in range(steps):
        sizes, means = _member_means(x, lab, int(lab.max()) + 1)
        means = means[sizes > 0].astype(np.float32)
        sq = np.einsum("ij,ij->i", means, means)
        new = np.empty_like(lab)
        for s in range(0, x.shape[0], rows):  # |x - m|^2 - |x|^2, by BLAS blocks
            new[s : s + rows] = np.argmin(sq[None, :] - 2.0 * (x[s : s + rows] @ means.T), axis=1)
        if np.array_equal(new, lab):
            break
        lab = new
    _, lab = np.unique(lab, return_inverse=True)
    return lab.astype(np.int64)


# ----------------------------------------------------------------------------- entry points


def check_features(features) -> np.ndarray:
    """``features`` as an array [N >= 2, d >= 1] of finite numbers, or ValueError/TypeError."""
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"features must be a 2-D array [N >= 2, d >= 1]; got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"features must be numeric; got dtype {x.dtype}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(
            f"features contain NaN or Inf in {bad} of {x.shape[0]} rows; clean them first"
        )
    return x


@dataclass
class WholeClustering:
    labels: dict[int, np.ndarray]  # cluster count -> int64 [N] labels
    params: dict[str, str]
    timings: dict[str, float]


def cluster_whole(
    features: np.ndarray,
    n_clusters,
    *,
    method: str = "auto",
    options: WholeOptions | None = None,
) -> WholeClustering:
    """Partition the rows of ``features`` into each count of ``n_clusters`` (no
    labels needed: what ``score_whole`` and the transfer protocol build on).

    Counts above N are capped at N (the key stays the count asked). ``method`` and
    ``options`` as in :func:`score_whole`.
    """
    check_choice("method", method, WHOLE_METHODS)
    opts = (options or WholeOptions()).validate()
    x = check_features(features)
    asked = sorted({int(c) for c in n_clusters})
    if not asked or asked[0] < 1:
        raise ValueError(f"cluster counts {n_clusters!r} must be integers >= 1")
    return _cluster(x, asked, method, opts)


def _cluster(x: np.ndarray, asked: list[int], method: str, opts: WholeOptions) -> WholeClustering:
    """:func:`cluster_whole` of checked inputs (``asked``: sorted counts >= 1)."""
    n = x.shape[0]
    ks = {c: min(n, c) for c in asked}
    params: dict[str, str] = {"method": method, "n_points": str(n), "dim": str(x.shape[1])}
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    algo, opts = _resolve(method, n, max(ks.values()), opts, params)
    params["algorithm"] = algo
    labels = _ALGORITHMS[algo](x, ks, opts, params, timings)
    if opts.refine:
        labels = _refined(x, labels, opts.refine, params, timings)
    timings["cluster"] = time.perf_counter() - t_all
    return WholeClustering(labels=labels, params=params, timings=timings)


def _resolve(method: str, n: int, kmax: int, opts: WholeOptions, params) -> tuple:
    """(algorithm, options) for ``n`` points: ``auto`` decided by the memory budget and
    exact-rnn's limit, two-stage's micro-cluster count settled (and two-stage on
    every point is exact)."""
    algo = method
    if method == "auto":
        params["memory_budget_gb"] = str(opts.memory_budget_gb)
        if exact_bytes(n) <= opts.memory_budget_gb * 1e9:
            algo = "exact"
        else:
            limit = rnn_max_points(opts)
            params["rnn_max_points"] = str(limit)
            algo = "exact-rnn" if n <= limit else "two-stage"
    if algo != "two-stage":
        return algo, opts
    m = int(opts.micro_clusters) if opts.micro_clusters else max(1000, 4 * kmax)
    if m < kmax:
        raise ValueError(
            f"micro_clusters={m} is fewer than the {kmax} clusters asked; "
            f"use at least {kmax} (default: 4x that)"
        )
    if m >= n:  # every point its own micro-cluster: that is exact Ward
        params["two_stage_note"] = f"micro_clusters {m} >= N {n}: exact Ward on the points"
        return "exact", opts
    return algo, replace(opts, micro_clusters=m)


def rnn_max_points(opts: WholeOptions) -> int:
    """The largest N ``auto`` gives to exact-rnn: ``opts.rnn_max_points``, else
    ``RNN_MAX_POINTS`` for the device exact-rnn would run on."""
    if opts.rnn_max_points is not None:
        return int(opts.rnn_max_points)
    if opts.device == "auto":
        from clusterprobe.runners.engine.neighbors import _torch_cuda

        return RNN_MAX_POINTS["cuda" if _torch_cuda() else "cpu"]
    return RNN_MAX_POINTS["cpu" if opts.device == "cpu" else "cuda"]


def _refined(x: np.ndarray, labels: dict, steps: int, params, timings) -> dict:
    t0 = time.perf_counter()
    xf = np.ascontiguousarray(x, dtype=np.float32)
    out = {c: lloyd_refine(xf, lab, steps) for c, lab in labels.items()}
    params["refine_steps"] = str(steps)
    timings["refine"] = time.perf_counter() - t0
    return out


def score_whole(
    features: np.ndarray,
    subclass: np.ndarray,
    factors=(1, 2, 3, 4, 5),
    *,
    method: str = "auto",
    options: WholeOptions | None = None,
) -> WholeResult:
    """Cluster all rows of ``features`` into ``#subclasses * factor`` clusters per
    factor and score each partition against ``subclass`` (AMI, purity).

    ``features`` should be L2-normalised by the caller (as ``score`` does); no
    method here relies on unit norm. ``method``: one of ``choices.WHOLE_METHODS``
    (module docstring). ``options``: a :class:`WholeOptions` (default: its
    defaults), e.g. ``WholeOptions(k=15)`` for knn-ward's graph or
    ``WholeOptions(refine=3)`` for Lloyd steps after each partition (recorded as
    ``refine_steps``). A cluster count above N is capped at N (recorded in
    ``n_clusters``). ``timings``: seconds per stage; ``cluster`` is the clustering
    alone, ``scores`` the AMI/purity, ``total`` both.
    """
    t_all = time.perf_counter()
    check_choice("method", method, WHOLE_METHODS)
    opts = (options or WholeOptions()).validate()
    x = check_features(features)
    y = np.asarray(subclass).ravel()
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"subclass has {y.shape[0]} labels but features have {x.shape[0]} rows")
    facs = tuple(sorted({int(f) for f in factors}))
    if not facs or facs[0] < 1:
        raise ValueError(f"factors {factors!r} must be integers >= 1, e.g. (1, 2, 3, 4, 5)")
    n_sub = int(np.unique(y).size)
    asked = {f: n_sub * f for f in facs}
    res = _cluster(x, sorted(set(asked.values())), method, opts)
    labels = {f: res.labels[asked[f]] for f in facs}
    t0 = time.perf_counter()
    tables = [metrics.contingency(y, labels[f]) for f in facs]
    ami = dict(zip(facs, map(float, metrics.ami_many(tables)), strict=True))
    purity = {f: metrics.purity_from_table(t) for f, t in zip(facs, tables, strict=True)}
    timings = dict(res.timings)
    timings["scores"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    summary = ", ".join(f"f{f}={ami[f]:.3f}" for f in facs)
    _log(opts.quiet, f"{res.params['algorithm']}: AMI {summary}")
    return WholeResult(
        ami=ami,
        purity=purity,
        labels=labels,
        params=res.params,
        n_clusters={f: min(x.shape[0], asked[f]) for f in facs},
        timings=timings,
    )


def score_layers(
    pooled: list[np.ndarray],
    labels: np.ndarray,
    factors,
    *,
    method: str = "auto",
    seed: int = 0,
    on_layer=None,
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """:func:`score_whole` of every layer's pooled features, L2-normalised as ``score`` does.

    Returns ami and purity [L, F] (F = ``factors`` in order) and how the first layer was
    clustered (the method is the same for all). ``seed``: ``WholeOptions.seed``, the
    other options at their defaults. ``on_layer(index, ami_row)`` reports progress
    after each layer.
    """
    from clusterprobe.runners.engine.score import unit_rows

    factors = tuple(factors)
    options = WholeOptions(seed=seed)
    ami = np.empty((len(pooled), len(factors)))
    purity = np.empty_like(ami)
    params: dict[str, str] = {}
    for li, x in enumerate(pooled):
        res = score_whole(unit_rows(x), labels, factors, method=method, options=options)
        ami[li] = [res.ami[f] for f in factors]
        purity[li] = [res.purity[f] for f in factors]
        params = params or {str(k): str(v) for k, v in res.params.items()}
        if on_layer is not None:
            on_layer(li, ami[li])
    return ami, purity, params
