"""Clustering metrics: a property table plus parity with scikit-learn.

The scores under test are ``metrics.SCORES``, the module's own registry; the guards
below fail when a public score of the module is missing from it, or when a
registered score has no reference or is left out of a property table (as in
scikit-learn's ``sklearn/metrics/cluster/tests/test_common.py``).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from clusterprobe.runners.engine import metrics
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score


def sk_purity(t, p):
    """Independent purity: majority class per cluster, summed, over N."""
    t, p = np.asarray(t), np.asarray(p)
    return sum(
        np.bincount(np.unique(t, return_inverse=True)[1][p == c]).max() for c in np.unique(p)
    ) / len(t)


METRICS = metrics.SCORES
REFERENCE = {"ami": adjusted_mutual_info_score, "ari": adjusted_rand_score, "purity": sk_purity}
# Property tables: every score sits in exactly one set of each pair.
SYMMETRIC = {"ami", "ari"}
NOT_SYMMETRIC = {"purity"}
ADJUSTED_FOR_CHANCE = {"ami", "ari"}  # ~0 for independent labellings
NOT_ADJUSTED = {"purity"}  # rises with the number of clusters


def _public_scores() -> set[str]:
    """Public functions of the metrics module with the score contract:
    ``(labels_true, labels_pred, ...) -> float``."""
    found = set()
    for name, fn in inspect.getmembers(metrics, inspect.isfunction):
        if name.startswith("_") or fn.__module__ != metrics.__name__:
            continue
        sig = inspect.signature(fn)
        if list(sig.parameters)[:2] == ["labels_true", "labels_pred"] and sig.return_annotation in (
            float,
            "float",
        ):
            found.add(name)
    return found


def test_registry_lists_every_public_score():
    assert _public_scores() == set(metrics.SCORES)
    assert all(metrics.SCORES[name].__name__ == name for name in metrics.SCORES)


def test_every_score_has_a_reference_and_is_classified():
    names = set(metrics.SCORES)
    assert set(REFERENCE) == names
    for yes, no in ((SYMMETRIC, NOT_SYMMETRIC), (ADJUSTED_FOR_CHANCE, NOT_ADJUSTED)):
        assert yes | no == names and not yes & no


def _pairs(seed, count=12):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(2, 300))
        t = rng.integers(0, int(rng.integers(1, 8)), n)
        p = rng.integers(0, int(rng.integers(1, 40)), n)
        yield t, p


@pytest.mark.parametrize("name", sorted(METRICS))
def test_matches_reference(name):
    for t, p in _pairs(0):
        assert METRICS[name](t, p) == pytest.approx(REFERENCE[name](t, p), abs=1e-9)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_perfect_match_is_one(name):
    t = np.repeat(np.arange(5), 7)
    assert METRICS[name](t, t) == pytest.approx(1.0, abs=1e-12)
    assert METRICS[name](t, (t * 7 + 3) % 11) == pytest.approx(1.0, abs=1e-12)  # renamed labels


@pytest.mark.parametrize("name", sorted(METRICS))
def test_permutation_invariant(name):
    rng = np.random.default_rng(1)
    for t, p in _pairs(1, 5):
        perm = rng.permutation(np.unique(p).max() + 1) + 100
        assert METRICS[name](t, perm[p]) == pytest.approx(METRICS[name](t, p), abs=1e-12)
        order = rng.permutation(len(t))  # the order of points does not matter either
        assert METRICS[name](t[order], p[order]) == pytest.approx(METRICS[name](t, p), abs=1e-12)


@pytest.mark.parametrize("name", sorted(SYMMETRIC))
def test_symmetric(name):
    for t, p in _pairs(2, 6):
        assert METRICS[name](t, p) == pytest.approx(METRICS[name](p, t), abs=1e-12)


@pytest.mark.parametrize("name", sorted(NOT_SYMMETRIC))
def test_not_symmetric(name):
    t, p = [0, 0, 0, 1, 1, 2], [0, 1, 2, 3, 4, 5]
    assert METRICS[name](t, p) != pytest.approx(METRICS[name](p, t), abs=1e-12)


@pytest.mark.parametrize("name", sorted(NOT_ADJUSTED))
def test_not_adjusted_for_chance_rises_with_clusters(name):
    rng = np.random.default_rng(6)
    t = rng.integers(0, 4, 400)
    coarse, fine = rng.integers(0, 4, 400), rng.integers(0, 100, 400)
    assert METRICS[name](t, fine) > METRICS[name](t, coarse) + 0.1


def test_purity_not_symmetric_and_bounded():
    t, p = [0, 0, 1, 1], [0, 0, 0, 1]
    assert metrics.purity(t, p) == 0.75
    assert metrics.purity(p, t) == 0.75  # coincidence here; next case differs
    t, p = [0, 0, 0, 1, 1, 2], [0, 1, 2, 3, 4, 5]
    assert metrics.purity(t, p) == 1.0  # singletons are trivially pure
    assert metrics.purity(p, t) == pytest.approx(3 / 6)
    for t, p in _pairs(3, 5):
        assert 0.0 < metrics.purity(t, p) <= 1.0


@pytest.mark.parametrize("name", sorted(ADJUSTED_FOR_CHANCE))
def test_chance_level_near_zero(name):
    rng = np.random.default_rng(4)
    values = [METRICS[name](rng.integers(0, 4, 400), rng.integers(0, 8, 400)) for _ in range(20)]
    assert abs(np.mean(values)) < 0.01
    assert min(values) < 0.0 or max(values) < 0.02  # can be negative


@pytest.mark.parametrize(
    "t, p, expected",
    [
        ([0, 0, 0], [1, 1, 1], 1.0),  # both one cluster: a perfect match
        ([0, 0, 1, 1], [0, 0, 0, 0], 0.0),  # one side one cluster
        ([0, 0, 0, 0], [0, 1, 2, 3], 0.0),
        ([0, 1, 2, 3], [0, 1, 2, 3], 1.0),
        ([], [], 1.0),
    ],
)
def test_ami_degenerate_cases_as_sklearn(t, p, expected):
    assert metrics.ami(t, p) == expected
    if t:
        assert adjusted_mutual_info_score(t, p) == pytest.approx(expected, abs=1e-12)


def test_ami_large_tables_match_sklearn():
    rng = np.random.default_rng(5)
    t = rng.integers(0, 20, 3000)
    p = np.where(
        rng.random(3000) < 0.7, t * 5 + rng.integers(0, 5, 3000), rng.integers(0, 100, 3000)
    )
    assert metrics.ami(t, p) == pytest.approx(adjusted_mutual_info_score(t, p), abs=1e-9)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="length"):
        metrics.ami([0, 1], [0, 1, 2])


def test_emi_window_skips_underflowing_terms_without_changing_ami():
    # 200k points: each (class, cluster) pair spans up to min(a_i, b_j) ~ 2,000 cell
    # values, but its hypergeometric pmf is non-negligible only within ~14 sd of the mean
    rng = np.random.default_rng(11)
    n = 200_000
    t = rng.integers(0, 20, n)
    p = np.where(rng.random(n) < 0.6, t * 5 + rng.integers(0, 5, n), rng.integers(0, 100, n))
    table = metrics.contingency(t, p)
    a, b = table.sum(axis=1), table.sum(axis=0)
    ai, bj = np.repeat(a, b.size), np.tile(b, a.size)
    nn = np.full(ai.shape, n)
    lf = metrics._log_factorials(n + 1)
    start, end = np.maximum(1, ai + bj - nn), np.minimum(ai, bj)
    const = lf[ai] + lf[bj] + lf[nn - ai] + lf[nn - bj] - lf[nn]
    lo, hi = metrics._live_window(start, end, ai, bj, nn, nn - ai - bj, const, lf)
    kept, full = (hi - lo + 1).sum(), (end - start + 1).sum()
    assert kept < full / 5  # the window does real work here
    assert metrics.ami(t, p) == pytest.approx(adjusted_mutual_info_score(t, p), abs=1e-10)


def test_contingency_codes_sparse_and_negative_labels_like_unique():
    t = np.array([7, -3, 7, 10**12, -3, 0])
    p = np.array([2, 2, 5, 5, 0, 0], dtype=np.uint8)
    table = metrics.contingency(t, p)
    # rows: sorted unique of t (-3, 0, 7, 1e12); columns: sorted unique of p (0, 2, 5)
    expected = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1]])
    assert np.array_equal(table, expected)
