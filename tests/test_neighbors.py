"""k-NN and k-means engines: exact against brute force, FAISS against torch."""

import numpy as np
import pytest
from clusterprobe.runners.engine import neighbors
from scipy.spatial.distance import cdist

BACKENDS = [b for b in ("faiss", "torch") if getattr(neighbors, f"_have_{b}")()]


def _points(n=800, d=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[7] = x[3]  # a duplicate: a neighbour at distance 0, but never the point itself
    return x


def _brute(x, k):
    dd = cdist(x.astype(np.float64), x.astype(np.float64))
    np.fill_diagonal(dd, np.inf)
    idx = np.argsort(dd, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dd, idx, 1), idx


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_knn_equals_brute_force(backend):
    x = _points()
    dist, idx = neighbors.knn(x, 6, backend=backend)
    ref_d, ref_i = _brute(x, 6)
    assert dist.shape == idx.shape == (800, 6)
    assert not (idx == np.arange(800)[:, None]).any()  # self excluded
    np.testing.assert_allclose(dist, ref_d, atol=1e-4)
    # indices agree wherever the distance is not a float32 near-tie
    assert (idx == ref_i).mean() > 0.999
    assert idx[3, 0] == 7 and idx[7, 0] == 3 and dist[3, 0] < 1e-3


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs both faiss and torch installed")
def test_torch_path_equals_faiss_path():
    x = _points(seed=1)
    for metric in ("l2", "ip"):
        d1, i1 = neighbors.knn(x, 5, backend="faiss", metric=metric)
        d2, i2 = neighbors.knn(x, 5, backend="torch", metric=metric)
        np.testing.assert_allclose(d1, d2, atol=1e-4)
        # where the indices differ it is a float32 near-tie: the swapped neighbour is as close
        diff = i1 != i2
        assert diff.mean() < 0.01
        if metric == "l2":
            rows = np.nonzero(diff)[0]
            true_d = np.linalg.norm(x[rows] - x[i2[diff]], axis=1)
            np.testing.assert_allclose(true_d, d1[diff], atol=1e-4)
    ip_ref = x @ x.T
    np.fill_diagonal(ip_ref, -np.inf)
    np.testing.assert_allclose(d2[:, 0], ip_ref.max(1), rtol=1e-5)


@pytest.mark.skipif("faiss" not in BACKENDS, reason="faiss not installed")
def test_approximate_indexes_find_most_true_neighbours():
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((40, 16)) * 4
    x = (centres[rng.integers(0, 40, 3000)] + rng.standard_normal((3000, 16))).astype(np.float32)
    _, ref = _brute(x, 5)
    for index in ("ivf", "hnsw"):
        _, idx = neighbors.knn(x, 5, index=index)
        recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(idx, ref, strict=True)])
        assert recall > 0.8, (index, recall)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_deterministic_with_seed(backend):
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((6, 10)) * 5
    y = rng.integers(0, 6, 1200)
    x = (centres[y] + rng.standard_normal((1200, 10))).astype(np.float32)
    a = neighbors.kmeans(x, 6, seed=4, backend=backend)
    b = neighbors.kmeans(x, 6, seed=4, backend=backend)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.backend.startswith(backend)
    # labels are the nearest centroid; inertia is their squared distance sum
    d2 = cdist(x, a.centroids, "sqeuclidean")
    np.testing.assert_array_equal(a.labels, d2.argmin(1))
    assert a.inertia == pytest.approx(d2.min(1).sum(), rel=1e-4)
    # sizes and member means describe the returned labels exactly
    np.testing.assert_array_equal(a.sizes, np.bincount(a.labels, minlength=6))
    for j in range(6):
        np.testing.assert_allclose(
            a.means[j], x[a.labels == j].mean(0, dtype=np.float64), atol=1e-5
        )


def test_resolve_backend_auto_picks_an_installed_engine():
    assert neighbors.resolve_backend("auto") in BACKENDS
    assert neighbors.resolve_backend("auto", work=1e12, dim=32) in BACKENDS  # probes once
    with pytest.raises(ValueError, match="backend 'cuvs' is not known; choose one of auto"):
        neighbors.resolve_backend("cuvs")


@pytest.mark.parametrize(
    ("facts", "want"),
    [
        # faiss-gpu installed (the README's replace step) and a GPU seen: FAISS's GPU index
        (dict(has_faiss=True, faiss_gpu=True, has_torch=True, torch_cuda=True), "faiss"),
        # the base faiss-cpu on a GPU machine: torch on CUDA, not FAISS on the CPU
        (dict(has_faiss=True, faiss_gpu=False, has_torch=True, torch_cuda=True), "torch"),
        (dict(has_faiss=False, faiss_gpu=False, has_torch=True, torch_cuda=True), "torch"),
        # CPU only: small work takes FAISS, big work times both engines
        (dict(has_faiss=True, faiss_gpu=False, has_torch=True, torch_cuda=False), "faiss"),
        (dict(has_faiss=True, faiss_gpu=False, has_torch=True, torch_cuda=False, big=1), "probe"),
        (dict(has_faiss=False, faiss_gpu=False, has_torch=True, torch_cuda=False, big=1), "torch"),
        (dict(has_faiss=True, faiss_gpu=False, has_torch=False, torch_cuda=False, big=1), "faiss"),
    ],
)
def test_auto_engine_choice_on_the_machines_facts(facts, want):
    work = 10 * neighbors._PROBE_WORK if facts.pop("big", 0) else 0.0
    assert neighbors.pick_engine(**facts, work=work) == want


def test_this_machine_reports_its_facts_consistently():
    """On this (CPU) machine the base faiss-cpu is no GPU build, so "auto" never picks
    FAISS's GPU index here, and a GPU build would be reported as one."""
    faiss = pytest.importorskip("faiss")
    assert neighbors._faiss_gpu() == (
        hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    )


def test_bad_input_is_a_value_or_type_error():
    x = _points(n=50)
    with pytest.raises(ValueError, match="k=50"):
        neighbors.knn(x, 50)
    with pytest.raises(TypeError, match="k=2.5"):
        neighbors.knn(x, 2.5)
    with pytest.raises(ValueError, match="niter=0"):
        neighbors.kmeans(x, 3, niter=0)
    x[4, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        neighbors.knn(x, 3)
    with pytest.raises(ValueError, match="NaN"):
        neighbors.kmeans(x, 3)
    with pytest.raises(ValueError, match="index 'lsh' is not known"):
        neighbors.knn(_points(n=50), 3, index="lsh")
    with pytest.raises(ValueError, match="metric 'cosine' is not known; choose one of l2, ip"):
        neighbors.knn(_points(n=50), 3, metric="cosine")
    with pytest.raises(ValueError, match="needs backend 'faiss'"):
        neighbors.knn(_points(n=50), 3, index="hnsw", backend="torch")
