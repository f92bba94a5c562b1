"""Scores that compare a clustering with the true subclass labels.

Every score takes two label vectors (any hashable integer values, same
length) and returns a plain ``float``, higher is better; :data:`SCORES` lists
them by name (``*_from_table`` variants take a precomputed contingency table).
They follow scikit-learn's definitions (``sklearn.metrics.cluster``) to
1e-9 but skip its input validation and sparse machinery, which dominate the cost
for the few-hundred-point problems of the per-superclass protocol (the protocol
scores every (superclass, layer, factor): ~1,000 calls for ResNet-50).

numpy + scipy only: no torch, no sklearn import on this path.
"""

from __future__ import annotations

import math

import numpy as np

_EPS = np.finfo(np.float64).eps
_LOG_FACT = np.zeros(1)  # _LOG_FACT[k] = log(k!), grown on demand


_LOG_INT = np.zeros(1)


def _log_ints(n: int) -> np.ndarray:
    """log(k) for k = 0..n (log 0 -> -inf, never used)."""
    global _LOG_INT
    if _LOG_INT.shape[0] <= n:
        with np.errstate(divide="ignore"):
            _LOG_INT = np.log(np.arange(max(n + 1, 2 * _LOG_INT.shape[0]), dtype=np.float64))
    return _LOG_INT


def _log_factorials(n: int) -> np.ndarray:
    """log(k!) for k = 0..n from libm's lgamma (exact to ~1 ulp; no scipy.special import)."""
    global _LOG_FACT
    if _LOG_FACT.shape[0] <= n:
        size = max(n + 1, 2 * _LOG_FACT.shape[0])
        _LOG_FACT = np.array([math.lgamma(k + 1.0) for k in range(size)])
    return _LOG_FACT


def contingency(labels_true, labels_pred) -> np.ndarray:
    """Dense contingency table ``C[i, j]`` = #points in class i and cluster j (int64).

    Rows follow the sorted unique values of ``labels_true``, columns those of
    ``labels_pred``; empty rows/columns never occur.
    """
    t = np.asarray(labels_true).ravel()
    p = np.asarray(labels_pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"label vectors differ in length: {t.shape[0]} vs {p.shape[0]}")
    ti, pi = _dense_codes(t), _dense_codes(p)
    r = int(ti.max()) + 1 if ti.size else 0
    c = int(pi.max()) + 1 if pi.size else 0
    return np.bincount(ti * c + pi, minlength=r * c).reshape(r, c).astype(np.int64)


def _dense_codes(labels: np.ndarray) -> np.ndarray:
    """0..k-1 codes in the sorted order of the unique labels (``np.unique``'s inverse).

    Small non-negative integer labels (cluster ids, subclass ids) are coded with a
    bincount in O(N) instead of a sort: 10x faster at N = 10^6.
    """
    if labels.dtype.kind in "iub" and labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo >= 0 and hi <= 4 * labels.size + 1024:
            present = np.bincount(labels, minlength=hi + 1) > 0
            return (np.cumsum(present) - 1)[labels]
    return np.unique(labels, return_inverse=True)[1].ravel()


def _entropy(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of a labelling given its class sizes."""
    counts = counts[counts > 0].astype(np.float64)
    if counts.size <= 1:
        return 0.0
    n = counts.sum()
    return float(-np.sum((counts / n) * (np.log(counts) - np.log(n))))


def _mutual_info(table: np.ndarray) -> float:
    """MI (nats) of a contingency table, sklearn's formula and clipping."""
    n = float(table.sum())
    a = table.sum(axis=1).astype(np.float64)
    b = table.sum(axis=0).astype(np.float64)
    if a.size == 1 or b.size == 1:
        return 0.0
    i, j = np.nonzero(table)
    nij = table[i, j].astype(np.float64)
    p = nij / n
    terms = p * (np.log(nij) - np.log(n)) + p * (
        np.log(n) - np.log(a[i]) + np.log(n) - np.log(b[j])
    )
    # sklearn zeroes terms below machine epsilon before summing; do the same for parity.
    terms = np.where(np.abs(terms) < _EPS, 0.0, terms)
    return max(float(terms.sum()), 0.0)


def expected_mutual_info(table: np.ndarray) -> float:
    """E[MI] of two labellings with the table's marginals under the permutation model.

    Vinh, Epps & Bailey (JMLR 2010), eq. (24a): a hypergeometric sum over every
    cell value n_ij in [max(1, a_i + b_j - N), min(a_i, b_j)]. Vectorised over
    (i, j, n_ij) in log-space (``math.lgamma``) instead of sklearn's Cython triple loop.
    """
    return float(_emi_many([np.asarray(table)])[0])


def _emi_many(tables: list[np.ndarray]) -> np.ndarray:
    """E[MI] of several contingency tables in one vectorised pass (0 for single-row/column)."""
    if not tables:
        return np.zeros(0)
    R = max(t.shape[0] for t in tables)
    C = max(t.shape[1] for t in tables)
    a = np.zeros((len(tables), R), dtype=np.int64)
    b = np.zeros((len(tables), C), dtype=np.int64)
    for i, t in enumerate(tables):
        a[i, : t.shape[0]] = t.sum(axis=1)
        b[i, : t.shape[1]] = t.sum(axis=0)
    return _emi_marginals(a, b)


def _emi_marginals(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """E[MI] per table from zero-padded marginals a [T, R] (classes), b [T, C] (clusters)."""
    T = a.shape[0]
    out = np.zeros(T)
    n_t = a.sum(axis=1)
    size = 1 + int(n_t.max(initial=0))
    # tables with one class or one cluster have E[MI] = 0 (sklearn): leave them out
    live = ((a > 0).sum(axis=1) > 1) & ((b > 0).sum(axis=1) > 1)
    pair = live[:, None, None] & (a[:, :, None] > 0) & (b[:, None, :] > 0)
    if not pair.any():
        return out
    owner_all, i_idx, j_idx = np.nonzero(pair)
    # one key per (N, a_i, b_j); identical pairs (equal cluster sizes) are summed once
    key_all = (n_t[owner_all] * size + a[owner_all, i_idx]) * size + b[owner_all, j_idx]
    if size**3 * T < (1 << 62):  # one int64 key: a 1-D unique is much faster
        uniq1, inverse = np.unique(owner_all * size**3 + key_all, return_inverse=True)
        tid, key = uniq1 // size**3, uniq1 % size**3
    else:
        uniq, inverse = np.unique(np.stack([owner_all, key_all]), axis=1, return_inverse=True)
        tid, key = uniq
    weight = np.bincount(inverse.ravel(), minlength=tid.shape[0])
    bj = key % size
    ai = (key // size) % size
    n = key // (size * size)
    lf = _log_factorials(size)  # lf[k] = log(k!)
    start = np.maximum(1, ai + bj - n)
    end = np.minimum(ai, bj)  # inclusive
    # per-pair constants: the cell-independent parts of the log-probability and log-term
    const = lf[ai] + lf[bj] + lf[n - ai] + lf[n - bj] - lf[n]
    log_ratio = np.log(n) - np.log(ai) - np.log(bj)
    rest = n - ai - bj
    start, end = _live_window(start, end, ai, bj, n, rest, const, lf)
    log_int = _log_ints(size)
    # ragged cells: pair p contributes n_ij = start_p .. end_p; processed in chunks of
    # ~1M cells (whole-dataset tables can hold R x N cells in all)
    width = np.maximum(end - start + 1, 0)
    stop = np.cumsum(width)
    pair_sum = np.zeros(tid.shape[0])
    lo = 0
    while lo < width.size:
        base = stop[lo] - width[lo]
        hi = max(lo + 1, int(np.searchsorted(stop, base + (1 << 20), side="right")))
        w = width[lo:hi]
        p = np.repeat(np.arange(lo, hi), w)
        first = np.repeat(stop[lo:hi] - w, w)
        nij = start[p] + (np.arange(base, stop[hi - 1]) - first)
        a_p, b_p = ai[p], bj[p]
        gln = const[p] - (lf[nij] + lf[a_p - nij] + lf[b_p - nij] + lf[rest[p] + nij])
        cell = (nij / n[p]) * (log_ratio[p] + log_int[nij]) * np.exp(gln)
        pair_sum[lo:hi] = np.bincount(p - lo, weights=cell, minlength=hi - lo)
        lo = hi
    out += np.bincount(tid, weights=pair_sum * weight, minlength=T)
    return out


_TAIL_LOG_PMF = -60.0  # e^-60 ~ 9e-27: even 10^6 such terms add < 1e-20 to E[MI]


def _live_window(start, end, ai, bj, n, rest, const, lf):
    """Shrink each pair's n_ij range to where the hypergeometric pmf does not underflow.

    With N = 10^6 points a pair's full range holds up to min(a_i, b_j) ~ 10^4 values
    of n_ij, but the pmf is log-concave around its mean a_i b_j / N with a standard
    deviation of only sqrt(a_i b_j / N) ~ 10, so nearly every term is below one ulp of
    the sum. Keep mean +- (14 sd + 16); log-concavity makes every term
    beyond a window edge smaller than the first one left out, so a pair keeps its
    window only if that term's log-pmf is below -60 on both sides (it then changes
    the sum by < N e^-60, far below one ulp); any other pair keeps its full range.
    """
    mean = ai * bj / n
    var = mean * (n - ai) * (n - bj) / np.maximum(n * (n - 1.0), 1.0)
    half = np.ceil(14.0 * np.sqrt(var)).astype(np.int64) + 16
    lo = np.maximum(start, np.floor(mean).astype(np.int64) - half)
    hi = np.minimum(end, np.ceil(mean).astype(np.int64) + half)

    def log_pmf(k):
        return const - (lf[k] + lf[ai - k] + lf[bj - k] + lf[rest + k])

    below = np.where(lo > start, log_pmf(np.maximum(lo - 1, start)), -np.inf)
    above = np.where(hi < end, log_pmf(np.minimum(hi + 1, end)), -np.inf)
    ok = (below < _TAIL_LOG_PMF) & (above < _TAIL_LOG_PMF) & (lo <= hi)
    return np.where(ok, lo, start), np.where(ok, hi, end)


def ami_many(tables: list[np.ndarray]) -> np.ndarray:
    """:func:`ami_from_table` of several contingency tables, vectorised across tables.

    Tables are zero-padded into one [T, R, C] block (zero cells add nothing), so MI,
    entropies and E[MI] of, e.g., every factor's cut of one tree cost one pass each.
    """
    if not tables:
        return np.zeros(0)
    R = max(t.shape[0] for t in tables)
    C = max(t.shape[1] for t in tables)
    block = np.zeros((len(tables), R, C))
    for i, t in enumerate(tables):
        block[i, : t.shape[0], : t.shape[1]] = t
    n = block.sum(axis=(1, 2))
    a = block.sum(axis=2)
    b = block.sum(axis=1)
    rows = (a > 0).sum(axis=1)
    cols = (b > 0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        logn = np.log(n)[:, None, None]
        p = block / n[:, None, None]
        terms = p * (np.log(block) - logn) + p * (
            logn - np.log(a)[:, :, None] + logn - np.log(b)[:, None, :]
        )
        terms = np.where((block > 0) & (np.abs(terms) >= _EPS), terms, 0.0)  # sklearn's clipping
        mi = np.maximum(terms.sum(axis=(1, 2)), 0.0)
        pa = a / n[:, None]
        pb = b / n[:, None]
        h_a = -np.where(a > 0, pa * (np.log(a) - np.log(n)[:, None]), 0.0).sum(axis=1)
        h_b = -np.where(b > 0, pb * (np.log(b) - np.log(n)[:, None]), 0.0).sum(axis=1)
    emi = _emi_marginals(a.astype(np.int64), b.astype(np.int64))
    out = np.empty(len(tables))
    for i in range(len(tables)):
        r, c = int(rows[i]), int(cols[i])
        if (r == c == 1) or (r == c == 0):
            out[i] = 1.0
        elif r == 1 or c == 1:
            out[i] = 0.0
        else:
            out[i] = _finish_ami(mi[i], emi[i], h_a[i], h_b[i])
    return out


def _finish_ami(mi: float, emi: float, h_true: float, h_pred: float) -> float:
    """(MI - E[MI]) / (mean(H) - E[MI]), both kept an epsilon from zero with their sign."""
    denominator = 0.5 * (h_true + h_pred) - emi
    denominator = min(denominator, -_EPS) if denominator < 0 else max(denominator, _EPS)
    numerator = mi - emi
    numerator = min(numerator, -_EPS) if numerator < 0 else max(numerator, _EPS)
    return float(numerator / denominator)


def ami(labels_true, labels_pred) -> float:
    """Adjusted mutual information, arithmetic normalisation (sklearn's default).

    ``AMI = (MI - E[MI]) / (mean(H(true), H(pred)) - E[MI])`` with natural logs,
    E[MI] under random labellings with the same cluster sizes (Vinh, Epps &
    Bailey, "Information theoretic measures for clusterings comparison", JMLR
    11, 2010). Equals ``sklearn.metrics.adjusted_mutual_info_score(t, p)`` (its
    ``average_method='arithmetic'``, the default since 0.22) to ~1e-12.

    Properties: symmetric in its arguments; invariant to renaming labels; 1.0
    for identical partitions; ~0 in expectation for independent ones; can be
    negative. The paper's clusterability score (Nguyen & Kornblith 2023).

    Degenerate cases, as sklearn: both labellings a single cluster (or empty)
    -> 1.0; exactly one of them a single cluster -> 0.0; numerator and
    denominator are kept at least machine epsilon from zero with their sign.

    >>> round(ami([0, 0, 1, 1], [1, 1, 0, 0]), 6)
    1.0
    """
    table = contingency(labels_true, labels_pred)
    return ami_from_table(table)


def ami_from_table(table: np.ndarray) -> float:
    """:func:`ami` from a precomputed contingency table (rows true, columns predicted)."""
    return _ami_parts(table, None)


def _ami_parts(table: np.ndarray, emi: float | None) -> float:
    r, c = table.shape
    if (r == c == 1) or (r == c == 0):
        return 1.0
    if r == 1 or c == 1:
        return 0.0
    mi = _mutual_info(table)
    if emi is None:
        emi = expected_mutual_info(table)
    return _finish_ami(mi, emi, _entropy(table.sum(axis=1)), _entropy(table.sum(axis=0)))


def purity(labels_true, labels_pred) -> float:
    """Purity: sum over predicted clusters of their majority-class count, over N.

    ``purity = (1/N) * sum_j max_i n_ij``. In [1/N * #clusters.., 1]; 1.0 when
    every cluster holds one class (so it rises trivially with the number of
    clusters: read it beside AMI). Not symmetric. As in the paper's code
    (Nguyen & Kornblith 2023), which used ``scipy.stats.mode`` per cluster.
    Empty input -> 1.0 by convention.

    >>> purity([0, 0, 1, 1], [0, 0, 0, 1])
    0.75
    """
    return purity_from_table(contingency(labels_true, labels_pred))


def purity_from_table(table: np.ndarray) -> float:
    n = table.sum()
    if n == 0:
        return 1.0
    return float(table.max(axis=0).sum() / n)


def ari(labels_true, labels_pred) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985), as ``sklearn.metrics.adjusted_rand_score``.

    ``ARI = (sum_ij C(n_ij,2) - E) / (0.5 (sum_i C(a_i,2) + sum_j C(b_j,2)) - E)``
    with ``E = sum_i C(a_i,2) sum_j C(b_j,2) / C(N,2)``. Symmetric, label
    permutation invariant, 1.0 for identical partitions, ~0 for independent
    ones, can be negative. Used for layer x layer, seed x seed and checkpoint
    stability of cluster assignments (the paper's ARI matrices).

    Degenerate cases, as sklearn: identical partitions (including both one
    cluster, or all singletons, or N < 2) -> 1.0.
    """
    return ari_from_table(contingency(labels_true, labels_pred))


def ari_from_table(table: np.ndarray) -> float:
    n = int(table.sum())
    r, c = table.shape
    # sklearn: both single-cluster, both all-singletons, or N < 2 -> identical -> 1.0
    if n < 2 or (r == c == 1) or (r == c == n):
        return 1.0
    t = table.astype(np.float64)
    sum_comb = float((t * (t - 1)).sum() / 2)
    a = t.sum(axis=1)
    b = t.sum(axis=0)
    sum_a = float((a * (a - 1)).sum() / 2)
    sum_b = float((b * (b - 1)).sum() / 2)
    expected = sum_a * sum_b / (n * (n - 1) / 2)
    mean = 0.5 * (sum_a + sum_b)
    if mean == expected:
        return 1.0
    return float((sum_comb - expected) / (mean - expected))


# The public scores, by name: two label vectors in, a float out. tests/test_metrics.py
# checks each against its scikit-learn reference and its property tables, and fails on a
# public score function of this module that is missing here.
SCORES = {f.__name__: f for f in (ami, ari, purity)}
