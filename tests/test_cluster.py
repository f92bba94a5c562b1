"""Per-superclass protocol: parity with sklearn Ward + AMI, edge cases, stability matrices."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from clusterprobe.runners.engine.cluster import (
    DeadLayerWarning,
    ari_matrix,
    cluster_protocol,
    gram_distances,
)
from clusterprobe.runners.engine.ward import cut_tree
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score
from sklearn.preprocessing import normalize

FACTORS = (1, 2, 3, 4, 5)


def sklearn_protocol(features: dict, subclass: dict, factors=FACTORS):
    """The paper's path: normalise, sklearn Ward per (superclass, factor), sklearn AMI."""
    ami, pur = {}, {}
    for s, x in features.items():
        xn = normalize(x.reshape(x.shape[0], -1).astype(np.float64))
        y = subclass[s]
        for f in factors:
            k = min(len(np.unique(y)) * f, len(y))
            if k == 1:
                pred = np.zeros(len(y), dtype=int)
            else:
                pred = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(xn)
            ami[s, f] = adjusted_mutual_info_score(y, pred)
            _, yi = np.unique(y, return_inverse=True)
            pur[s, f] = sum(np.bincount(yi[pred == c]).max() for c in np.unique(pred)) / len(y)
    return ami, pur


def make_case(seed: int):
    """Random and structured features, some with duplicate rows and zero rows."""
    rng = np.random.default_rng(seed)
    kind = ("blobs", "noise", "duplicates", "zeros", "lattice")[seed % 5]
    features, subclass = {}, {}
    for s in range(int(rng.integers(1, 4))):
        n = int(rng.integers(6, 90))
        n_sub = int(rng.integers(1, 6))
        d = int(rng.integers(2, 40))
        y = rng.integers(0, n_sub, n) + 10 * s
        if kind == "noise":
            x = rng.normal(size=(n, d))
        elif kind == "lattice":  # small integer coordinates: many exactly tied distances
            x = rng.integers(0, 3, size=(n, d)).astype(float) + 1.0
        else:
            centres = rng.normal(size=(n_sub + 1, d)) * rng.uniform(0.5, 4.0)
            x = centres[y - 10 * s] + rng.normal(size=(n, d))
        if kind == "duplicates":
            src = rng.integers(0, n, n // 3)
            x[rng.integers(0, n, n // 3)] = x[src]
        if kind == "zeros":
            x[rng.integers(0, n, 3)] = 0.0
        features[s] = x
        subclass[s] = y
    return features, subclass


def grams_of(features: dict) -> dict:
    out = {}
    for s, x in features.items():
        xn = normalize(x.reshape(x.shape[0], -1).astype(np.float64))
        out[s] = xn @ xn.T
    return out


@pytest.mark.parametrize("seed", range(25))
def test_matches_sklearn_ward_and_ami(seed):
    features, subclass = make_case(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeadLayerWarning)
        result = cluster_protocol(grams_of(features), subclass, FACTORS, n_jobs=1)
    ref_ami, ref_pur = sklearn_protocol(features, subclass)
    for si, s in enumerate(result.superclasses):
        for fi, f in enumerate(FACTORS):
            assert result.ami[0, si, fi] == pytest.approx(ref_ami[s, f], abs=1e-9), (s, f)
            assert result.purity[0, si, fi] == pytest.approx(ref_pur[s, f], abs=1e-9), (s, f)


def test_identical_partitions_to_sklearn_with_ties():
    """Merge-order cut = sklearn's _hc_cut, also where merge heights tie (duplicates)."""
    rng = np.random.default_rng(7)
    base = rng.normal(size=(12, 5))
    x = normalize(np.repeat(base, 4, axis=0))  # every point 4 times
    y = np.repeat(np.arange(4), 12)
    merges = __import__("scipy.cluster.hierarchy", fromlist=["ward"]).ward(x)
    for k in (2, 5, 12, 13, 30, 48):
        ours = cut_tree(merges, len(x), k)
        ref = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)
        assert adjusted_rand_score(ref, ours) == 1.0
        assert len(np.unique(ours)) == k
    result = cluster_protocol({0: x @ x.T}, {0: y}, (1, 2, 3), n_jobs=1)
    ref_ami, _ = sklearn_protocol({0: x}, {0: y}, (1, 2, 3))
    assert result.ami[0, 0] == pytest.approx([ref_ami[0, f] for f in (1, 2, 3)], abs=1e-9)


def test_perfectly_separated_gives_ami_one():
    rng = np.random.default_rng(0)
    grams, subs = {}, {}
    for s in range(3):
        y = np.repeat(np.arange(4), 10)
        x = np.eye(8)[y] + 1e-3 * rng.normal(size=(40, 8))  # orthogonal subclass directions
        x = normalize(x)
        grams[s], subs[s] = x @ x.T, y
    result = cluster_protocol(grams, subs, (1,), n_jobs=1)
    assert np.allclose(result.ami, 1.0)
    assert np.allclose(result.purity, 1.0)


def test_fewer_images_than_clusters_clamps():
    rng = np.random.default_rng(1)
    x = normalize(rng.normal(size=(5, 3)))
    y = np.array([0, 1, 2, 3, 3])  # 4 subclasses: factor 2 asks 8 clusters of 5 images
    result = cluster_protocol({0: x @ x.T}, {0: y}, (1, 2, 5), n_jobs=1)
    assert result.n_clusters[0].tolist() == [4, 5, 5]
    assert result.purity[0, 0, 1] == 1.0  # singletons
    ref = adjusted_mutual_info_score(y, np.arange(5))
    assert result.ami[0, 0, 1] == pytest.approx(ref, abs=1e-12)
    one = cluster_protocol({0: np.ones((1, 1))}, {0: np.array([3])}, FACTORS, n_jobs=1)
    assert np.all(one.ami == 1.0) and np.all(one.purity == 1.0)


def test_constant_layer_warns_and_scores():
    y = np.repeat(np.arange(3), 5)
    zero = np.zeros((15, 15))  # a dead (all-zero) layer
    ones = np.ones((15, 15))  # all vectors identical
    rng = np.random.default_rng(2)
    x = normalize(rng.normal(size=(15, 4)))
    grams = {0: np.stack([x @ x.T, zero, ones])}
    with pytest.warns(DeadLayerWarning) as record:
        result = cluster_protocol(grams, {0: y}, (1, 2), n_jobs=1)
    assert [str(w.message).split(":")[0] for w in record] == ["layer 1", "layer 2"]
    assert result.dead == {1: [0], 2: [0]}
    assert np.isfinite(result.ami).all() and np.isfinite(result.purity).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_gram_is_a_value_error(bad):
    g = np.eye(4)
    g[1, 2] = bad
    with pytest.raises(ValueError, match="superclass 7, layer 1.*NaN/Inf"):
        cluster_protocol({7: np.stack([np.eye(4), g])}, {7: np.arange(4)}, n_jobs=1)


def test_bad_inputs_are_value_errors():
    with pytest.raises(ValueError, match="labels"):
        cluster_protocol({0: np.eye(4)}, {0: np.arange(3)})
    with pytest.raises(ValueError, match="different superclasses"):
        cluster_protocol({0: np.eye(4)}, {1: np.arange(4)})
    with pytest.raises(ValueError, match="factors"):
        cluster_protocol({0: np.eye(4)}, {0: np.arange(4)}, (0, 1))
    with pytest.raises(ValueError, match="backend 'fork' is not known; choose one of thread"):
        cluster_protocol({0: np.eye(4)}, {0: np.arange(4)}, backend="fork")
    with pytest.raises(ValueError, match="share no superclass"):
        ari_matrix({(0, 1): np.zeros((1, 4))}, {(0, 2): np.zeros((1, 4))})


def test_layers_parallel_backends_agree_and_rows():
    rng = np.random.default_rng(3)
    grams, subs = {}, {}
    for s in range(4):
        y = rng.integers(0, 3, 30)
        layers = []
        for _ in range(5):
            x = normalize(rng.normal(size=(30, 6)) + np.eye(6)[y] * rng.uniform(0, 3))
            layers.append(x @ x.T)
        grams[s], subs[s] = np.stack(layers).astype(np.float32), y
    serial = cluster_protocol(grams, subs, FACTORS, n_jobs=1)
    for backend in ("thread", "process"):
        par = cluster_protocol(grams, subs, FACTORS, n_jobs=2, backend=backend)
        np.testing.assert_array_equal(par.ami, serial.ami)
        np.testing.assert_array_equal(par.purity, serial.purity)
        assert par.params["backend"] == backend
    assert serial.ami.shape == (5, 4, 5)
    np.testing.assert_allclose(serial.mean_ami(), serial.ami.mean(axis=1))
    rows = serial.rows()
    assert len(rows) == 2 * 5 * 4 * 5
    assert rows[0] == {
        "layer_index": 0,
        "superclass": 0,
        "factor": 1,
        "metric": "ami",
        "value": float(serial.ami[0, 0, 0]),
    }
    assert serial.params["algorithm"] == "ward" and serial.params["factors"] == "1,2,3,4,5"
    # assignments: one [F, n] array per (layer, superclass), with the asked cluster counts
    lab = serial.assignments[(2, 1)]
    assert lab.shape == (5, 30)
    assert [len(np.unique(r)) for r in lab] == serial.n_clusters[1].tolist()


def test_ari_matrix_layer_by_layer():
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 10)
    grams = {}
    for s in range(2):
        layers = [normalize(rng.normal(size=(30, 5)) + 2 * np.eye(5)[y]) for _ in range(3)]
        grams[s] = np.stack([x @ x.T for x in layers])
    res = cluster_protocol(grams, {0: y, 1: y}, (1, 2), n_jobs=1)
    m = ari_matrix(res.assignments, res.assignments)
    assert m.shape == (3, 3)
    np.testing.assert_allclose(np.diag(m), 1.0)
    np.testing.assert_allclose(m, m.T)
    expected = np.mean(
        [
            adjusted_rand_score(res.assignments[(0, s)][1], res.assignments[(2, s)][1])
            for s in (0, 1)
        ]
    )
    assert ari_matrix(res.assignments, res.assignments, factor_index=1)[0, 2] == pytest.approx(
        expected, abs=1e-12
    )


@pytest.mark.parametrize("case", ["random", "duplicates", "ties", "two"])
def test_lean_ward_equals_scipy_linkage(case):
    from clusterprobe.runners.engine.ward import _nn_chain, ward
    from scipy.cluster.hierarchy import linkage

    assert _nn_chain is not None  # the lean path is the one under test, not the fallback
    rng = np.random.default_rng(3)
    if case == "random":
        x = rng.normal(size=(60, 7))
    elif case == "duplicates":
        x = np.repeat(rng.normal(size=(9, 4)), 5, axis=0)
    elif case == "ties":
        x = rng.integers(0, 3, size=(40, 2)).astype(float)  # many equal distances
    else:
        x = rng.normal(size=(2, 3))
    y = gram_distances(x @ x.T)
    before = y.copy()
    z = ward(y, len(x))
    assert np.array_equal(z, linkage(y, method="ward"))
    assert np.array_equal(y, before)  # the distances are not consumed
