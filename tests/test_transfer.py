"""`clusterprobe transfer`: a stored model clusters an out-of-distribution image folder.

Runs on a copy of the tiny pipeline run's store (its final checkpoint) and a folder
of coloured-noise images the test draws; the recorded AMI is checked against
sklearn's Ward + AMI on the same pooled features, and the transfer probes against
sklearn's LogisticRegression and KNeighborsClassifier on the same split.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.runners.engine.probe import held_out_rows, stratified_split
from clusterprobe.tracker import conventions as cv
from PIL import Image
from sklearn.cluster import AgglomerativeClustering
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_mutual_info_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, normalize

CLASSES = ("crimson", "olive", "teal")


@pytest.fixture(scope="module")
def transfer_folder(tmp_path_factory):
    """root/<class>/<30 PNGs>: per class a base colour, per image a colour shift of about
    its size (so the classes overlap and the probes land between chance and 1), plus
    pixel noise; 20 x 20 px."""
    root = tmp_path_factory.mktemp("transfer") / "colours"
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        base = np.full(3, 100.0)
        base[k] += 60
        for i in range(30):
            colour = base + rng.normal(0, 50, size=3)
            pixels = colour + rng.normal(0, 30, size=(20, 20, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                root / name / f"{i:02d}.png"
            )
    return root


@pytest.fixture()
def store_copy(tiny_run, tmp_path):
    from clusterprobe.tracker.store import local_store
    from clusterprobe.tracker.tracking import Tracker

    store, config, result = tiny_run
    target = tmp_path / "mlruns"
    shutil.copytree(store.root, target, ignore=shutil.ignore_patterns("*.npy"))
    copy = local_store(target)
    return copy, Tracker(copy), result.train_run_id


def _argv(store, *extra):
    return [*extra, "--store", str(store.root), "--quiet"]


def test_transfer_run_is_recorded_and_equals_sklearn(store_copy, transfer_folder, capsys):
    from clusterprobe.queries.connect import connect, query_df
    from clusterprobe.runners import models
    from clusterprobe.runners.config import RunConfig
    from clusterprobe.runners.data.transfer import load_transfer
    from clusterprobe.runners.engine.embed import pooled_features

    store, tracker, train_id = store_copy
    argv = ["transfer", train_id, "--set", str(transfer_folder), "--factors", "1-3"]
    assert cli_main(_argv(store, *argv)) == 0
    out = capsys.readouterr().out
    assert "AMI f1" in out and f"nested under train run {train_id}" in out

    (ev,) = [
        r
        for r in tracker.search_runs(kind="eval", parent_run_id=train_id)
        if r.data.params.get(cv.PARAM_EVAL_SET) == "colours"
    ]
    params = ev.data.params
    assert ev.info.status == "FINISHED"
    assert params[cv.PARAM_PROTOCOL] == "whole" and params["factors"] == "1,2,3"
    assert params["whole.algorithm"] == "exact" and params["transfer.classes"] == "3"
    assert params[cv.PARAM_CHECKPOINT_EPOCH] == params["epochs"]
    # the final model on another dataset: both are the run's inputs, the summary is linked
    inputs = tracker.get_run(ev.info.run_id).inputs  # search_runs leaves model inputs out
    (given,) = inputs.dataset_inputs
    assert given.dataset.name == "colours" and given.tags[0].value == "eval"
    model_id = tracker.get_run(train_id).data.tags[cv.TAG_MODEL_ID]
    assert [m.model_id for m in inputs.model_inputs] == [model_id]
    linked = [m for m in tracker.client.get_logged_model(model_id).metrics if m.key == "best_ami"]
    assert {m.dataset_name for m in linked} == {"synthetic", "colours"}

    # independent reference: sklearn Ward + AMI on the checkpoint's pooled features
    folder = tracker.artifact_path(train_id, cv.ART_CHECKPOINT_DIR)
    model = models.load_checkpoint(folder)
    taps = models.layer_taps(model, RunConfig(arch=params["arch"], taps=params["taps"]))
    size = models.checkpoint_config(folder)["image_size"]
    data = load_transfer(str(transfer_folder), image_size=size, arch=params["arch"])
    pooled = pooled_features(model, taps, data.images, device="cpu")
    history = tracker.client.get_metric_history(ev.info.run_id, "ami_f2")
    recorded = {m.step: m.value for m in history}
    assert sorted(recorded) == list(range(len(taps)))
    for li in (0, len(taps) - 1):
        x = normalize(pooled[li].astype(np.float64))
        pred = AgglomerativeClustering(n_clusters=6, linkage="ward").fit_predict(x)
        assert recorded[li] == pytest.approx(
            adjusted_mutual_info_score(data.labels, pred), abs=1e-9
        )

    table = tracker.artifact_path(ev.info.run_id, cv.ART_LAYER_METRICS)
    import pandas as pd

    rows = pd.read_parquet(table)
    # ami and purity at 3 factors, probe_acc and knn_acc: every layer, one whole set
    assert len(rows) == len(taps) * (3 * 2 + 2) and rows["superclass"].isna().all()
    _check_probes(tracker, ev, pooled, data.labels, int(params["seed"]))

    with connect(store.root) as analysis:
        found = query_df(analysis, "transfer_by_pretraining_labels")
    assert set(found["eval_set"]) == {"colours"} and (found["n"] == 1).all()
    assert sorted(found["factor"]) == [1, 2, 3]

    # the pooled embeddings are stored in the eval-run layout: export and rescore read them
    out = transfer_folder.parent / "last.npz"
    argv = ["export", ev.info.run_id, "--layer", "-1", "--out", str(out)]
    assert cli_main([*argv, "--store", str(store.root)]) == 0
    exported = np.load(out)
    np.testing.assert_allclose(exported["features"], pooled[-1], rtol=1e-6)
    assert np.array_equal(exported["subclass"], data.labels)
    argv = ["rescore", ev.info.run_id, "--method", "exact", "--factors", "1-3"]
    assert cli_main(_argv(store, *argv)) == 0
    (again,) = tracker.search_runs(kind="eval", tags={cv.TAG_SOURCE_RUN: ev.info.run_id})
    redone = {
        m.step: m.value for m in tracker.client.get_metric_history(again.info.run_id, "ami_f2")
    }
    assert redone == pytest.approx(recorded, abs=1e-12)
    capsys.readouterr()
    assert cli_main(_argv(store, "rescore", ev.info.run_id)) == 2  # no superclasses: --method
    assert "clustered as a whole dataset" in capsys.readouterr().err


def _sklearn_probe(x, y, train, test, seed: int) -> float:
    """sklearn's LogisticRegression on standardised features, its L2 strength picked as
    engine.probe documents: the best of C_GRID on its held-out 20 % of each class."""
    from clusterprobe.runners.engine.probe import C_GRID

    xtr, ytr = x[train], y[train]
    fit, val = held_out_rows(ytr, 0.2, seed)  # the rows engine.probe holds out

    def model(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))

    scores = [model(c).fit(xtr[fit], ytr[fit]).score(xtr[val], ytr[val]) for c in C_GRID]
    best = C_GRID[int(np.argmax(scores))]  # ties: the first, the strongest regularisation
    return model(best).fit(xtr, ytr).score(x[test], y[test])


def _check_probes(tracker, ev, pooled, labels, seed: int) -> None:
    """The recorded transfer probes equal sklearn's on the documented split (half of
    every class tested, engine.probe.stratified_split with the run's seed)."""
    params = ev.data.params
    train, test = stratified_split(labels, 0.5, seed)
    assert params["probe_train_images"] == str(len(train))
    assert params["transfer.probe_test_images"] == str(len(test))
    history = {
        key: {m.step: m.value for m in tracker.client.get_metric_history(ev.info.run_id, key)}
        for key in ("probe_acc", "knn_acc")
    }
    assert sorted(history["probe_acc"]) == sorted(history["knn_acc"]) == list(range(len(pooled)))
    for li, x in enumerate(pooled):
        x = x.astype(np.float64)
        knn = KNeighborsClassifier(n_neighbors=min(20, len(train)), metric="cosine")
        want = knn.fit(x[train], labels[train]).score(x[test], labels[test])
        assert history["knn_acc"][li] == pytest.approx(want, abs=0.01), li
        want = _sklearn_probe(x, labels, train, test, seed)
        assert history["probe_acc"][li] == pytest.approx(want, abs=0.01), li
    summary = tracker.get_run(ev.info.run_id).data.metrics
    assert summary["best_probe_acc"] == max(history["probe_acc"].values())
    assert summary["best_knn_acc"] == max(history["knn_acc"].values())


@pytest.mark.parametrize(
    "case",
    [
        "unknown run",
        "missing folder",
        "no checkpoint",
        "corrupt",
        "corrupt unverified",
        "one image class",
    ],
)
def test_bad_input_is_one_line_exit_2_and_stores_nothing(store_copy, transfer_folder, capsys, case):
    store, tracker, train_id = store_copy
    run_id, source = train_id, str(transfer_folder)
    folder = tracker.artifact_path(train_id, cv.ART_CHECKPOINT_DIR)
    message = {
        "unknown run": "no such run",
        "missing folder": "neither a folder nor a torchvision dataset",
        "no checkpoint": "no stored checkpoint",
        "corrupt": "the file was changed or damaged",  # its sha256 no longer matches
        "corrupt unverified": "checkpoint does not load",  # a run from before checksums
        "one image class": "a stratified split needs at least 2 per class",
    }[case]
    if case == "unknown run":
        run_id = "0" * 32
    elif case == "missing folder":
        source = str(transfer_folder.parent / "absent")
    elif case == "no checkpoint":
        shutil.rmtree(folder)
    elif case.startswith("corrupt"):
        (folder / "model.safetensors").write_bytes(b"not a safetensors file")
        if case == "corrupt unverified":
            tracker.artifact_path(train_id, cv.ART_CHECKSUMS).unlink()
    else:  # the transfer probes cannot split a class of one image
        source = str(transfer_folder.parent / "lonely")
        shutil.copytree(transfer_folder, source, dirs_exist_ok=True)
        for extra in sorted((transfer_folder.parent / "lonely" / CLASSES[0]).iterdir())[1:]:
            extra.unlink()
    before = len(tracker.search_runs())
    assert cli_main(_argv(store, "transfer", run_id, "--set", source)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1, captured.err
    assert lines[0].startswith("clusterprobe transfer: error: ") and message in lines[0]
    assert len(tracker.search_runs()) == before


def test_transfer_of_pretrained_weights_nests_under_their_model_run(
    store_copy, transfer_folder, hf_cache, no_network, capsys
):
    """The same model sources as eval: timm's weights from the cache, images prepared by
    their data config (here at 32 px), one model run for the weights."""
    store, tracker, _ = store_copy
    name = "test_convnext.r160_in1k"
    argv = ["transfer", "--pretrained", name, "--set", str(transfer_folder), "--factors", "1-2"]
    assert cli_main(_argv(store, *argv, "--image-size", "32")) == 0
    out = capsys.readouterr().out
    run_id, parent = out.split("eval run: ")[1].split()[0], out.split("model run ")[1].split(")")[0]
    run = tracker.get_run(run_id)
    params = run.data.params
    assert run.info.status == "FINISHED" and run.data.tags[cv.TAG_PARENT] == parent
    assert params[cv.PARAM_MODEL_SOURCE] == "pretrained" and params[cv.PARAM_PROTOCOL] == "whole"
    assert params[cv.PARAM_INPUT_SOURCE] == "model" and params[cv.PARAM_INPUT_SIZE] == "32"
    assert params[cv.PARAM_INPUT_MEAN] == "0.5,0.5,0.5"  # the weights' data config, not ImageNet's
    assert tracker.get_run(parent).data.params[cv.PARAM_PRETRAINED] == name
    assert params["transfer.classes"] == "3" and params["taps"] == "blocks"


def test_transfer_needs_one_model(store_copy, transfer_folder, capsys):
    store, tracker, train_id = store_copy
    argv = ["transfer", train_id, "--pretrained", "x", "--set", str(transfer_folder)]
    assert cli_main(_argv(store, *argv)) == 2
    assert "give one model" in capsys.readouterr().err
