"""Whole-dataset clustering against sklearn's Ward and scipy's linkage."""

import dataclasses
import warnings

import numpy as np
import pytest
from clusterprobe.runners.choices import WHOLE_METHODS
from clusterprobe.runners.engine import neighbors, whole
from clusterprobe.runners.engine.ward import cut_tree
from clusterprobe.runners.engine.whole import WholeOptions
from scipy import sparse
from scipy.cluster.hierarchy import linkage
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_mutual_info_score


def _blobs(n=1200, d=32, n_super=4, n_sub=3, seed=0, spread=(6.0, 2.0, 1.0)):
    """Hierarchical Gaussian blobs, L2-normalised: n_super x n_sub subclasses."""
    rng = np.random.default_rng(seed)
    sup = rng.standard_normal((n_super, d)) * spread[0]
    sub = np.repeat(sup, n_sub, axis=0) + rng.standard_normal((n_super * n_sub, d)) * spread[1]
    y = rng.integers(0, n_super * n_sub, n)
    x = sub[y] + rng.standard_normal((n, d)) * spread[2]
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def _same_partition(a, b):
    return adjusted_mutual_info_score(a, b) == pytest.approx(1.0, abs=1e-12)


def test_exact_equals_sklearn_full_ward():
    x, y = _blobs(n=900, spread=(1.0, 1.0, 1.0))  # overlapping: many non-trivial merges
    res = whole.score_whole(x, y, (1, 2, 5), method="exact")
    for f in (1, 2, 5):
        ref = AgglomerativeClustering(12 * f, linkage="ward").fit_predict(x)
        assert _same_partition(ref, res.labels[f])
        assert res.ami[f] == pytest.approx(adjusted_mutual_info_score(y, ref), abs=1e-9)
        assert len(np.unique(res.labels[f])) == 12 * f
    assert res.params["algorithm"] == "exact" and res.n_clusters[5] == 60


def test_auto_follows_the_memory_budget():
    x, y = _blobs(n=600)
    assert whole.score_whole(x, y, (1,)).params["algorithm"] == "exact"
    opts = WholeOptions(memory_budget_gb=1e-4, micro_clusters=100, rnn_max_points=100)
    tiny = whole.score_whole(x, y, (1,), options=opts)
    assert tiny.params["algorithm"] == "two-stage"


def test_weighted_ward_unit_sizes_equals_scipy():
    x = np.random.default_rng(1).standard_normal((300, 8))
    np.testing.assert_allclose(whole.weighted_ward(x, np.ones(300)), linkage(x, "ward"), atol=1e-9)


def test_weighted_ward_equals_ward_on_replicated_points():
    rng = np.random.default_rng(2)
    c = rng.standard_normal((50, 6))
    w = rng.integers(1, 6, 50)
    rep = np.repeat(c, w, axis=0)
    z_rep, z_w = linkage(rep, "ward"), whole.weighted_ward(c, w)
    leaf = np.repeat(np.arange(50), w)
    for k in (2, 5, 17, 40):
        a = cut_tree(z_rep[:, :2], rep.shape[0], k)
        b = cut_tree(z_w[:, :2], 50, k)[leaf]
        assert _same_partition(a, b)
    # the last 49 merges of the replicated tree are the weighted tree's merges
    np.testing.assert_allclose(z_rep[-49:, 2], z_w[:, 2], rtol=1e-9)


def test_cut_tree_matches_sklearn_cut():
    x = np.random.default_rng(3).standard_normal((200, 5))
    z = linkage(x, "ward")
    for k in (1, 2, 9, 199, 200):
        ref = AgglomerativeClustering(k, linkage="ward").fit_predict(x) if k > 1 else np.zeros(200)
        assert _same_partition(ref, cut_tree(z[:, :2], 200, k))
        np.testing.assert_array_equal(cut_tree(z, 200, k), cut_tree(z[:, :2], 200, k))


def test_cut_tree_of_a_forest_stops_at_its_components():
    z = linkage(np.random.default_rng(4).standard_normal((20, 3)), "ward")
    forest = z[:15, :2].astype(np.int64)  # 15 of 19 merges: 5 components
    assert len(np.unique(cut_tree(forest, 20, 2))) == 5
    np.testing.assert_array_equal(cut_tree(forest, 20, 8), cut_tree(z, 20, 8))


def test_two_stage_on_separated_blobs_is_perfect():
    x, y = _blobs(n=3000, spread=(8.0, 4.0, 0.5), seed=4)
    res = whole.score_whole(
        x, y, (1, 2), method="two-stage", options=WholeOptions(micro_clusters=300)
    )
    assert res.ami[1] == pytest.approx(1.0, abs=1e-9)
    assert res.purity[1] == 1.0 and res.purity[2] == 1.0
    assert (
        res.params["micro_clusters"] == "300" and res.params["linkage"] == "weighted-ward-centroids"
    )


def test_knn_ward_equals_sklearn_on_a_connected_graph():
    x, y = _blobs(n=800, spread=(0.3, 0.3, 1.0), seed=5)
    res = whole.score_whole(x, y, (1, 3), method="knn-ward", options=WholeOptions(k=10))
    assert res.params["graph_components"] == "1"
    _, idx = neighbors.knn(x.astype(np.float32), 10)
    g = sparse.csr_matrix((np.ones(idx.size), (np.repeat(np.arange(800), 10), idx.ravel())))
    g = ((g + g.T) > 0).astype(float)
    for f in (1, 3):
        ref = AgglomerativeClustering(12 * f, linkage="ward", connectivity=g).fit_predict(x)
        assert _same_partition(ref, res.labels[f])


def test_knn_ward_with_several_components_no_warning():
    x, y = _blobs(n=900, spread=(30.0, 0.5, 0.3), n_super=3, n_sub=2, seed=6)
    x = np.concatenate([x, x[:1] + 5.0])  # plus an isolated point: a one-point component
    y = np.concatenate([y, [6]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = whole.score_whole(x, y, (1, 2), method="knn-ward", options=WholeOptions(k=5))
    assert int(res.params["graph_components"]) >= 3
    for f in (1, 2):
        lab = res.labels[f]
        assert lab.shape == (901,) and set(np.unique(lab)) == set(range(7 * f))
    assert res.ami[1] > 0.95
    # with fewer clusters than components the components themselves are merged
    one = whole.score_whole(x, np.zeros(901), (1,), method="knn-ward", options=WholeOptions(k=5))
    assert set(one.labels[1]) == {0}


def test_kmeans_method_deterministic_and_recorded():
    x, y = _blobs(n=1000, seed=7)
    a = whole.score_whole(x, y, (1, 2), method="kmeans", options=WholeOptions(seed=3))
    b = whole.score_whole(x, y, (1, 2), method="kmeans", options=WholeOptions(seed=3))
    for f in (1, 2):
        np.testing.assert_array_equal(a.labels[f], b.labels[f])
    assert a.params["algorithm"] == "kmeans" and a.params["backend"]


def test_more_clusters_than_points_is_capped():
    x, y = _blobs(n=30, seed=8)
    res = whole.score_whole(x, y, (1, 5), method="exact")
    assert res.n_clusters[5] == 30 and len(np.unique(res.labels[5])) == 30


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_is_a_value_error(bad):
    x, y = _blobs(n=50)
    x[3, 1] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        whole.score_whole(x, y)
    with pytest.raises(ValueError, match="NaN or Inf"):
        whole.cluster_whole(x, [3])


def test_bad_arguments_are_value_or_type_errors():
    x, y = _blobs(n=50)
    with pytest.raises(ValueError, match="method 'spectral' is not known; choose one of auto"):
        whole.score_whole(x, y, method="spectral")
    with pytest.raises(ValueError, match="method 'spectral'"):
        whole.cluster_whole(x, [3], method="spectral")
    with pytest.raises(ValueError, match="labels"):
        whole.score_whole(x, y[:-1])
    with pytest.raises(ValueError, match="micro_clusters"):
        whole.score_whole(x, y, (1,), method="two-stage", options=WholeOptions(micro_clusters=5))
    with pytest.raises(ValueError, match="k=50 neighbours needs more than 50 points"):
        whole.score_whole(x, y, (1,), method="knn-ward", options=WholeOptions(k=50))
    with pytest.raises(ValueError, match="cluster counts"):
        whole.cluster_whole(x, [0, 3])
    with pytest.raises(ValueError, match=r"features must be a 2-D array \[N >= 2"):
        whole.score_whole(x[:1], y[:1])


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("k", 0, ValueError),
        ("k", 2.5, TypeError),
        ("niter", 0, ValueError),
        ("refine", -1, ValueError),
        ("micro_clusters", 0, ValueError),
        ("backend", "cuvs", ValueError),
        ("index", "lsh", ValueError),
        ("precision", "fp16", ValueError),
        ("memory_budget_gb", 0.0, ValueError),
        ("device", "tpu", ValueError),
        ("rnn_max_points", 1, ValueError),
        ("rnn_max_points", 1e5, TypeError),
    ],
)
def test_options_validate_each_field(field, value, error):
    opts = dataclasses.replace(WholeOptions(), **{field: value})
    with pytest.raises(error, match=field):
        opts.validate()
    x, y = _blobs(n=50)
    with pytest.raises(error, match=field):
        whole.score_whole(x, y, (1,), options=opts)
    assert WholeOptions().validate() == WholeOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        WholeOptions().k = 3


def test_every_method_but_auto_has_an_algorithm():
    assert set(whole._ALGORITHMS) == set(WHOLE_METHODS) - {"auto"}


@pytest.mark.skipif(not neighbors._have_torch(), reason="torch not installed")
def test_two_stage_through_torch_kmeans_and_cluster_whole():
    x, y = _blobs(n=1000, spread=(8.0, 4.0, 0.5), seed=9)
    opts = WholeOptions(micro_clusters=100, backend="torch")
    res = whole.cluster_whole(x, [12, 24], method="two-stage", options=opts)
    assert res.params["backend"] == "torch-cpu" and set(res.labels) == {12, 24}
    assert adjusted_mutual_info_score(y, res.labels[12]) == pytest.approx(1.0, abs=1e-9)
    assert len(np.unique(res.labels[24])) == 24
    assert res.timings["kmeans"] > 0 and res.timings["ward"] > 0


def _sse(x, lab):
    return sum(((x[lab == c] - x[lab == c].mean(0)) ** 2).sum() for c in np.unique(lab))


def test_refine_lowers_the_ward_criterion_and_is_recorded():
    x, y = _blobs(n=1500, spread=(1.0, 1.0, 1.0), seed=10)
    opts = WholeOptions(micro_clusters=150)
    plain = whole.score_whole(x, y, (1, 2), method="two-stage", options=opts)
    refined = dataclasses.replace(opts, refine=3)
    ref = whole.score_whole(x, y, (1, 2), method="two-stage", options=refined)
    assert ref.params["refine_steps"] == "3" and "refine_steps" not in plain.params
    for f in (1, 2):
        assert _sse(x, ref.labels[f]) <= _sse(x, plain.labels[f]) + 1e-9
        assert ref.labels[f].max() + 1 == len(np.unique(ref.labels[f]))  # labels 0..c-1
    with pytest.raises(ValueError, match="refine"):
        whole.score_whole(x, y, (1,), options=WholeOptions(refine=-1))
