"""Ward linkage from condensed distances: scipy's nearest-neighbour chain, imported lean.

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
