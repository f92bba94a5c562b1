"""CKA between layers: the engine against the formulas written here, through the store.

The formulas are written from features (Kornblith et al. 2019 for linear CKA; Song
et al. 2012 for the unbiased HSIC), on Y = [X, independent noise], so the values sit
well below 1 and a wrong centring or normalisation shows. The Grams go through an eval
run's ``distances/`` (float32) and back, as ``compare`` and ``rescore`` read them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from clusterprobe.runners.engine.cka import check_images, cka_by_superclass, cka_matrix
from clusterprobe.tracker import conventions as cv

# --- the formulas, from features -----------------------------------------------------


def _unit_flat(x: np.ndarray) -> np.ndarray:
    """The protocol's representation: flattened, L2-normalised per image."""
    x = x.reshape(len(x), -1).astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F), columns centred."""
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def _hsic_unbiased(k: np.ndarray, m: np.ndarray) -> float:
    """Song et al. (2012): K~, M~ are K, M with a zero diagonal."""
    n = len(k)
    k, m = k.copy(), m.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(m, 0.0)
    one = np.ones(n)
    return (
        np.trace(k @ m)
        + (one @ k @ one) * (one @ m @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ k @ m @ one)
    ) / (n * (n - 3))


def _debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    k, m = x @ x.T, y @ y.T
    return _hsic_unbiased(k, m) / np.sqrt(_hsic_unbiased(k, k) * _hsic_unbiased(m, m))


FORMULAS = {"linear": _linear_cka, "debiased": _debiased_cka}


def _layers(rng, n: int) -> list[np.ndarray]:
    """Three layers of n images: X (spatial, clustered), Y = [X, noise], Z = noise."""
    centres = rng.normal(size=(3, 4, 3, 3))
    x = centres[rng.integers(0, 3, n)] + 0.8 * rng.normal(size=(n, 4, 3, 3))
    y = np.concatenate([x.reshape(n, -1), 1.5 * rng.normal(size=(n, 20))], axis=1)
    return [_unit_flat(x), _unit_flat(y), _unit_flat(rng.normal(size=(n, 2, 5)))]


def _grams(layers: list[np.ndarray]) -> np.ndarray:
    return np.stack([f @ f.T for f in layers]).astype(np.float32)  # as the protocol stores


# --- the engine --------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["linear", "debiased"])
def test_cka_from_grams_equals_the_formula_from_features(estimator):
    rng = np.random.default_rng(0)
    layers = _layers(rng, 40)
    got = cka_matrix(_grams(layers), estimator=estimator)
    want = np.array([[FORMULAS[estimator](a, b) for b in layers] for a in layers])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert 0.3 < want[0, 1] < 0.95  # Y = [X, noise]: similar, not the same
    np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-12)
    np.testing.assert_array_equal(got, got.T)
    # across two sets of layers of the same images: the rectangular block of the above
    np.testing.assert_allclose(
        cka_matrix(_grams(layers[:1]), _grams(layers[1:]), estimator=estimator),
        want[:1, 1:],
        atol=1e-5,
    )


def test_undefined_and_bad_input():
    rng = np.random.default_rng(1)
    grams = _grams(_layers(rng, 6))
    constant = np.full((1, 6, 6), 0.25, dtype=np.float32)  # every image alike
    got = cka_matrix(np.concatenate([grams, constant]))
    assert np.isnan(got[3]).all() and np.isnan(got[:, 3]).all() and np.isfinite(got[:3, :3]).all()
    with pytest.raises(ValueError, match="'rbf'"):
        cka_matrix(grams, estimator="rbf")
    with pytest.raises(ValueError, match="at least 4 images, got 3"):
        cka_matrix(grams[:, :3, :3], estimator="debiased")
    with pytest.raises(ValueError, match="6 images, grams_b 5"):
        cka_matrix(grams, grams[:, :5, :5])
    with pytest.raises(ValueError, match="superclasses differ"):
        cka_by_superclass({0: grams}, {1: grams})
    check_images("linear", {0: 2, 5: 3})
    with pytest.raises(ValueError, match="superclass 5 has 3 eval image.* at least 4"):
        check_images("debiased", {0: 4, 5: 3})


# --- through an eval run's stored Grams ----------------------------------------------------


@pytest.mark.parametrize("estimator", ["linear", "debiased"])
def test_cka_from_stored_grams_per_superclass_and_mean(store, estimator):
    from clusterprobe.runners import evalrun
    from clusterprobe.runners.evalrun import stored, tables
    from clusterprobe.tracker.tracking import Tracker

    rng = np.random.default_rng(2)
    features = {0: _layers(rng, 12), 3: _layers(rng, 9)}  # superclass -> layers
    eval_index = {0: np.arange(12), 3: np.arange(12, 21)}
    tracker = Tracker(store)
    with tracker.start_run("train") as train:
        pass
    spec = evalrun.EvalSpec(train.run_id, {}, "", "x:eval", "per_superclass", "cka test")
    with evalrun.start_eval_run(tracker, spec) as ctx:
        ctx.log_json(tables.layers_json(["x", "y", "z"]), cv.ART_LAYERS)
        grams = {s: _grams(f) for s, f in features.items()}
        evalrun.log_distances(ctx, grams, {}, eval_index, np.zeros(21, dtype=np.int64))

    back = stored.load_distances(tracker, ctx.run_id)
    assert {s: list(i) for s, i in back.eval_index.items()} == {
        s: list(i) for s, i in eval_index.items()
    }
    got = cka_by_superclass(back.grams, estimator=estimator)
    want = {
        s: np.array([[FORMULAS[estimator](a, b) for b in f] for a in f])
        for s, f in features.items()
    }
    assert got.superclasses == [0, 3] and got.estimator == estimator
    np.testing.assert_allclose(got.per_superclass, np.stack([want[0], want[3]]), atol=1e-5)
    np.testing.assert_allclose(got.mean, (want[0] + want[3]) / 2, atol=1e-5)

    rows = tables.cka_frame("r", "r", "layer", got)
    assert list(rows.columns) == list(cv.CKA_COLUMNS) and len(rows) == 3 * 3 * 3
    mean = rows[rows.superclass.isna()].pivot(index="layer_a", columns="layer_b", values="value")
    np.testing.assert_allclose(mean.to_numpy(), got.mean, atol=0)
    assert set(rows.estimator) == {estimator} and set(rows.kind) == {"layer"}


# --- what `run` records --------------------------------------------------------------------


def _gram_cka(k: np.ndarray, m: np.ndarray) -> float:
    """Linear CKA from two Grams: <HKH, HMH>_F / (||HKH||_F ||HMH||_F)."""
    n = len(k)
    h = np.eye(n) - 1.0 / n
    kc, mc = h @ k.astype(np.float64) @ h, h @ m.astype(np.float64) @ h
    return float((kc * mc).sum() / (np.linalg.norm(kc) * np.linalg.norm(mc)))


def test_every_run_eval_records_layer_cka(tiny_run):
    from clusterprobe.runners.evalrun import stored
    from clusterprobe.tracker.tracking import Tracker

    store, config, result = tiny_run
    tracker = Tracker(store)
    for run_id in result.eval_run_ids:
        run = tracker.get_run(run_id)
        assert run.data.params[cv.PARAM_CKA] == "linear" and "seconds_cka" in run.data.metrics
        rows = pd.read_parquet(tracker.artifact_path(run_id, cv.ART_CKA))
        assert list(rows.columns) == list(cv.CKA_COLUMNS)
        assert set(rows.kind) == {"layer"} and set(rows.other_run_id) == {run_id}
        grams = stored.load_distances(tracker, run_id).grams
        n_layers = len(result.layers)
        assert len(rows) == n_layers**2 * (len(grams) + 1)
        per = rows[rows.superclass.notna()]
        for r in per[per.layer_a < per.layer_b].sample(8, random_state=0).itertuples():
            g = grams[int(r.superclass)]
            assert r.value == pytest.approx(_gram_cka(g[r.layer_a], g[r.layer_b]), abs=1e-9)
        mean = rows[rows.superclass.isna()].set_index(["layer_a", "layer_b"])["value"]
        want = per.groupby(["layer_a", "layer_b"])["value"].mean()
        np.testing.assert_allclose(mean.sort_index(), want.sort_index(), atol=1e-12)
        diag = mean[[(i, i) for i in range(n_layers)]]
        np.testing.assert_allclose(diag, 1.0, atol=1e-12)
        assert mean.min() < 0.999  # the layers are not all the same representation
