"""ARI between cluster assignments: layer x layer, checkpoint and seed tables.

The pipeline tests' tiny run (``tiny_run`` in conftest.py) is reused read-only; the
seed comparison copies its store and adds one more tiny run with another seed there.
Every ARI is checked against ``sklearn.metrics.adjusted_rand_score`` computed here
from the stored ``assignments.parquet`` artifacts.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from clusterprobe.runners.engine import stability
from clusterprobe.runners.evalrun import tables
from clusterprobe.tracker import conventions as cv
from sklearn.metrics import adjusted_rand_score


def _sklearn_ari(frame_a: pd.DataFrame, frame_b: pd.DataFrame, la: int, lb: int, f: int) -> float:
    """ARI of layer la (run A) vs layer lb (run B) at factor f, averaged over superclasses,
    pairing images by eval_index (independent of the row order the runs stored)."""
    a = frame_a[(frame_a.layer_index == la) & (frame_a.factor == f)]
    b = frame_b[(frame_b.layer_index == lb) & (frame_b.factor == f)]
    scores = []
    for s, part in a.groupby("superclass"):
        other = b[b.superclass == s].set_index("eval_index")["cluster"]
        scores.append(adjusted_rand_score(part["cluster"], other.loc[part["eval_index"]]))
    return float(np.mean(scores))


def _read(tracker, run_id, path) -> pd.DataFrame:
    return pd.read_parquet(tracker.artifact_path(run_id, path))


# --- pure functions --------------------------------------------------------------------


def _random_assignments(rng, layers=3, sups=(0, 2), n=(9, 7), factors=(1, 2)):
    """(layer, superclass) -> [F, n] random labels, 2f clusters at factor f."""
    return {
        (li, s): np.stack([rng.integers(0, 2 * f, size=n_s) for f in factors])
        for li in range(layers)
        for s, n_s in zip(sups, n, strict=True)
    }


def test_layer_ari_matches_sklearn_symmetric_unit_diagonal():
    rng = np.random.default_rng(0)
    factors = (1, 2)
    assign = _random_assignments(rng, factors=factors)
    layers, matrices = stability.layer_ari(assign, factors)
    rows = tables.ari_frame("r", "r", "layer", layers, layers, matrices)
    assert list(rows.columns) == list(cv.ARI_COLUMNS)
    assert len(rows) == 3 * 3 * 2 and set(rows.kind) == {"layer"}
    assert set(rows.other_run_id) == {"r"}
    for r in rows.itertuples():
        fi = factors.index(r.factor)
        want = np.mean(
            [
                adjusted_rand_score(assign[(r.layer_a, s)][fi], assign[(r.layer_b, s)][fi])
                for s in (0, 2)
            ]
        )
        assert r.value == pytest.approx(want, abs=1e-12)
    m = rows[rows.factor == 2].pivot(index="layer_a", columns="layer_b", values="value").to_numpy()
    np.testing.assert_array_equal(m, m.T)
    np.testing.assert_array_equal(np.diag(m), 1.0)


def test_cross_ari_common_factors_and_round_trip():
    rng = np.random.default_rng(1)
    a = _random_assignments(rng, factors=(1, 2))
    b = _random_assignments(rng, factors=(1, 2))
    index = {0: np.arange(10, 19), 2: np.array([3, 1, 4, 0, 5, 9, 2])}
    frame = tables.assignments_frame(b, (1, 2), index)
    assert list(frame.columns) == list(cv.ASSIGNMENTS_COLUMNS) and len(frame) == 3 * 2 * 16
    back, factors, back_index = tables.assignments_from_frame(frame)
    assert factors == (1, 2) and stability.same_images(index, back_index)
    for key in b:
        np.testing.assert_array_equal(back[key], b[key])
    # the other run measured factor 2 only: rows for the common factor only
    only2 = {k: v[1:] for k, v in back.items()}
    rows = tables.ari_frame("a", "b", "seed", *stability.cross_ari(a, only2, (1, 2), (2,)))
    assert set(rows.factor) == {2} and len(rows) == 9
    r = rows[(rows.layer_a == 0) & (rows.layer_b == 1)].iloc[0]
    want = np.mean([adjusted_rand_score(a[(0, s)][1], b[(1, s)][1]) for s in (0, 2)])
    assert r.value == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="ARI kind 'pairs'"):
        tables.ari_frame("a", "b", "pairs", [0], [0], {1: np.eye(1)})


# --- what the pipeline recorded ----------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(tiny_run):
    from clusterprobe.tracker.tracking import Tracker

    store, config, result = tiny_run
    tracker = Tracker(store)
    by_epoch = {
        int(tracker.get_run(i).data.params[cv.PARAM_CHECKPOINT_EPOCH]): i
        for i in result.eval_run_ids
    }
    return store, config, result, tracker, by_epoch


def test_layer_ari_of_every_eval_run_matches_sklearn(recorded):
    _, config, _, tracker, by_epoch = recorded
    for epoch, run_id in by_epoch.items():
        assign = _read(tracker, run_id, cv.ART_ASSIGNMENTS)
        ari = _read(tracker, run_id, cv.ART_ARI)
        assert list(ari.columns) == list(cv.ARI_COLUMNS)
        layer = ari[ari.kind == "layer"]
        assert set(layer.other_run_id) == {run_id} and set(layer.run_id) == {run_id}
        n_layers = assign.layer_index.nunique()
        assert len(layer) == n_layers * n_layers * len(config.factors)
        diag = layer[layer.layer_a == layer.layer_b]
        np.testing.assert_array_equal(diag["value"], 1.0)
        for f in (1, 3):
            m = layer[layer.factor == f].pivot(index="layer_a", columns="layer_b", values="value")
            np.testing.assert_array_equal(m.to_numpy(), m.to_numpy().T)
        for r in layer[(layer.factor.isin([1, 3])) & (layer.layer_a < layer.layer_b)].itertuples():
            assert r.value == pytest.approx(
                _sklearn_ari(assign, assign, r.layer_a, r.layer_b, r.factor), abs=1e-12
            )
        # every eval image exactly once per (layer, factor)
        per = assign.groupby(["layer_index", "factor"]).eval_index.agg(["nunique", "size"])
        n_eval = config.classes * config.subclasses * config.eval_per_subclass
        assert (per["nunique"] == n_eval).all() and (per["size"] == n_eval).all()
        assert not (ari.kind == "seed").any()  # the first run of its design in its store
        if epoch < config.epochs:
            assert set(ari.kind) == {"layer"}


def test_final_run_compares_with_earlier_checkpoint(recorded):
    _, config, _, tracker, by_epoch = recorded
    final, first = by_epoch[config.epochs], by_epoch[1]
    ari = _read(tracker, final, cv.ART_ARI)
    ckpt = ari[ari.kind == "checkpoint"]
    assert set(ckpt.other_run_id) == {first}
    a = _read(tracker, final, cv.ART_ASSIGNMENTS)
    b = _read(tracker, first, cv.ART_ASSIGNMENTS)
    n_layers = a.layer_index.nunique()
    assert len(ckpt) == n_layers * n_layers * len(config.factors)
    for r in ckpt[ckpt.factor == 1].itertuples():
        assert r.value == pytest.approx(_sklearn_ari(a, b, r.layer_a, r.layer_b, 1), abs=1e-12)


# Weights, embeddings and distances: not read here, so not copied.
_BULK = shutil.ignore_patterns("*.safetensors", "*.npy")


@pytest.fixture(scope="module")
def second_seed(tiny_run, tmp_path_factory):
    """A copy of the tiny run's store plus one more tiny run with seed 1."""
    from clusterprobe.runners import pipeline
    from clusterprobe.tracker.store import local_store
    from clusterprobe.tracker.tracking import Tracker

    store, config, first = tiny_run
    target = tmp_path_factory.mktemp("stability") / "mlruns"
    shutil.copytree(store.root, target, ignore=_BULK)
    copy = local_store(target)
    # No intermediate checkpoint and nothing saved: eval_epochs and save are not design.
    result = pipeline.run(config.replace(seed=1, save=(), eval_epochs=()), copy, quiet=True)
    return copy, config, first, result, Tracker(copy)


def test_second_seed_gets_seed_rows_against_the_first(second_seed):
    _, config, first, second, tracker = second_seed
    final_first, final_second = first.eval_run_ids[-1], second.eval_run_ids[-1]
    ari = _read(tracker, final_second, cv.ART_ARI)
    seed = ari[ari.kind == "seed"]
    # only the first run's final checkpoint has the same design (epoch 1 is another one)
    assert set(seed.other_run_id) == {final_first}
    assert set(seed.run_id) == {final_second}
    a = _read(tracker, final_second, cv.ART_ASSIGNMENTS)
    b = _read(tracker, final_first, cv.ART_ASSIGNMENTS)
    n_layers = a.layer_index.nunique()
    assert len(seed) == n_layers * n_layers * len(config.factors)
    for r in seed[seed.factor.isin([1, 5])].itertuples():
        assert r.value == pytest.approx(
            _sklearn_ari(a, b, r.layer_a, r.layer_b, r.factor), abs=1e-12
        )
    assert len(second.eval_run_ids) == 1  # no intermediate checkpoint: no checkpoint rows
    assert set(ari.kind) == {"layer", "seed"}


def test_seed_stability_query_via_cli(second_seed, capsys):
    from clusterprobe.runners.cli import main

    store = second_seed[0]
    assert (
        main(
            ["query", "seed_stability", "--store", str(store.root), "--param", "kind=layer"]
            + ["--format", "json"]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert rows and {r["kind"] for r in rows} == {"layer"}
    assert {r["factor"] for r in rows} == {1}
    for r in rows:
        if r["layer_a"] == r["layer_b"]:
            assert r["mean"] == pytest.approx(1.0)
            assert r["n"] == 2  # the final checkpoints of seed 0 and seed 1
    assert main(["query", "seed_stability", "--store", str(store.root), "--format", "json"]) == 0
    seed = json.loads(capsys.readouterr().out)
    assert seed and {r["kind"] for r in seed} == {"seed"} and {r["n"] for r in seed} == {1}


def test_two_seeds_of_one_design_are_one_group_in_sql(second_seed):
    from clusterprobe.queries.connect import connect, query_df
    from clusterprobe.runners.evalrun.stability import design_keys

    store, _, first, second, tracker = second_seed
    final_first, final_second = first.eval_run_ids[-1], second.eval_run_ids[-1]
    with connect(store.root) as analysis:
        final = analysis.sql("SELECT run_id, design_key, seed FROM final_evals").df()
        best = query_df(analysis, "best_layers", factor=1)
        design = analysis.sql("SELECT run_id, key FROM design_params").df()
    assert set(final["run_id"]) == {final_first, final_second}
    assert final["design_key"].nunique() == 1 and set(final["seed"]) == {0, 1}
    assert len(best) == 1 and best["n"].item() == 2
    want = (first.summary["best_ami"] + second.summary["best_ami"]) / 2
    assert best["best_value_mean"].item() == pytest.approx(want, abs=1e-12)
    assert best["best_value_ci_lo"].item() <= want <= best["best_value_ci_hi"].item()
    # What differs between the two final eval runs (seed, save, eval_epochs, the memory
    # budget the embedding saw, ...) is never design; the SQL rule is the Python one.
    a, b = (tracker.get_run(r).data.params for r in (final_first, final_second))
    differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert {"seed", "save", "eval_epochs"} <= differ
    keys = set(design[design["run_id"] == final_first]["key"])
    assert keys and not keys & differ
    python_rule = set(design_keys(a)) - cv.EVAL_RUN_PARAMS - {"cluster.algorithm"}
    assert keys == {k for k in python_rule if a[k] != ""}


def test_unreadable_seed_artifact_is_a_warning(tiny_run, tmp_path):
    from clusterprobe.runners.evalrun.stability import find_seed_runs
    from clusterprobe.tracker.store import local_store
    from clusterprobe.tracker.tracking import Tracker

    store, _, first = tiny_run
    shutil.copytree(store.root, tmp_path / "mlruns", ignore=_BULK)
    tracker = Tracker(local_store(tmp_path / "mlruns"))
    final = first.eval_run_ids[-1]
    params = {**tracker.get_run(final).data.params, "seed": "7"}  # as a new run would log
    _, _, index = tables.assignments_from_frame(_read(tracker, final, cv.ART_ASSIGNMENTS))

    found = find_seed_runs(tracker, "new-run", params, index)
    assert list(found) == [final]
    other_images = {s: idx[::-1] for s, idx in index.items()}
    assert find_seed_runs(tracker, "new-run", params, other_images) == {}
    assert find_seed_runs(tracker, "new-run", {**params, "lr": "9.9"}, index) == {}

    tracker.artifact_path(final, cv.ART_ASSIGNMENTS).write_bytes(b"not parquet")
    with pytest.warns(RuntimeWarning, match=f"skipped run {final}"):
        assert find_seed_runs(tracker, "new-run", params, index) == {}
    tracker.artifact_path(final, cv.ART_ASSIGNMENTS).unlink()  # a run from before: silent
    assert find_seed_runs(tracker, "new-run", params, index) == {}
