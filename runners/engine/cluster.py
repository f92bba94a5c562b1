"""Per-superclass Ward clustering from Gram matrices: the paper's protocol.

For every superclass s and layer l the input is ``G = X X^T`` for the
superclass's L2-normalised, flattened activations X (rows of zeros allowed:
a zero activation stays a zero vector, as ``sklearn.preprocessing.normalize``
leaves it). Squared Euclidean distances follow without the features,
``d_ij^2 = G_ii + G_jj - 2 G_ij`` (not ``2 - 2 G_ij``, so zero rows keep their
distance 1 to unit rows and 0 to each other), clipped at 0 against rounding.

Ward's tree is built ONCE per (superclass, layer) by scipy's nn-chain Ward
(:mod:`clusterprobe.runners.engine.ward`, = ``scipy.cluster.hierarchy.linkage``) on the
condensed distances, exactly what
``sklearn.cluster.AgglomerativeClustering(linkage="ward")`` runs on the
features (it calls ``scipy.cluster.hierarchy.ward`` after ``pdist``), and cut
at every factor by merge order (sklearn's ``_hc_cut``): n_clusters =
#subclasses of that superclass x factor, clamped to the superclass's size.
Each cut is scored by AMI and purity against the subclass labels
(:mod:`clusterprobe.runners.engine.metrics`). Nguyen & Kornblith (arXiv 2311.07864).

numpy + scipy only; importing this module never imports torch.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from clusterprobe.runners.choices import CLUSTER_BACKENDS, check_choice
from clusterprobe.runners.engine import metrics
from clusterprobe.runners.engine.ward import cut_tree, ward


class DeadLayerWarning(UserWarning):
    """A layer whose features are constant within a superclass (all zero or all equal)."""


@dataclass
class ProtocolResult:
    factors: tuple[int, ...]
    superclasses: list[int]
    ami: np.ndarray  # float64 [L, S, F]
    purity: np.ndarray  # float64 [L, S, F]
    assignments: dict[tuple[int, int], np.ndarray]  # (layer, superclass) -> int [F, n]
    params: dict[str, str] = field(default_factory=dict)  # how it was computed
    dead: dict[int, list[int]] = field(default_factory=dict)  # layer -> constant superclasses
    n_clusters: np.ndarray | None = None  # int [S, F]: clusters asked for after clamping

    @property
    def num_layers(self) -> int:
        return int(self.ami.shape[0])

    def mean_ami(self) -> np.ndarray:
        """[L, F]: AMI averaged over superclasses (unweighted, as in the paper)."""
        return self.ami.mean(axis=1)

    def mean_purity(self) -> np.ndarray:
        """[L, F]: purity averaged over superclasses."""
        return self.purity.mean(axis=1)

    def rows(self) -> list[dict]:
        """Tidy rows: one per (layer_index, superclass, factor, metric) with its value."""
        out: list[dict] = []
        for metric, values in (("ami", self.ami), ("purity", self.purity)):
            for li in range(values.shape[0]):
                for si, s in enumerate(self.superclasses):
                    for fi, f in enumerate(self.factors):
                        out.append(
                            {
                                "layer_index": li,
                                "superclass": int(s),
                                "factor": int(f),
                                "metric": metric,
                                "value": float(values[li, si, fi]),
                            }
                        )
        return out


# --- the core: one (superclass, layer) ------------------------------------------------


def gram_distances(gram: np.ndarray) -> np.ndarray:
    """Condensed Euclidean distances (scipy's ``pdist`` order) from a Gram matrix, float64."""
    g = np.asarray(gram)
    n = g.shape[0]
    iu, ju, flat = _triu(n)
    diag = np.diagonal(g).astype(np.float64)
    # only the n(n-1)/2 upper-triangle entries are formed (not the n x n matrix)
    y = diag[iu] + diag[ju]
    y -= 2.0 * np.take(g.reshape(-1), flat).astype(np.float64)
    np.maximum(y, 0.0, out=y)
    return np.sqrt(y, out=y)


_TRIU_CACHE: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _triu(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and flat indices of the strict upper triangle of n x n, row by row."""
    if n not in _TRIU_CACHE:
        if len(_TRIU_CACHE) > 16:
            _TRIU_CACHE.clear()
        iu, ju = np.triu_indices(n, 1)
        _TRIU_CACHE[n] = (iu, ju, iu * n + ju)
    return _TRIU_CACHE[n]


def _dead_tolerance(dtype) -> float:
    # Distances of identical float32 unit vectors computed from a Gram carry ~1e-7 noise.
    return 64.0 * float(np.finfo(np.float32 if dtype == np.float32 else np.float64).eps)


def _score_one(gram: np.ndarray, true_idx: np.ndarray, n_sub: int, factors: tuple[int, ...]):
    """Ward tree of one Gram, cut at every factor.

    Returns (tables [F] of contingency tables, purity [F], labels [F, n], ks, dead); the
    caller turns every tree's tables into AMI in one vectorised pass.
    """
    n = gram.shape[0]
    F = len(factors)
    ks = [min(n_sub * f, n) for f in factors]
    purs = np.empty(F)
    labels = np.empty((F, n), dtype=np.int64)
    diag = np.diagonal(gram).astype(np.float64)
    if n < 2:
        labels[:] = 0
        tables = [np.ones((1, 1), dtype=np.int64) for _ in range(F)]
        purs[:] = 1.0
        return tables, purs, labels, ks, bool(diag.max(initial=0.0) == 0.0)
    y = gram_distances(gram)
    dead = bool(y.max() ** 2 <= _dead_tolerance(gram.dtype) * max(1.0, float(diag.max())))
    merges = ward(y, n)
    r = int(true_idx.max()) + 1
    tables = []
    for fi, k in enumerate(ks):
        pred = cut_tree(merges, n, k)
        labels[fi] = pred
        kk = int(pred.max()) + 1
        tables.append(np.bincount(true_idx * kk + pred, minlength=r * kk).reshape(r, kk))
        purs[fi] = metrics.purity_from_table(tables[-1])
    return tables, purs, labels, ks, dead


def _score_task(task):
    """One superclass, a block of its layers (a unit of parallel work)."""
    s, grams, true_idx, n_sub, factors, layers = task
    return s, layers, [_score_one(grams[li], true_idx, n_sub, factors) for li in layers]


# --- the protocol ----------------------------------------------------------------------


def _check_inputs(grams: dict, subclass: dict) -> dict[int, np.ndarray]:
    """Every superclass's Grams as a float [L, n, n] array; ValueError naming the first problem."""
    if not grams:
        raise ValueError("no superclasses given: grams is empty")
    if set(grams) != set(subclass):
        raise ValueError(
            f"grams and subclass cover different superclasses: {sorted(grams)} vs {sorted(subclass)}"
        )
    out: dict[int, np.ndarray] = {}
    num_layers = None
    for s in sorted(grams):
        g = np.asarray(grams[s])
        if g.ndim == 2:
            g = g[None]
        if g.ndim != 3 or g.shape[1] != g.shape[2]:
            raise ValueError(
                f"superclass {s}: Gram must be [L, n, n] or [n, n], got shape {tuple(g.shape)}"
            )
        if not np.issubdtype(g.dtype, np.floating):
            g = g.astype(np.float64)
        labels = np.asarray(subclass[s]).ravel()
        if labels.shape[0] != g.shape[1]:
            raise ValueError(
                f"superclass {s}: {labels.shape[0]} subclass labels for a {g.shape[1]} x {g.shape[1]} Gram"
            )
        if g.shape[1] == 0:
            raise ValueError(f"superclass {s} has no images")
        if num_layers is None:
            num_layers = g.shape[0]
        elif g.shape[0] != num_layers:
            raise ValueError(f"superclass {s}: {g.shape[0]} layers, others have {num_layers}")
        _check_finite(s, g)
        out[s] = g
    return out


def _check_finite(s: int, g: np.ndarray) -> None:
    finite = np.isfinite(g)
    if not finite.all():
        li = int(np.argwhere(~finite.reshape(g.shape[0], -1).all(axis=1))[0, 0])
        bad = int((~finite).sum())
        raise ValueError(
            f"superclass {s}, layer {li}: the Gram matrix holds {bad} NaN/Inf values; "
            "features must be finite"
        )


def cluster_protocol(
    grams: dict[int, np.ndarray],
    subclass: dict[int, np.ndarray],
    factors=(1, 2, 3, 4, 5),
    *,
    n_jobs: int | None = None,
    backend: str = "thread",
) -> ProtocolResult:
    """Ward inside each superclass at every layer and factor; AMI and purity per superclass.

    grams[s]: [L, n_s, n_s] (or [n_s, n_s] for one layer), the Gram matrix of unit
    vectors (zero rows allowed) of superclass s. subclass[s]: [n_s] subclass labels
    (any integers). n_clusters = #distinct subclasses in s x factor, clamped to n_s.

    n_jobs: parallel workers over (superclass, layer blocks); 1 = serial; None =
    serial with threads, all cores with processes. backend: "thread" (default) or
    "process" (fork). scipy's Ward (``nn_chain``, half the time per tree) holds the
    GIL, so threads only add contention (2 threads measured 1.2x slower than one on
    208 trees of 200 points); forking a process that holds torch costs more than
    the ~0.6 ms per tree on 2 cores, but pays off with many cores and big trees.
    A constant layer (every vector zero or all equal) warns
    (:class:`DeadLayerWarning`), is listed in ``.dead`` and is still scored:
    Ward on all-zero distances merges arbitrarily, so its AMI is ~0.
    Bad input raises ValueError naming it.
    """
    factors = tuple(int(f) for f in factors)
    if not factors or min(factors) < 1:
        raise ValueError(f"factors {factors!r}: give integers >= 1, e.g. (1, 2, 3, 4, 5)")
    check_choice("backend", backend, CLUSTER_BACKENDS)
    checked = _check_inputs(grams, subclass)
    sups = sorted(checked)
    num_layers = next(iter(checked.values())).shape[0]
    serial = n_jobs is None and backend == "thread"
    workers = 1 if serial else resolve_workers(n_jobs, len(sups) * num_layers)
    tasks = _tasks(checked, subclass, factors, workers)
    with _mapper(workers, backend) as run:
        trees = _Trees.collect(run(_score_task, tasks), sups, num_layers, len(factors))
    ami = trees.ami()
    _warn_dead(trees.dead)
    return ProtocolResult(
        factors=factors,
        superclasses=[int(s) for s in sups],
        ami=ami,
        purity=trees.purity,
        assignments=trees.assignments,
        params=_params(factors, next(iter(checked.values())).dtype, workers, backend),
        dead=trees.dead,
        n_clusters=trees.n_clusters,
    )


def _tasks(checked: dict, subclass: dict, factors: tuple[int, ...], workers: int) -> list:
    """Units of work: one superclass and a block of its layers, ~4 tasks per worker."""
    sups = sorted(checked)
    num_layers = next(iter(checked.values())).shape[0]
    per_task = (
        max(1, (len(sups) * num_layers) // max(1, 4 * workers)) if workers > 1 else num_layers
    )
    tasks = []
    for s in sups:
        _, true_idx = np.unique(np.asarray(subclass[s]).ravel(), return_inverse=True)
        n_sub = int(true_idx.max()) + 1
        for start in range(0, num_layers, per_task):
            layers = list(range(start, min(num_layers, start + per_task)))
            tasks.append((s, checked[s], true_idx, n_sub, factors, layers))
    return tasks


@contextlib.contextmanager
def _mapper(workers: int, backend: str):
    """``map`` in this thread, or a thread / fork-process pool's ``map``, shut down after."""
    if workers <= 1:
        yield map
        return
    if backend == "thread":
        pool = ThreadPoolExecutor(workers)
    else:
        import multiprocessing as mp

        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))
    try:
        yield pool.map
    finally:
        pool.shutdown()


@dataclass
class _Trees:
    """Every tree's cuts gathered from the tasks: purity, labels, and contingency tables."""

    purity: np.ndarray  # [L, S, F]
    n_clusters: np.ndarray  # int [S, F]
    assignments: dict[tuple[int, int], np.ndarray]
    dead: dict[int, list[int]]
    tables: list[np.ndarray]  # every tree's cuts, in the order of ``where``
    where: list[tuple[int, int]]  # (layer, superclass index) of each tree

    @classmethod
    def collect(cls, results, sups: list[int], num_layers: int, num_factors: int) -> _Trees:
        index = {s: i for i, s in enumerate(sups)}
        out = cls(
            purity=np.empty((num_layers, len(sups), num_factors)),
            n_clusters=np.empty((len(sups), num_factors), dtype=np.int64),
            assignments={},
            dead={},
            tables=[],
            where=[],
        )
        for s, layers, outs in results:
            si = index[s]
            for li, (tabs, p, lab, ks, is_dead) in zip(layers, outs, strict=True):
                out.tables.extend(tabs)
                out.where.append((li, si))
                out.purity[li, si] = p
                out.assignments[(li, s)] = lab
                out.n_clusters[si] = ks
                if is_dead:
                    out.dead.setdefault(li, []).append(s)
        for li in out.dead:
            out.dead[li].sort()
        return out

    def ami(self) -> np.ndarray:
        """[L, S, F] AMI of all cuts of all trees: E[MI] in one vectorised pass, not one per tree."""
        num_factors = self.purity.shape[2]
        amis = metrics.ami_many(self.tables).reshape(len(self.where), num_factors)
        out = np.empty_like(self.purity)
        for (li, si), a in zip(self.where, amis, strict=True):
            out[li, si] = a
        return out


def _warn_dead(dead: dict[int, list[int]]) -> None:
    for li in sorted(dead):
        warnings.warn(
            f"layer {li}: features are constant (all zero or all identical) in superclass(es) "
            f"{dead[li]}; Ward on all-zero distances is arbitrary there, AMI ~0",
            DeadLayerWarning,
            stacklevel=3,
        )


def _params(factors: tuple[int, ...], gram_dtype, workers: int, backend: str) -> dict[str, str]:
    """How the protocol's numbers were made (logged as the eval run's cluster.* params)."""
    return {
        "algorithm": "ward",
        "ward_impl": "scipy nn_chain (= scipy.cluster.hierarchy.linkage ward)",
        "distance": "euclidean from gram: sqrt(max(G_ii+G_jj-2G_ij, 0)), float64",
        "cut": "merge order (= sklearn _hc_cut)",
        "n_clusters": "subclasses_in_superclass*factor, clamped to n",
        "ami": "adjusted_mutual_info_score, arithmetic",
        "purity": "sum of majority counts / n",
        "factors": ",".join(str(f) for f in factors),
        "gram_dtype": str(gram_dtype),
        "n_jobs": str(workers),
        "backend": backend if workers > 1 else "serial",
    }


def resolve_workers(n_jobs: int | None, n_tasks: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if n_jobs is None:
        n_jobs = cores or 1
    elif n_jobs < 0:  # joblib style: -1 = all cores
        n_jobs = max(1, (cores or 1) + 1 + n_jobs)
    return max(1, min(int(n_jobs), n_tasks))


# --- stability ---------------------------------------------------------------------------


def ari_matrix(assign_a: dict, assign_b: dict, factor_index: int = 0) -> np.ndarray:
    """[La, Lb] ARI between the clusterings of two results, averaged over superclasses.

    ``assign_a``/``assign_b`` are :attr:`ProtocolResult.assignments` (``(layer,
    superclass) -> [F, n]``) of the same images: pass one result twice for the
    paper's layer x layer matrix, or two seeds / checkpoints for their
    stability. Only superclasses present in both are used; rows must align.
    """
    layers_a = sorted({li for li, _ in assign_a})
    layers_b = sorted({li for li, _ in assign_b})
    sups = sorted({s for _, s in assign_a} & {s for _, s in assign_b})
    if not sups:
        raise ValueError("the two assignment sets share no superclass")
    out = np.zeros((len(layers_a), len(layers_b)))
    for s in sups:
        for i, la in enumerate(layers_a):
            xa = assign_a[(la, s)][factor_index]
            for j, lb in enumerate(layers_b):
                xb = assign_b[(lb, s)][factor_index]
                if xa.shape != xb.shape:
                    raise ValueError(
                        f"superclass {s}: {xa.shape[0]} vs {xb.shape[0]} assignments; "
                        "compare clusterings of the same images"
                    )
                out[i, j] += metrics.ari(xa, xb)
    return out / len(sups)
