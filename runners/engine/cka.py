"""Representational similarity: linear CKA between layers, from their Gram matrices.

Centred kernel alignment (Kornblith et al., ICML 2019) of two representations X
[n, p] and Y [n, q] of the same n images, with linear kernels K = X X^T, L = Y Y^T:

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

``"linear"``: the biased estimator, HSIC(K, L) = tr(K H L H) / (n - 1)^2 with the
centring matrix H = I - 11^T / n, which equals ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F
||Y_c^T Y_c||_F) for column-centred features. ``"debiased"``: the unbiased HSIC
estimator (Song et al., JMLR 2012), with K~ = K with its diagonal set to zero,

    HSIC_1(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2))
                    - 2 / (n-2) 1^T K~ L~ 1] / (n (n-3)),

which needs n >= 4 and removes the bias towards 1 that the linear estimator has when
n is small against the feature dimension.

The protocol already reduces every layer to the Gram matrix of its flattened,
L2-normalised features per superclass (``embed``), so CKA costs no forward pass:
per superclass, every pair of layers is one inner product of their n x n (centred)
Grams, L^2 of them as one matrix product. Values are averaged over superclasses
(unweighted, as AMI and ARI are). A layer whose centred Gram is zero (every image
has the same representation) has no defined CKA: NaN.

numpy only; how the matrices are stored is the eval run's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from clusterprobe.runners.choices import CKA_ESTIMATORS, check_choice

MIN_IMAGES = {"linear": 2, "debiased": 4}  # below this the estimator is undefined
# A layer's self-HSIC at or below this fraction of ||K||_F^2 is float32 rounding of a
# constant representation (all images alike), not a signal: its CKA is NaN.
UNDEFINED_BELOW = 1e-12


@dataclass(frozen=True)
class CkaMatrices:
    """CKA of every layer of A against every layer of B, per superclass and averaged."""

    estimator: str  # one of CKA_ESTIMATORS
    superclasses: list[int]
    per_superclass: np.ndarray  # float64 [S, La, Lb]
    mean: np.ndarray  # float64 [La, Lb], the unweighted mean over superclasses


def _check_grams(grams, name: str) -> np.ndarray:
    grams = np.asarray(grams)
    if grams.ndim != 3 or grams.shape[1] != grams.shape[2]:
        raise ValueError(f"{name}: shape {grams.shape}; expected [layers, n, n] Gram matrices")
    return grams


def _symmetric64(grams: np.ndarray) -> np.ndarray:
    """A float64 copy of the Grams, symmetrised (float32 products are not exactly symmetric)."""
    k = np.array(grams, dtype=np.float64)
    k += np.swapaxes(k, 1, 2)  # numpy buffers the overlapping operands
    k *= 0.5
    return k


def _linear_parts(grams: np.ndarray):
    """H K H of every layer, flattened: float64 [L, n * n]."""
    k = _symmetric64(grams)
    rows = k.mean(axis=2, keepdims=True)
    k -= rows
    k -= np.swapaxes(rows, 1, 2)  # symmetric: the column means are the row means
    k += rows.mean(axis=1, keepdims=True)
    return (k.reshape(len(k), -1),)


def _debiased_parts(grams: np.ndarray):
    """K~ (zero diagonal) flattened [L, n * n], its row sums [L, n] and totals [L], float64."""
    k = _symmetric64(grams)
    idx = np.arange(k.shape[1])
    k[:, idx, idx] = 0.0
    rows = k.sum(axis=2)
    return k.reshape(len(k), -1), rows, rows.sum(axis=1)


def _hsic(parts_a, parts_b, n: int, estimator: str) -> np.ndarray:
    """HSIC of every layer of A against every layer of B [La, Lb], up to a positive factor
    common to all pairs of the same n images (CKA's ratio cancels it)."""
    if estimator == "linear":
        return parts_a[0] @ parts_b[0].T  # tr(HKH HLH) = <HKH, HLH>_F
    (fa, ra, ta), (fb, rb, tb) = parts_a, parts_b
    # tr(K~ L~) + (1'K~1)(1'L~1) / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1, for symmetric K~, L~
    return fa @ fb.T + np.outer(ta, tb) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (ra @ rb.T)


def _self_hsic(parts, n: int, estimator: str) -> np.ndarray:
    """The diagonal of ``_hsic(parts, parts)`` [L] without the off-diagonal products."""
    f = parts[0]
    out = np.einsum("ij,ij->i", f, f)
    if estimator == "debiased":
        _, r, t = parts
        out += t**2 / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * np.einsum("ij,ij->i", r, r)
    return out


def _squared_norms(grams: np.ndarray) -> np.ndarray:
    return np.einsum("ijk,ijk->i", grams, grams, dtype=np.float64)


_PARTS = {"linear": _linear_parts, "debiased": _debiased_parts}


def cka_matrix(grams_a, grams_b=None, *, estimator: str = "linear") -> np.ndarray:
    """CKA [La, Lb] of every layer of ``grams_a`` against every layer of ``grams_b``
    (default: ``grams_a`` itself), Grams [L, n, n] of the same n images in the same order."""
    check_choice("CKA estimator", estimator, CKA_ESTIMATORS)
    a = _check_grams(grams_a, "grams_a")
    b = a if grams_b is None else _check_grams(grams_b, "grams_b")
    n = a.shape[1]
    if b.shape[1] != n:
        raise ValueError(f"grams_a has {n} images, grams_b {b.shape[1]}: CKA needs the same images")
    if n < MIN_IMAGES[estimator]:
        raise ValueError(f"{estimator} CKA needs at least {MIN_IMAGES[estimator]} images, got {n}")
    parts_a = _PARTS[estimator](a)
    parts_b = parts_a if grams_b is None else _PARTS[estimator](b)
    cross = _hsic(parts_a, parts_b, n, estimator)
    self_a = _self_hsic(parts_a, n, estimator)
    self_b = self_a if grams_b is None else _self_hsic(parts_b, n, estimator)
    ok_a = self_a > UNDEFINED_BELOW * _squared_norms(a)
    ok_b = ok_a if grams_b is None else self_b > UNDEFINED_BELOW * _squared_norms(b)
    ok = ok_a[:, None] & ok_b[None, :]
    denom = np.sqrt(np.where(ok, np.outer(self_a, self_b), 1.0))
    return np.where(ok, cross / denom, np.nan)


def check_images(estimator: str, sizes: Mapping[int, int]) -> None:
    """ValueError naming the first superclass (``{superclass: images}``) with fewer images
    than ``estimator`` is defined on; callers check before anything is stored."""
    check_choice("CKA estimator", estimator, CKA_ESTIMATORS)
    need = MIN_IMAGES[estimator]
    for s, n in sorted(sizes.items()):
        if n < need:
            raise ValueError(
                f"superclass {s} has {n} eval image(s); {estimator} CKA needs at least {need}"
            )


def cka_by_superclass(
    grams_a: Mapping[int, np.ndarray],
    grams_b: Mapping[int, np.ndarray] | None = None,
    *,
    estimator: str = "linear",
) -> CkaMatrices:
    """CKA of every layer pair per superclass (``{superclass: [L, n, n]}``; rows of A's and
    B's Grams must be the same images in the same order), and its mean over superclasses.

    Without ``grams_b``: a run's layers against each other (symmetric, diagonal 1).
    """
    check_choice("CKA estimator", estimator, CKA_ESTIMATORS)
    sups = sorted(grams_a)
    if not sups:
        raise ValueError("no Gram matrices to compare")
    if grams_b is not None and sorted(grams_b) != sups:
        raise ValueError(
            f"superclasses differ: {sups} against {sorted(grams_b)}; CKA needs the same images"
        )
    per = np.stack(
        [
            cka_matrix(grams_a[s], None if grams_b is None else grams_b[s], estimator=estimator)
            for s in sups
        ]
    )
    return CkaMatrices(estimator, [int(s) for s in sups], per, per.mean(axis=0))
