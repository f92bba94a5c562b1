"""`clusterprobe compare RUN_A RUN_B`: cross-run CKA and ARI from two eval runs' stored
Grams and assignments, recorded as a compare run the `cka`, `ari` and `run_pairs` views
read.

The store is a copy of the tiny pipeline run's plus one more tiny run with seed 1 (its
Grams kept). References: linear CKA written here from the stored Grams, and sklearn's
``adjusted_rand_score`` on the stored assignments paired by eval image.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.tracker import conventions as cv
from sklearn.metrics import adjusted_rand_score

_NO_WEIGHTS = shutil.ignore_patterns("*.safetensors")  # not read here


@pytest.fixture(scope="module")
def two_seeds(tiny_run, tmp_path_factory):
    """(store, tracker, final eval run of seed 0, final eval run of seed 1)."""
    from clusterprobe.runners import pipeline
    from clusterprobe.tracker.store import local_store
    from clusterprobe.tracker.tracking import Tracker

    store, config, first = tiny_run
    target = tmp_path_factory.mktemp("compare") / "mlruns"
    shutil.copytree(store.root, target, ignore=_NO_WEIGHTS)
    copy = local_store(target)
    second = pipeline.run(
        config.replace(seed=1, save=("distances",), eval_epochs=()), copy, quiet=True
    )
    return copy, Tracker(copy), first.eval_run_ids[-1], second.eval_run_ids[-1]


def _compare(capsys, store, *argv) -> tuple[int, str, str]:
    code = cli_main(["compare", *argv, "--store", str(store.root), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def _compare_run(tracker, out: str):
    line = next(x for x in out.splitlines() if x.startswith("compare run:"))
    return tracker.get_run(line.split()[2])


def _tables(tracker, run_id):
    cka = pd.read_parquet(tracker.artifact_path(run_id, cv.ART_CKA))
    ari = pd.read_parquet(tracker.artifact_path(run_id, cv.ART_ARI))
    return cka, ari


def _gram_cka(k, m) -> float:
    """Linear CKA from two Grams of the same images: <HKH, HMH>_F / (||HKH|| ||HMH||)."""
    n = len(k)
    h = np.eye(n) - 1.0 / n
    kc, mc = h @ np.asarray(k, np.float64) @ h, h @ np.asarray(m, np.float64) @ h
    return float((kc * mc).sum() / (np.linalg.norm(kc) * np.linalg.norm(mc)))


def _sklearn_ari(frame_a, frame_b, la: int, lb: int, f: int) -> float:
    a = frame_a[(frame_a.layer_index == la) & (frame_a.factor == f)]
    b = frame_b[(frame_b.layer_index == lb) & (frame_b.factor == f)]
    scores = []
    for s, part in a.groupby("superclass"):
        other = b[b.superclass == s].set_index("eval_index")["cluster"]
        scores.append(adjusted_rand_score(part["cluster"], other.loc[part["eval_index"]]))
    return float(np.mean(scores))


def test_a_run_against_itself_is_one_on_the_diagonal(two_seeds, capsys):
    from clusterprobe.queries.connect import connect

    store, tracker, run_a, _ = two_seeds
    code, out, err = _compare(capsys, store, run_a, run_a)
    assert code == 0, err
    run = _compare_run(tracker, out)
    assert run.info.status == "FINISHED" and run.data.tags[cv.TAG_KIND] == "compare"
    assert run.data.tags[cv.TAG_COMPARE_A] == run.data.tags[cv.TAG_COMPARE_B] == run_a
    cka, ari = _tables(tracker, run.info.run_id)
    assert list(cka.columns) == list(cv.CKA_COLUMNS) and list(ari.columns) == list(cv.ARI_COLUMNS)
    assert set(cka.kind) == set(ari.kind) == {"compare"}
    assert set(cka.run_id) == set(cka.other_run_id) == {run_a}
    same = cka[cka.layer_a == cka.layer_b]
    np.testing.assert_allclose(same["value"], 1.0, atol=1e-9)  # every superclass and the mean
    np.testing.assert_array_equal(ari[ari.layer_a == ari.layer_b]["value"], 1.0)
    assert set(ari.factor) == {1, 2, 3, 4, 5}
    # the compare run's CKA rows are the eval run's own layer x layer table
    own = pd.read_parquet(tracker.artifact_path(run_a, cv.ART_CKA))
    np.testing.assert_allclose(cka["value"], own["value"], atol=1e-12)

    with connect(store.root) as db:
        pairs = db.sql("SELECT * FROM run_pairs").df()
        kinds = db.sql(
            f"SELECT kind, count(*) AS n FROM cka WHERE run_id = '{run_a}' GROUP BY kind"
        ).df()
    (row,) = pairs[pairs.run_id == run.info.run_id].itertuples()
    assert (row.run_a, row.run_b, row.cka_estimator) == (run_a, run_a, "linear")
    assert row.arch_a == "resnet18" and row.seed_a == 0 and row.eval_set.endswith(":eval")
    assert dict(zip(kinds.kind, kinds.n, strict=True)) == {"layer": len(cka), "compare": len(cka)}


def test_two_seeds_match_a_direct_computation(two_seeds, capsys):
    from clusterprobe.runners.evalrun import stored

    store, tracker, run_a, run_b = two_seeds
    code, out, err = _compare(capsys, store, run_a, run_b)
    assert code == 0, err
    assert "CKA same" in out
    run = _compare_run(tracker, out)
    cka, ari = _tables(tracker, run.info.run_id)
    assert set(cka.run_id) == {run_a} and set(cka.other_run_id) == {run_b}

    grams_a = stored.load_distances(tracker, run_a).grams
    grams_b = stored.load_distances(tracker, run_b).grams
    mean = cka[cka.superclass.isna()].set_index(["layer_a", "layer_b"])["value"]
    n_layers = int(cka.layer_a.max()) + 1
    for la, lb in [(i, i) for i in range(n_layers)] + [(0, n_layers - 1)]:
        want = np.mean([_gram_cka(grams_a[s][la], grams_b[s][lb]) for s in sorted(grams_a)])
        assert mean[(la, lb)] == pytest.approx(want, abs=1e-9)
    diagonal = np.array([mean[(i, i)] for i in range(n_layers)])
    assert (diagonal < 1 - 1e-6).all()  # another seed: similar, never identical

    frame_a = pd.read_parquet(tracker.artifact_path(run_a, cv.ART_ASSIGNMENTS))
    frame_b = pd.read_parquet(tracker.artifact_path(run_b, cv.ART_ASSIGNMENTS))
    for r in ari[ari.factor.isin([1, 3])].itertuples():
        assert r.value == pytest.approx(
            _sklearn_ari(frame_a, frame_b, r.layer_a, r.layer_b, r.factor), abs=1e-12
        )
    assert (ari[ari.layer_a == ari.layer_b]["value"] < 1).any()


def _tamper(case: str, tracker, run_b: str) -> str:
    """Break run B as ``case`` says; returns the message the error line must hold."""
    dist = tracker.artifact_path(run_b, cv.ART_DIST_DIR)
    if case == "missing gram":
        (dist / cv.DIST_GRAM.format(superclass=1)).unlink()
        return "missing"
    if case == "other images":  # B's rows of superclass 0 name its images in reverse order
        for path in (dist / cv.DIST_INDEX, tracker.artifact_path(run_b, cv.ART_ASSIGNMENTS)):
            frame = pd.read_parquet(path)
            rows = frame.superclass == 0
            ids = np.sort(frame.loc[rows, "eval_index"].unique())
            reverse = dict(zip(ids, ids[::-1], strict=True))
            frame.loc[rows, "eval_index"] = frame.loc[rows, "eval_index"].map(reverse)
            frame.to_parquet(path, index=False)
        _rehash(
            tracker, run_b, [dist / cv.DIST_INDEX, tracker.artifact_path(run_b, cv.ART_ASSIGNMENTS)]
        )
        return "different eval images in superclass 0"
    if case == "no assignments":
        tracker.artifact_path(run_b, cv.ART_ASSIGNMENTS).unlink()
        return "no 'assignments.parquet'"
    return "is a train run"  # "train run": RUN_B names the train run


def _rehash(tracker, run_id, paths):
    """Record the edited files' sha256 in the run's checksums.json, so the run reads as one
    that measured other images rather than as a damaged one."""
    from clusterprobe.tracker.checksums import sha256_file

    manifest_path = tracker.artifact_path(run_id, cv.ART_CHECKSUMS)
    root = manifest_path.parent
    manifest = json.loads(manifest_path.read_text())
    for path in paths:
        manifest[path.relative_to(root).as_posix()] = sha256_file(path)
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("case", ["missing gram", "other images", "no assignments", "train run"])
def test_bad_input_is_one_line_exit_2_and_stores_nothing(two_seeds, tmp_path, capsys, case):
    from clusterprobe.tracker.store import local_store
    from clusterprobe.tracker.tracking import Tracker

    store, _, run_a, run_b = two_seeds
    shutil.copytree(store.root, tmp_path / "mlruns")
    copy = local_store(tmp_path / "mlruns")
    tracker = Tracker(copy)
    message = _tamper(case, tracker, run_b)
    if case == "train run":
        run_b = tracker.get_run(run_b).data.tags[cv.TAG_PARENT]
    before = len(tracker.search_runs())
    code, out, err = _compare(capsys, copy, run_a, run_b)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("clusterprobe compare: error: ") and message in lines[0]
    assert len(tracker.search_runs()) == before
