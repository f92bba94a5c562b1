"""Ward trees: scipy's nearest-neighbour chain imported lean, and cutting a tree by merge order.

``scipy.cluster.hierarchy.linkage(y, "ward")`` validates ``y`` and then runs one
compiled function, ``scipy.cluster._hierarchy.nn_chain``. Importing
``scipy.cluster`` to reach it costs 0.25-0.5 s (the package pulls in
``scipy.cluster.vq``, ``scipy.spatial``, the array-API layer and docstring
processing), which is most of ``clusterprobe score``'s start-up and all of its
start-up beyond numpy. We load that compiled module from its file instead (10 ms)
and register it under its own name, so a later ``import scipy.cluster`` reuses it.
If scipy ever moves or renames it, :func:`ward` falls back to the public
``linkage``; tests/test_cluster.py checks the two agree merge for merge.

Callers pass finite, non-negative condensed distances (``cluster.gram_distances``
makes them); that is the validation ``linkage`` would do.

:func:`cut_tree` cuts any tree given in merge order (scipy's ``Z``, sklearn's
``children_``, the whole-dataset methods' merge lists) into a number of clusters;
the per-superclass protocol and whole-dataset clustering share it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

import numpy as np

_WARD_CODE = 5  # scipy.cluster.hierarchy._LINKAGE_METHODS["ward"]
_NAME = "scipy.cluster._hierarchy"


def _load_nn_chain():
    """scipy's compiled nn_chain, or None when it cannot be found where scipy keeps it."""
    try:
        module = sys.modules.get(_NAME)
        if module is None:
            import scipy

            folder = os.path.join(os.path.dirname(scipy.__file__), "cluster")
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(folder, "_hierarchy" + suffix)
                if os.path.exists(path):
                    break
            else:
                return None
            spec = importlib.util.spec_from_file_location(_NAME, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[_NAME] = module
        return module.nn_chain
    except Exception:  # any surprise in scipy's layout: use the public API instead
        return None


_nn_chain = _load_nn_chain()


def ward(y: np.ndarray, n: int) -> np.ndarray:
    """Ward linkage matrix [n-1, 4] of ``n`` points from condensed distances ``y``.

    Identical to ``scipy.cluster.hierarchy.linkage(y, method="ward")``.
    """
    y = np.ascontiguousarray(y, dtype=np.float64)
    if _nn_chain is not None:
        return _nn_chain(y, n, _WARD_CODE)
    from scipy.cluster.hierarchy import linkage

    return linkage(y, method="ward")


def cut_tree(merges: np.ndarray, n: int, n_clusters: int) -> np.ndarray:
    """Labels 0..c-1 of the ``n`` leaves after the first ``n - n_clusters`` merges.

    ``merges``: ``[m, >= 2]`` in merge order, merge ``i`` joining the nodes in its
    first two columns into node ``n + i`` (scipy's linkage ``Z`` or sklearn's
    ``children_``). Cutting by merge order rather than by height reproduces
    sklearn's ``_hc_cut`` also when merge heights tie. A forest (``m < n - 1``)
    cannot go below ``n - m`` clusters: it stops there. Clusters are numbered in
    the order of their root node. Each leaf climbs to its highest ancestor among
    the applied merges by pointer doubling (O(n log n), no Python loop over points).
    """
    merges = np.asarray(merges)
    applied = min(max(n - int(n_clusters), 0), merges.shape[0])
    if applied == 0:
        return np.arange(n, dtype=np.int64)
    children = merges[:applied, :2].astype(np.int64)
    made = n + np.arange(applied)
    parent = np.arange(n + applied)
    parent[children[:, 0]] = made
    parent[children[:, 1]] = made
    # after t doublings every node points 2^t levels up (or to its root): depth <= applied
    up = parent
    for _ in range(int(applied).bit_length()):
        up = up[up]
    roots = up[:n]
    # number the roots 0..c-1 in node order (no sort needed)
    is_root = np.zeros(n + applied, dtype=np.int64)
    is_root[roots] = 1
    return (np.cumsum(is_root) - 1)[roots]


def relabel(rows: np.ndarray, n: int) -> np.ndarray:
    """Merges named by leaf slots -> scipy's linkage matrix ``Z`` [n-1, 4].

    ``rows``: ``(kept slot, other slot, height, size)`` per merge, listed so that
    every merge comes after the merges that made its two clusters; a cluster is
    named by a slot (a leaf id) and keeps the kept slot's name after the merge.
    Returns the rows sorted by height (stable: equal heights keep their order, so
    a merge never precedes one it depends on, Ward's heights being monotone) with
    scipy's node ids: merge ``t`` makes node ``n + t``; the two children, smaller
    id first. The node standing for slot ``s`` just before merge ``t`` is
    ``n + t'`` for the last earlier merge ``t'`` that kept ``s``, else leaf ``s``:
    found for all rows at once by a binary search over (slot, merge) keys.
    """
    r = np.asarray(rows, dtype=np.float64)
    r = r[np.argsort(r[:, 2], kind="stable")]
    m = r.shape[0]
    if m == 0:
        return np.zeros((0, 4))
    kept = r[:, 0].astype(np.int64)
    other = r[:, 1].astype(np.int64)
    step = np.arange(m, dtype=np.int64)
    keys = np.sort(kept * m + step)  # int64: n * m < 2^63 for any n this runs on

    def node(slots: np.ndarray) -> np.ndarray:
        i = np.searchsorted(keys, slots * m + step) - 1  # last key below (slot, this merge)
        prev = keys[np.maximum(i, 0)]
        hit = (i >= 0) & (prev // m == slots)
        return np.where(hit, n + prev % m, slots)

    x, y = node(kept), node(other)
    z = r.copy()
    z[:, 0] = np.minimum(x, y)
    z[:, 1] = np.maximum(x, y)
    return z
