"""`clusterprobe rescore` and `export`: re-cluster a stored eval run without the model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.errors import UsageError
from mlflow.tracking import MlflowClient


@pytest.fixture(scope="module")
def final_eval(tiny_run, tmp_path_factory):
    """The tiny run's final eval run, in a copy of its store: rescoring adds runs, and
    the session's tiny store is shared read-only with the pipeline tests."""
    from clusterprobe.tracker.store import local_store
    from clusterprobe.tracker.tracking import Tracker

    shared, config, result = tiny_run
    target = tmp_path_factory.mktemp("rescore") / "mlruns"
    shutil.copytree(shared.root, target)
    store = local_store(target)
    client = MlflowClient(tracking_uri=store.tracking_uri)
    run = client.get_run(result.eval_run_ids[-1])
    assert run.data.params[cv.PARAM_CHECKPOINT_EPOCH] == str(config.epochs)
    return store, Tracker(store), client, run, result


def _curve(client, run_id, key):
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_rescore_per_superclass_reproduces_the_stored_metrics(final_eval):
    from clusterprobe.runners.rescore import rescore

    store, tracker, client, source, result = final_eval
    out = rescore(tracker, source.info.run_id)
    new = client.get_run(out.run_id)
    assert new.data.tags[cv.TAG_KIND] == "eval"
    assert new.data.tags[cv.TAG_SOURCE_RUN] == source.info.run_id
    assert new.data.tags[cv.TAG_PARENT] == result.train_run_id
    assert new.info.status == "FINISHED"
    for key in ("arch", "seed", "dataset", cv.PARAM_CHECKPOINT_EPOCH, "dataset_digest"):
        assert new.data.params[key] == source.data.params[key]
    for f in range(1, 6):
        for key in (cv.ami_metric(f), cv.purity_metric(f)):
            assert _curve(client, new.info.run_id, key) == _curve(client, source.info.run_id, key)
    for key in ("best_ami", "best_layer", "pixel_ami_f1"):
        assert new.data.metrics[key] == source.data.metrics[key]
    table = pd.read_parquet(tracker.artifact_path(new.info.run_id, cv.ART_LAYER_METRICS))
    assert tuple(table.columns) == cv.LAYER_METRICS_COLUMNS
    assert len(table) == 2 * len(result.layers) * 4 * 5 and (table.run_id == new.info.run_id).all()
    # CKA from the stored Grams: the values the run computed from the Grams in memory
    assert new.data.params[cv.PARAM_CKA] == "linear"
    cka = pd.read_parquet(tracker.artifact_path(new.info.run_id, cv.ART_CKA))
    before = pd.read_parquet(tracker.artifact_path(source.info.run_id, cv.ART_CKA))
    assert set(cka.run_id) == set(cka.other_run_id) == {new.info.run_id}
    np.testing.assert_allclose(cka["value"], before["value"], rtol=0, atol=1e-12)


def test_rescore_other_factors_through_the_cli(final_eval, capsys):
    store, tracker, client, source, result = final_eval
    argv = ["rescore", source.info.run_id, "--factors", "2,3", "--cka", "debiased", "--quiet"]
    assert cli_main([*argv, "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    new_id = next(line.split()[2] for line in out.splitlines() if line.startswith("eval run:"))
    new = client.get_run(new_id)
    assert new.data.params["eval_factors"] == "1,2,3"  # factor 1 always (best_ami uses it)
    assert new.data.params[cv.PARAM_CKA] == "debiased"
    cka = pd.read_parquet(tracker.artifact_path(new_id, cv.ART_CKA))
    assert set(cka.estimator) == {"debiased"}
    assert set(new.data.metrics) >= {"ami_f2", "ami_f3", "best_ami"}
    assert "ami_f4" not in new.data.metrics
    # Same trees, same cuts; only the summation order of the superclass mean may differ.
    np.testing.assert_allclose(
        _curve(client, new_id, "ami_f3"), _curve(client, source.info.run_id, "ami_f3"), atol=1e-12
    )


def test_rescore_whole_dataset_from_pooled_embeddings(final_eval):
    from clusterprobe.runners.rescore import rescore
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import adjusted_mutual_info_score

    store, tracker, client, source, result = final_eval
    out = rescore(tracker, source.info.run_id, factors=(1, 2), method="exact")
    new = client.get_run(out.run_id)
    assert new.data.params["protocol"] == "whole"
    assert new.data.tags[cv.TAG_PARENT] == result.train_run_id
    # Reference: sklearn full Ward on the L2-normalised pooled last layer.
    L = len(result.layers)
    emb = tracker.artifact_path(source.info.run_id, cv.ART_EMBED_DIR)
    x = np.load(emb / f"pooled_{L - 1:02d}.npy").astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sub = pd.read_parquet(emb / "labels.parquet").subclass.to_numpy()
    pred = AgglomerativeClustering(n_clusters=16, linkage="ward").fit_predict(x)
    assert _curve(client, new.info.run_id, "ami_f2")[-1] == pytest.approx(
        adjusted_mutual_info_score(sub, pred), abs=1e-6
    )
    table = pd.read_parquet(tracker.artifact_path(new.info.run_id, cv.ART_LAYER_METRICS))
    assert table.superclass.isna().all() and len(table) == 2 * L * 2


def test_export_then_score_equals_the_stored_metrics(final_eval, tmp_path, capsys):
    """Last layer (1x1 at 16 px: pooled = flattened): `score` on the export gives the
    AMI/purity the run stored, per superclass and averaged."""
    store, tracker, client, source, result = final_eval
    L = len(result.layers)
    npz = tmp_path / "emb.npz"
    assert (
        cli_main(
            [
                "export",
                source.info.run_id,
                "--layer",
                str(L - 1),
                "--out",
                str(npz),
                "--store",
                str(store.root),
            ]
        )
        == 0
    )
    with np.load(npz) as f:
        assert set(f.files) == {"features", "superclass", "subclass"}
        assert f["features"].shape[0] == 64
    report = tmp_path / "score.json"
    assert cli_main(["score", str(npz), "--json", str(report)]) == 0
    capsys.readouterr()
    scored = json.loads(report.read_text())
    for f in range(1, 6):
        stored_ami = _curve(client, source.info.run_id, cv.ami_metric(f))[L - 1]
        stored_purity = _curve(client, source.info.run_id, cv.purity_metric(f))[L - 1]
        assert scored["ami"][str(f)] == pytest.approx(stored_ami, abs=1e-6)
        assert scored["purity"][str(f)] == pytest.approx(stored_purity, abs=1e-6)


def test_export_by_layer_name_and_bad_layer(final_eval, tmp_path):
    from clusterprobe.runners.evalrun.stored import export_layer as export

    store, tracker, client, source, result = final_eval
    info = export(tracker, source.info.run_id, "layer2.1", tmp_path / "a.npz")
    assert info["layer"] == 3 and info["shape"] == (64, 128)
    with pytest.raises(UsageError, match="layer 99"):
        export(tracker, source.info.run_id, "99", tmp_path / "b.npz")
    with pytest.raises(UsageError, match="is a train run"):
        export(tracker, result.train_run_id, "0", tmp_path / "c.npz")


def test_corrupt_or_missing_artifacts_give_one_error_and_store_nothing(
    final_eval, tmp_path, capsys
):
    from clusterprobe.tracker.store import local_store
    from clusterprobe.tracker.tracking import Tracker

    store, _, _, source, _ = final_eval
    copy = tmp_path / "mlruns"
    shutil.copytree(store.root, copy)  # a moved copy: the tracker relocates it
    tracker = Tracker(local_store(copy))
    run_id = source.info.run_id
    n_runs = len(tracker.search_runs())
    dist = tracker.artifact_path(run_id, cv.ART_DIST_DIR)
    (dist / "gram_002.npy").write_bytes(b"not an array")
    assert cli_main(["rescore", run_id, "--store", str(copy), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gram_002.npy" in err[0] and "sha256 differs" in err[0]
    # A run written before checksums existed is read unverified: the shape checks remain.
    (tracker.artifact_dir(run_id) / cv.ART_CHECKSUMS).unlink()
    assert cli_main(["rescore", run_id, "--store", str(copy), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gram_002.npy" in err[0] and "unreadable" in err[0]
    np.save(dist / "gram_002.npy", np.full((8, 16, 16), np.nan, dtype=np.float32))
    assert cli_main(["rescore", run_id, "--store", str(copy), "--quiet"]) == 2
    assert "NaN" in capsys.readouterr().err
    (tracker.artifact_path(run_id, cv.ART_EMBED_DIR) / "labels.parquet").unlink()
    assert cli_main(["rescore", run_id, "--method", "exact", "--store", str(copy)]) == 2
    assert "labels.parquet" in capsys.readouterr().err
    assert cli_main(["rescore", "0123abcd", "--store", str(copy)]) == 2
    assert "no such run" in capsys.readouterr().err
    argv = ["rescore", run_id, "--method", "exact", "--cka", "linear", "--store", str(copy)]
    assert cli_main(argv) == 2
    assert "drop --cka or --method" in capsys.readouterr().err
    assert len(tracker.search_runs()) == n_runs  # nothing stored, nothing lost
