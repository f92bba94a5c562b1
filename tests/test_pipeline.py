"""The main job end to end: real synthetic data, real timm resnet18, real MLflow SQLite store.

One tiny run (``tiny_run`` in conftest.py) is shared by every test here; each test
reads a different part of what it recorded.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from clusterprobe.tracker import conventions as cv
from mlflow.tracking import MlflowClient
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_mutual_info_score


@pytest.fixture(scope="module")
def recorded(tiny_run):
    from clusterprobe.tracker.tracking import Tracker

    store, config, result = tiny_run
    tracker = Tracker(store)
    client = MlflowClient(tracking_uri=store.tracking_uri)
    train = client.get_run(result.train_run_id)
    evals = {
        int(r.data.params[cv.PARAM_CHECKPOINT_EPOCH]): r
        for r in (client.get_run(i) for i in result.eval_run_ids)
    }
    return store, config, result, tracker, client, train, evals


def _artifact(tracker, run_id, path) -> Path:
    return Path(tracker.artifact_path(run_id, path))


def test_runs_kinds_nesting_and_status(recorded):
    _, config, result, tracker, _, train, evals = recorded
    assert train.data.tags[cv.TAG_KIND] == "train"
    assert train.info.status == "FINISHED"
    assert sorted(evals) == [1, config.epochs]  # the intermediate checkpoint and the final one
    for run in evals.values():
        assert run.data.tags[cv.TAG_KIND] == "eval"
        assert run.data.tags[cv.TAG_PARENT] == result.train_run_id
        assert run.info.status == "FINISHED"
        assert run.data.params[cv.PARAM_EVAL_SET] == "synthetic:eval"
    children = tracker.search_runs(kind="eval", parent_run_id=result.train_run_id)
    assert sorted(r.info.run_id for r in children) == sorted(result.eval_run_ids)


def test_eval_runs_repeat_the_train_params(recorded):
    _, config, _, _, _, train, evals = recorded
    params = train.data.params
    assert params["arch"] == "resnet18" and params["epochs"] == "2" and params["seed"] == "0"
    assert params[cv.PARAM_DATASET] == "synthetic" and params[cv.PARAM_SHUFFLED] == "False"
    assert params["num_superclasses"] == "4" and params["num_subclasses"] == "8"
    assert params["train_images"] == "96" and params["eval_images"] == "64"
    assert len(params["dataset_digest"]) == 12
    for run in evals.values():
        for key, value in params.items():
            assert run.data.params[key] == value, key
        assert run.data.params["cluster.algorithm"] == "ward"
        assert run.data.params["eval_factors"] == "1,2,3,4,5"


def test_epoch_metrics_step_is_epoch(recorded):
    _, config, result, _, client, _, _ = recorded
    for key in cv.EPOCH_METRICS:
        history = client.get_metric_history(result.train_run_id, key)
        assert [m.step for m in history] == [1, 2], key
    losses = [m.value for m in client.get_metric_history(result.train_run_id, "train_loss")]
    assert [h["train_loss"] for h in result.history] == pytest.approx(losses)


def test_per_layer_metrics_step_is_layer_index(recorded):
    _, config, result, tracker, client, _, evals = recorded
    run_id = evals[config.epochs].info.run_id
    n_layers = len(result.layers)
    assert n_layers == 8  # resnet18: 4 stages x 2 BasicBlocks
    for key in [cv.ami_metric(f) for f in config.factors] + [cv.PROBE_METRIC, cv.KNN_METRIC]:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(n_layers)), key
    # The curves equal the means of the tidy table (means are left to SQL, so check them).
    table = pd.read_parquet(_artifact(tracker, run_id, cv.ART_LAYER_METRICS))
    ami1 = table[(table.metric == "ami") & (table.factor == 1)]
    means = ami1.groupby("layer_index")["value"].mean().to_numpy()
    history = sorted(client.get_metric_history(run_id, "ami_f1"), key=lambda m: m.step)
    np.testing.assert_allclose([m.value for m in history], means, atol=1e-12)
    np.testing.assert_allclose([r["ami_f1"] for r in result.layers], means, atol=1e-12)
    probe = sorted(client.get_metric_history(run_id, "probe_acc"), key=lambda m: m.step)
    assert all(0.0 <= m.value <= 1.0 for m in probe)
    knn = sorted(client.get_metric_history(run_id, cv.KNN_METRIC), key=lambda m: m.step)
    assert [m.value for m in knn] == [r["knn_acc"] for r in result.layers]


def test_summary_metrics(recorded):
    _, config, result, _, _, _, evals = recorded
    metrics = evals[config.epochs].data.metrics
    ami1 = [r["ami_f1"] for r in result.layers]
    assert metrics["best_ami"] == pytest.approx(max(ami1))
    assert metrics["best_layer"] == int(np.argmax(ami1))
    assert metrics["best_probe_acc"] == pytest.approx(max(r["probe_acc"] for r in result.layers))
    assert metrics["best_knn_acc"] == pytest.approx(max(r["knn_acc"] for r in result.layers))
    assert -0.5 < metrics["pixel_ami_f1"] <= 1.0
    assert result.summary == {k: metrics[k] for k in cv.SUMMARY_METRICS}
    assert result.evaluations[1]["best_ami"] == evals[1].data.metrics["best_ami"]
    assert result.bytes_stored and result.bytes_stored > 1_000_000  # a resnet18 checkpoint


def test_run_records_the_share_spent_measuring(recorded):
    """measure_share = the eval runs' embed + cluster + cka + probe seconds (every
    checkpoint measured) over the run's wall time, recorded on the train run."""
    _, _, result, _, _, train, evals = recorded
    stages = ("embed", "cluster", "cka", "probe")
    measuring = sum(r.data.metrics[f"seconds_{k}"] for r in evals.values() for k in stages)
    wall = train.data.metrics["seconds_run"]
    final = evals[max(evals)].data.metrics  # earlier checkpoints' are inside seconds_train
    print({k: round(final[f"seconds_{k}"], 2) for k in stages})
    assert wall >= train.data.metrics["seconds_train"] + sum(final[f"seconds_{k}"] for k in stages)
    assert train.data.metrics["measure_share"] == pytest.approx(measuring / wall)
    assert result.seconds["measure_share"] == train.data.metrics["measure_share"]
    assert list(result.seconds)[-2:] == ["run", "measure_share"]


def test_layer_metrics_parquet(recorded):
    _, config, result, tracker, _, _, evals = recorded
    run_id = evals[config.epochs].info.run_id
    table = pd.read_parquet(_artifact(tracker, run_id, cv.ART_LAYER_METRICS))
    assert tuple(table.columns) == cv.LAYER_METRICS_COLUMNS
    L, S, F = len(result.layers), 4, len(config.factors)
    # ami + purity per (layer, superclass, factor), then probe and kNN accuracy per layer
    assert len(table) == 2 * L * S * F + 2 * L
    assert (table.run_id == run_id).all()
    for metric in (cv.PROBE_METRIC, cv.KNN_METRIC):
        probe = table[table.metric == metric]
        assert len(probe) == L and probe.superclass.isna().all() and probe.factor.isna().all()
    per_sup = table[~table.metric.isin([cv.PROBE_METRIC, cv.KNN_METRIC])]
    assert per_sup.superclass.notna().all() and set(per_sup.superclass) == {0, 1, 2, 3}
    assert set(per_sup.factor) == set(config.factors)
    depth = table.groupby("layer_index")["relative_depth"].first().to_numpy()
    np.testing.assert_allclose(depth, (np.arange(L) + 1) / L)
    layers = json.loads(_artifact(tracker, run_id, cv.ART_LAYERS).read_text())
    assert [e["index"] for e in layers] == list(range(L))
    assert [e["name"] for e in layers] == [r["name"] for r in result.layers]
    assert layers[0]["name"] == "layer1.0" and layers[-1]["name"] == "layer4.1"
    record = json.loads(_artifact(tracker, run_id, cv.ART_DATASET_RECORD).read_text())
    assert record["name"] == "synthetic" and record["eval_images"] == 64


def test_embeddings_and_distances(recorded):
    _, config, result, tracker, _, _, evals = recorded
    run_id = evals[config.epochs].info.run_id
    L = len(result.layers)
    emb = _artifact(tracker, run_id, cv.ART_EMBED_DIR)
    labels = pd.read_parquet(emb / "labels.parquet")
    assert list(labels.columns) == ["eval_index", "superclass", "subclass"] and len(labels) == 64
    widths = []
    for i in range(L):
        x = np.load(emb / f"pooled_{i:02d}.npy", mmap_mode="r")  # memory-mappable
        assert isinstance(x, np.memmap) and x.shape[0] == 64 and x.dtype == np.float32
        widths.append(x.shape[1])
    assert widths == [64, 64, 128, 128, 256, 256, 512, 512]
    dist = _artifact(tracker, run_id, cv.ART_DIST_DIR)
    index = pd.read_parquet(dist / "index.parquet")
    for s in range(4):
        gram = np.load(dist / f"gram_{s:03d}.npy")
        n = int((index.superclass == s).sum())
        assert n == 16 and gram.shape == (L, n, n) and gram.dtype == np.float32
        np.testing.assert_allclose(np.diagonal(gram, axis1=1, axis2=2), 1.0, atol=1e-4)
        assert (labels.superclass.to_numpy()[index[index.superclass == s].eval_index] == s).all()


def test_stored_metrics_match_sklearn_on_the_last_layer(recorded):
    """At 16 px the last block is 1x1, so its pooled vector IS the flattened activation:
    sklearn Ward + AMI on the stored embedding must give the stored per-superclass AMI."""
    _, config, result, tracker, _, _, evals = recorded
    run_id = evals[config.epochs].info.run_id
    L = len(result.layers)
    x = np.load(_artifact(tracker, run_id, f"{cv.ART_EMBED_DIR}/pooled_{L - 1:02d}.npy"))
    labels = pd.read_parquet(_artifact(tracker, run_id, f"{cv.ART_EMBED_DIR}/labels.parquet"))
    table = pd.read_parquet(_artifact(tracker, run_id, cv.ART_LAYER_METRICS))
    x = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    for s in range(4):
        rows = (labels.superclass == s).to_numpy()
        sub = labels.subclass.to_numpy()[rows]
        for f in (1, 3):
            k = min(rows.sum(), 2 * f)
            pred = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x[rows])
            stored = table.query(
                "layer_index == @L - 1 and superclass == @s and factor == @f and metric == 'ami'"
            ).value.item()
            assert stored == pytest.approx(adjusted_mutual_info_score(sub, pred), abs=1e-6)


def test_checkpoints_reload_and_reproduce_logits(recorded):
    """The stored weights rebuild (no network) the model the eval runs measured."""
    from clusterprobe.runners.models import load_checkpoint

    _, config, result, tracker, _, _, evals = recorded
    from clusterprobe.runners.data.registry import load_dataset

    data = load_dataset(config)
    images = torch.stack([data.eval[i][0] for i in range(len(data.eval))])
    L = len(result.layers)
    for epoch, path in ((config.epochs, cv.ART_CHECKPOINT_DIR), (1, "checkpoints/epoch_001")):
        model = load_checkpoint(_artifact(tracker, result.train_run_id, path))
        feats: dict = {}
        handle = model.layer4.register_forward_hook(lambda m, i, o, out=feats: out.update(x=o))
        with torch.no_grad():
            logits = model(images)
        handle.remove()
        pooled = feats["x"].mean(dim=(2, 3))
        run_id = evals[epoch].info.run_id
        stored = np.load(_artifact(tracker, run_id, f"{cv.ART_EMBED_DIR}/pooled_{L - 1:02d}.npy"))
        np.testing.assert_allclose(pooled.numpy(), stored, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            from_stored = model.get_classifier()(torch.from_numpy(stored))
        np.testing.assert_allclose(logits.numpy(), from_stored.numpy(), rtol=1e-4, atol=1e-4)
        assert logits.shape == (64, 4)  # trained on the 4 superclasses
        # test_acc: the model's own superclass accuracy on the eval set, from this forward
        own = float((logits.argmax(1).numpy() == data.eval_labels.superclass).mean())
        assert evals[epoch].data.metrics[cv.TEST_ACC_METRIC] == pytest.approx(own, abs=1e-12)
        assert evals[epoch].data.params[cv.PARAM_TEST_ACC_LABELS] == "superclass"


def test_plot_is_a_png(recorded):
    _, config, _, tracker, _, _, evals = recorded
    png = _artifact(tracker, evals[config.epochs].info.run_id, cv.ART_PLOT)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_exception_in_on_eval_ends_both_runs_failed(store, tiny_config):
    from clusterprobe.runners import pipeline
    from clusterprobe.tracker.tracking import Tracker

    class Pruned(Exception):
        pass

    def on_eval(epoch, summary):
        assert set(summary) == set(cv.SUMMARY_METRICS)
        raise Pruned(f"stop at epoch {epoch}")

    started = []
    config = tiny_config.replace(classes=2, epochs=1, eval_epochs=(), save=())
    with pytest.raises(Pruned):
        pipeline.run(config, store, on_start=started.append, on_eval=on_eval, quiet=True)
    tracker = Tracker(store)
    (train,) = tracker.search_runs(kind="train")
    assert started == [train.info.run_id]  # known to the caller although the run failed
    (ev,) = tracker.search_runs(kind="eval")
    for run in (train, ev):
        assert run.info.status == "FAILED"
        assert run.data.tags[cv.TAG_ERROR] == "Pruned: stop at epoch 1"
    assert ev.data.tags[cv.TAG_PARENT] == train.info.run_id
    assert "best_ami" in ev.data.metrics  # measured and recorded before on_eval ran


def test_dead_layer_is_warned_about_and_recorded(store, tiny_config):
    """A block whose output is all zero (ReLU after a huge negative bias) is measured,
    warned about and recorded as param + tag, never a crash."""
    from clusterprobe.runners import models
    from clusterprobe.runners.data.registry import load_dataset
    from clusterprobe.runners.evalrun import record_measurement
    from clusterprobe.runners.measure import measure, probe_indices
    from clusterprobe.tracker.conventions import PARAM_DEAD_LAYERS, TAG_DEAD_LAYERS
    from clusterprobe.tracker.tracking import Tracker

    config = tiny_config.replace(classes=2, save=())
    data = load_dataset(config)
    model = models.create_model(config, data.num_superclasses, data.image_size)
    with torch.no_grad():
        model.layer1[0].bn2.bias.fill_(-1e6)  # relu(-1e6 + x) == 0 for every image
    probe_index = probe_indices(data.train_labels, config.probe_per_subclass, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meas = measure(model, config, data, "cpu", probe_index=probe_index, quiet=True)
    assert any("layer 0" in str(w.message) for w in caught)  # the engine's DeadLayerWarning
    tracker = Tracker(store)
    with tracker.start_run("eval") as ctx, pytest.warns(RuntimeWarning, match="layer1.0"):
        summary = record_measurement(
            ctx,
            meas,
            labels=data.eval_labels,
            save=(),
            title="",
            probe_train_images=len(probe_index),
        )
    run = tracker.get_run(ctx.run_id)
    assert run.info.status == "FINISHED"
    # Zeros propagate: every later layer sees one constant input, so all are constant.
    dead = run.data.params[PARAM_DEAD_LAYERS].split(",")
    assert dead[0] == "0" and len(dead) == len(meas.layer_names)
    assert json.loads(run.data.tags[TAG_DEAD_LAYERS])["0"] == [0, 1]
    assert np.isfinite(summary["best_ami"])


def test_a_run_measures_at_4x_its_batch_on_the_cpu_only():
    # the batch changes no number (test_eval: `eval --from` at 1x reproduces the run's 4x)
    from clusterprobe.runners.pipeline import measure_batch

    assert measure_batch(32, torch.device("cpu")) == 128
    assert measure_batch(32, "cpu") == 128
    assert measure_batch(32, torch.device("cuda", 1)) == 32  # bf16 training, fp32 embedding
    assert measure_batch(32, "mps") == 32
