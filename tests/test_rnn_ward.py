"""exact-rnn: Ward by reciprocal-nearest-neighbour rounds, against scipy's linkage."""

import json
import math

import numpy as np
import pytest
import torch
from clusterprobe.runners.engine import rnn_ward as rw
from clusterprobe.runners.engine import whole
from clusterprobe.runners.engine.ward import cut_tree
from clusterprobe.runners.engine.whole import WholeOptions
from scipy.cluster.hierarchy import linkage
from sklearn.metrics import adjusted_mutual_info_score


def _mixture(n, d, k=10, seed=0):
    """A Gaussian mixture: k centres ~ N(0, 9 I), points around them ~ N(0, I)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 3.0
    return centres[rng.integers(0, k, n)] + rng.standard_normal((n, d))


def _same_partition(a, b) -> bool:
    return adjusted_mutual_info_score(a, b) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n, d", [(400, 2), (1500, 8), (3000, 40), (5000, 128)])
def test_same_merges_in_the_same_order_as_scipy(n, d):
    x = _mixture(n, d, seed=n)
    ref = linkage(x, "ward")
    res = rw.rnn_ward(x, device="cpu")
    z = res.linkage
    np.testing.assert_array_equal(z[:, :2], ref[:, :2])
    np.testing.assert_array_equal(z[:, 3], ref[:, 3])
    np.testing.assert_allclose(z[:, 2], ref[:, 2], rtol=1e-9)  # the issue asks 1e-6
    assert res.device == "cpu" and res.filter == "fp32" and res.fallbacks == 0


def test_round_figures_add_up():
    res = rw.rnn_ward(_mixture(800, 16), device="cpu")
    assert res.active[0] == 800 and res.searched[0] == 800 and res.merged.sum() == 799
    np.testing.assert_array_equal(res.active[1:], res.active[:-1] - res.merged[:-1])
    assert (res.searched <= res.active).all() and (res.products >= res.searched).all()
    assert 0.5 * 800**2 <= res.products[0] < 0.55 * 800**2  # round one: each pair once
    frac = res.merged_fraction()
    assert frac.shape == (res.rounds,) and ((frac > 0) & (frac <= 1)).all()
    assert res.work() >= 0.5 and res.exact_costs >= 799 and res.settled > 0


def test_settling_from_the_lists_changes_only_the_work(monkeypatch):
    x = _mixture(800, 32, seed=12)
    listed = rw.rnn_ward(x, device="cpu")
    monkeypatch.setattr(rw, "KEEP", 10**9)  # no lists: every orphan searched again
    plain = rw.rnn_ward(x, device="cpu")
    np.testing.assert_array_equal(listed.linkage, plain.linkage)
    assert plain.settled == 0 < listed.settled
    assert listed.work() < 0.8 * plain.work()


def test_deterministic_and_independent_of_the_block_size():
    x = _mixture(700, 24, seed=3).astype(np.float32)
    a = rw.rnn_ward(x, device="cpu")
    b = rw.rnn_ward(x, device="cpu")
    tiny = rw.rnn_ward(x, device="cpu", block_bytes=64 << 10)  # ~10 rows per block
    np.testing.assert_array_equal(a.linkage, b.linkage)
    np.testing.assert_array_equal(a.linkage, tiny.linkage)
    np.testing.assert_array_equal(a.linkage[:, :2], linkage(x.astype(np.float64), "ward")[:, :2])


def test_scale_and_offset():
    """Scaled by a power of two: heights scale exactly (the search rescales data to
    unit norm, exactly); far from the origin and at 1e12 (float32 overflows if the
    data were squared unscaled): still scipy's merges."""
    x = _mixture(500, 6, seed=4)
    kept = x.copy()
    base = rw.rnn_ward(x, device="cpu").linkage
    np.testing.assert_array_equal(x, kept)  # regression: centring once wrote into x
    big = rw.rnn_ward(x * 2.0**40, device="cpu").linkage
    np.testing.assert_array_equal(big[:, 2], base[:, 2] * 2.0**40)
    for y in (x * 1e12, x + 1e3):
        z = rw.rnn_ward(y, device="cpu").linkage
        ref = linkage(y, "ward")
        np.testing.assert_array_equal(z[:, :2], ref[:, :2])
        np.testing.assert_allclose(z[:, 2], ref[:, 2], rtol=1e-6)


def test_huge_dimension_filters_in_float64():
    """Past MAX_FILTER_RHO (d ~ 16,000) the float32 bound would prune little: float64."""
    x = _mixture(60, 20_000, seed=5)
    res = rw.rnn_ward(x, device="cpu")
    assert res.filter == "fp64"
    ref = linkage(x, "ward")
    np.testing.assert_array_equal(res.linkage[:, :2], ref[:, :2])
    np.testing.assert_allclose(res.linkage[:, 2], ref[:, 2], rtol=1e-9)


def test_duplicate_points_give_identical_cuts():
    rng = np.random.default_rng(6)
    base = _mixture(900, 12, seed=6)
    copies = base[rng.integers(0, 900, 300)]  # 300 duplicates, some points 3-4 times
    x = np.concatenate([base, copies])[rng.permutation(1200)]
    ref = linkage(x, "ward")
    z = rw.rnn_ward(x, device="cpu").linkage
    zeros = int((ref[:, 2] == 0).sum())
    assert zeros == int((z[:, 2] == 0).sum()) >= 250
    np.testing.assert_allclose(z[:, 2], ref[:, 2], rtol=1e-9, atol=1e-12)
    n_unique = 1200 - zeros
    for count in (2, 10, 50, 200, n_unique):  # every cut above the zero-height merges
        assert _same_partition(cut_tree(ref, 1200, count), cut_tree(z, 1200, count))


def _tied_points():
    """Integer points with exact ties at many heights: translated copies of one
    5-point shape (every within-copy merge ties across copies) and squares (two
    equally cheap first merges each), the groups far apart at random offsets, and
    the mirror image of it all, so the mean is exactly 0 and centring rounds nothing:
    the ties stay exact ties inside rnn_ward too."""
    rng = np.random.default_rng(7)
    shape = np.array([[0, 0, 0], [1, 0, 0], [3, 0, 0], [0, 4, 0], [2, 2, 5]])
    square = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [2, 2, 0]])
    groups = [shape] * 15 + [square] * 5
    offsets = rng.choice(np.arange(-10_000, 10_000, 50), size=(len(groups), 3))
    half = np.concatenate([g + o for g, o in zip(groups, offsets, strict=True)]).astype(float)
    return np.concatenate([half, -half])


def _merge_costs_replayed(x, z):
    """For every merge of ``z`` in order: its height and the least height among all
    pairs of clusters alive before it, from centroids and sizes (the definition)."""
    members = {i: [i] for i in range(len(x))}
    out = []
    for t, (a, b, h, _) in enumerate(z):
        ids = sorted(members)
        cen = np.array([x[members[i]].mean(0) for i in ids])
        size = np.array([len(members[i]) for i in ids], dtype=float)
        d2 = ((cen[:, None, :] - cen[None, :, :]) ** 2).sum(-1)
        cost = 2 * size[:, None] * size[None, :] / (size[:, None] + size[None, :]) * d2
        np.fill_diagonal(cost, np.inf)
        out.append((h, math.sqrt(cost.min())))
        members[len(x) + t] = members.pop(int(a)) + members.pop(int(b))
    return np.array(out)


def test_ties_same_heights_and_every_merge_at_minimum_cost(capsys):
    x = _tied_points()
    n = len(x)
    ref = linkage(x, "ward")
    z = rw.rnn_ward(x, device="cpu").linkage
    np.testing.assert_allclose(np.sort(z[:, 2]), np.sort(ref[:, 2]), rtol=1e-9)
    replay = _merge_costs_replayed(x, z)
    np.testing.assert_allclose(replay[:, 0], replay[:, 1], rtol=1e-9)
    counts = (40, 70, 100, 130, 160)
    amis = {c: adjusted_mutual_info_score(cut_tree(ref, n, c), cut_tree(z, n, c)) for c in counts}
    with capsys.disabled():
        print(f"\n  ties: AMI of exact-rnn's cuts against scipy's: {amis}")
    assert amis[40] == pytest.approx(1.0)  # the 40 groups: above every tie


def test_merged_floor_bounds_the_merged_clusters_cost():
    """cost(A + B, K) from the centroids is never below the floor built from cost(A, K),
    cost(B, K) and cost(A, B) (Lance-Williams), whatever the three sizes."""
    rng = np.random.default_rng(13)

    def cost(p, q):
        return len(p) * len(q) / (len(p) + len(q)) * ((p.mean(0) - q.mean(0)) ** 2).sum()

    for _ in range(200):
        a, b, k = (
            rng.standard_normal((rng.integers(1, 6), 3)) + rng.standard_normal(3) * 2
            for _ in range(3)
        )
        args = [
            torch.tensor(v, dtype=torch.float64)
            for v in (cost(a, k), cost(b, k), len(a), len(b), cost(a, b))
        ]
        assert (
            float(rw._merged_floor(*args)) <= cost(np.concatenate([a, b]), k) * (1 + 1e-12) + 1e-12
        )


def test_a_round_without_a_reciprocal_pair_merges_the_cheapest_pair():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    state = rw._State(torch, x, 1 << 20)
    state.nn = torch.tensor([1, 2, 0])  # a cycle: as if rounding broke a tie's symmetry
    a, b, fallback = state.reciprocal_pairs()
    assert fallback and (int(a), int(b)) == (0, 1)


def test_bad_arguments():
    x = _mixture(20, 3)
    with pytest.raises(ValueError, match="device 'tpu'"):
        rw.rnn_ward(x, device="tpu")
    with pytest.raises(ValueError, match=r"2-D array \[N >= 2"):
        rw.rnn_ward(x[:1])
    with pytest.raises(ValueError, match="block_bytes=-5"):
        rw.rnn_ward(x, block_bytes=-5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            rw.rnn_ward(x, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu():
    x = _mixture(3000, 64, seed=8)
    cpu = rw.rnn_ward(x, device="cpu").linkage
    gpu = rw.rnn_ward(x, device="cuda")
    assert gpu.device.startswith("cuda")
    np.testing.assert_array_equal(gpu.linkage[:, :2], cpu[:, :2])
    np.testing.assert_allclose(gpu.linkage[:, 2], cpu[:, 2], rtol=1e-12)


# ----------------------------------------------------------------------------- whole.py


def test_cli_score_whole_exact_rnn_shows_progress(tmp_path, capsys):
    from clusterprobe.runners import cli

    x = _mixture(300, 16, k=6, seed=11)
    y = np.random.default_rng(11).integers(0, 6, 300)
    path = tmp_path / "emb.npz"
    np.savez(path, features=x, subclass=y)
    assert cli.main(["score", str(path), "--whole", "--method", "exact-rnn"]) == 0
    out = capsys.readouterr()
    printed = json.loads(out.out)
    assert printed["params"]["algorithm"] == "exact-rnn" and "rounds on cpu" in out.err
    ref = whole.score_whole(x / np.linalg.norm(x, axis=1, keepdims=True), y, method="exact")
    assert printed["ami"]["1"] == pytest.approx(ref.ami[1], abs=1e-12)


def test_whole_exact_rnn_equals_exact_and_records_how():
    x = _mixture(1200, 32, k=12, seed=9)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.random.default_rng(9).integers(0, 12, 1200)
    ref = whole.score_whole(x, y, (1, 2, 5), method="exact")
    res = whole.score_whole(x, y, (1, 2, 5), method="exact-rnn")
    for f in (1, 2, 5):
        assert _same_partition(ref.labels[f], res.labels[f])
    p = res.params
    assert p["algorithm"] == "exact-rnn" and p["precision"] == "fp64"
    assert p["device"] in ("cpu", "cuda") and int(p["rounds"]) > 5
    assert p["search_filter"] == "fp32" and res.timings["search"] > 0


def test_auto_exact_then_exact_rnn_then_two_stage():
    x = _mixture(600, 8, seed=10)
    y = np.zeros(600, dtype=int)
    y[::2] = 1
    small = whole.score_whole(x, y, (1,), method="auto")
    assert small.params["algorithm"] == "exact"
    tight = WholeOptions(memory_budget_gb=1e-4, micro_clusters=100)
    mid = whole.score_whole(x, y, (1,), options=tight)
    assert mid.params["algorithm"] == "exact-rnn"
    assert int(mid.params["rnn_max_points"]) == whole.RNN_MAX_POINTS[mid.params["device"]]
    past = WholeOptions(memory_budget_gb=1e-4, micro_clusters=100, rnn_max_points=599)
    big = whole.score_whole(x, y, (1,), options=past)
    assert big.params["algorithm"] == "two-stage" and big.params["rnn_max_points"] == "599"
