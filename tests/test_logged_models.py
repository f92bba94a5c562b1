"""MLflow-native records: the logged model, the Model Registry, datasets as run inputs.

Reads the tiny pipeline run (``tiny_run`` in conftest.py, read-only); the registry tests
write into a copy of its store. The logged model is loaded through MLflow's own API
alone and compared with clusterprobe's loader.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from clusterprobe.runners.checkpoints import load_stored_model
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.runners.study.report import registry_pick
from clusterprobe.tracker import conventions as cv
from mlflow.tracking import MlflowClient

BUDGET = 200_000  # bytes a train run's logged model may add to the store


@pytest.fixture(scope="module")
def recorded(tiny_run):
    from clusterprobe.tracker.tracking import Tracker

    store, config, result = tiny_run
    client = MlflowClient(tracking_uri=store.tracking_uri)
    train = client.get_run(result.train_run_id)
    evals = {
        int(r.data.params[cv.PARAM_CHECKPOINT_EPOCH]): r
        for r in (client.get_run(i) for i in result.eval_run_ids)
    }
    return store, config, result, Tracker(store), client, train, evals


@pytest.fixture
def fluent(tiny_run, monkeypatch):
    """MLflow's fluent API (mlflow.get_run, mlflow.pyfunc.load_model) on the tiny run's store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_run[0].tracking_uri)


@pytest.fixture
def store_copy(tiny_run, tmp_path):
    """A writable copy of the tiny run's store (the registry writes into it)."""
    from clusterprobe.tracker.store import local_store

    store, _, result = tiny_run
    # Embeddings and Grams are not read here: leave the bulk of the store behind.
    shutil.copytree(store.root, tmp_path / "mlruns", ignore=shutil.ignore_patterns("*.npy"))
    copy = local_store(tmp_path / "mlruns")
    return copy, result


def _model_files(tracker, model_id) -> dict[str, int]:
    from clusterprobe.tracker.logged_models import model_folder

    root = model_folder(tracker, model_id)
    return {
        p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()
    }


# --- the logged model -----------------------------------------------------------------------


def test_train_run_logs_its_model_once(recorded, fluent):
    store, _, result, tracker, client, train, _ = recorded
    found = mlflow.search_logged_models(
        experiment_ids=[train.info.experiment_id],
        filter_string=f"source_run_id = '{train.info.run_id}'",
        output_format="list",
    )
    assert [m.model_id for m in found] == [result.model_id]
    model = found[0]
    assert str(model.status) == "READY" and model.name == cv.LOGGED_MODEL_NAME
    assert train.data.tags[cv.TAG_MODEL_ID] == model.model_id
    assert [o.model_id for o in train.outputs.model_outputs] == [model.model_id]
    assert model.params["arch"] == "resnet18" and model.params["seed"] == "0"
    # The weights stay in checkpoint/ only: the model's folder is small files.
    files = _model_files(tracker, model.model_id)
    assert not any(name.endswith(".safetensors") for name in files)
    assert sum(files.values()) < BUDGET, files
    assert "input_example.json" in files  # 16 px: an example fits the budget
    requirements = (Path(model.artifact_location) / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in requirements} >= {"clusterprobe", "torch", "timm", "mlflow"}


def test_pyfunc_gives_the_logits_of_clusterprobes_loader(recorded, fluent):
    store, _, result, tracker, _, _, _ = recorded
    served = mlflow.pyfunc.load_model(f"models:/{result.model_id}")
    images = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    logits = served.predict(images)
    own, cfg = load_stored_model(tracker, result.train_run_id, "cpu")
    with torch.no_grad():
        expected = own(torch.from_numpy(images)).numpy()
    assert logits.shape == (5, cfg["num_classes"])
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-6)
    # The signature is the contract: other image sizes are refused by MLflow itself.
    with pytest.raises(Exception, match="shape"):
        served.predict(images[:, :, :8, :8])


# --- datasets as run inputs -----------------------------------------------------------------


def test_train_and_eval_runs_list_their_dataset(recorded, fluent):
    _, _, result, _, client, train, evals = recorded
    (given,) = mlflow.get_run(train.info.run_id).inputs.dataset_inputs
    assert given.dataset.name == "synthetic" and given.dataset.source_type == "code"
    assert [(t.key, t.value) for t in given.tags] == [("mlflow.data.context", "train")]
    profile = json.loads(given.dataset.profile)
    assert profile["superclasses"] == 4 and profile["train_images"] == 96
    assert len(profile["classes"]) == 4 and all(len(v) == 2 for v in profile["classes"].values())
    assert profile["class_list_digest"] == train.data.params["dataset_digest"]
    for run in evals.values():
        (seen,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
        assert seen.dataset.digest == given.dataset.digest
        assert seen.tags[0].value == "eval"
    # Runs on the same data: found by the digest.
    same = client.search_runs(
        [train.info.experiment_id], f"dataset.digest = '{given.dataset.digest}'"
    )
    assert {r.info.run_id for r in same} == {result.train_run_id, *result.eval_run_ids}


def test_dataset_digest_covers_counts_not_paths():
    from clusterprobe.runners.data.record import content_digest

    record = {"name": "x", "train_images": 10, "options": {"data_dir": "/a", "seed": 1}}
    moved = {**record, "options": {"data_dir": "/elsewhere", "seed": 1}}
    more = {**record, "train_images": 11}
    assert content_digest(record) == content_digest(moved) != content_digest(more)


def test_final_eval_links_its_summary_to_the_model(recorded):
    _, config, result, _, client, _, evals = recorded
    final, early = evals[config.epochs], evals[1]
    assert [m.model_id for m in final.inputs.model_inputs] == [result.model_id]
    assert not early.inputs.model_inputs  # epoch 1 is another model
    metrics = {m.key: m for m in client.get_logged_model(result.model_id).metrics}
    assert set(metrics) >= {"best_ami", "best_layer", "test_acc"}
    assert not any(k.startswith(("ami_f", "seconds_")) for k in metrics)
    assert metrics["best_ami"].value == final.data.metrics["best_ami"]
    assert metrics["best_ami"].run_id == final.info.run_id
    (given,) = final.inputs.dataset_inputs
    assert (metrics["best_ami"].dataset_name, metrics["best_ami"].dataset_digest) == (
        given.dataset.name,
        given.dataset.digest,
    )


# --- the registry ---------------------------------------------------------------------------


def test_register_a_train_run_or_its_final_eval(store_copy, capsys):
    store, result = store_copy
    root = ["--store", str(store.root)]
    final_eval = result.eval_run_ids[-1]
    assert cli_main(["register", result.train_run_id, "--name", "tiny", *root]) == 0
    assert "registered tiny version 1" in capsys.readouterr().out
    assert cli_main(["register", final_eval, "--name", "tiny", *root]) == 0
    client = MlflowClient(tracking_uri=store.tracking_uri)
    versions = sorted(client.search_model_versions("name = 'tiny'"), key=lambda v: int(v.version))
    assert [(str(v.version), v.run_id) for v in versions] == [
        ("1", result.train_run_id),
        ("2", result.train_run_id),
    ]
    assert {v.source for v in versions} == {f"models:/{result.model_id}"}


@pytest.mark.parametrize(
    ("which", "name", "message"),
    [
        ("early_eval", "tiny", "measured the checkpoint of epoch 1"),
        ("train", "a/b", "--name 'a/b'"),
        ("unknown", "tiny", "no such run"),
    ],
)
def test_register_bad_input_is_one_line_and_stores_nothing(
    store_copy, capsys, which, name, message
):
    store, result = store_copy
    run_id = {
        "early_eval": result.eval_run_ids[0],
        "train": result.train_run_id,
        "unknown": "0" * 32,
    }[which]
    assert cli_main(["register", run_id, "--name", name, "--store", str(store.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert MlflowClient(tracking_uri=store.tracking_uri).search_registered_models() == []


def test_register_logs_the_model_of_a_run_stored_before_logged_models(store_copy, monkeypatch):
    from clusterprobe.runners.register import register_run
    from clusterprobe.tracker.tracking import Tracker

    store, result = store_copy
    tracker = Tracker(store)
    tracker.client.delete_tag(result.train_run_id, cv.TAG_MODEL_ID)  # as an older store has it
    version = register_run(tracker, result.train_run_id, "old")
    assert version.model_id != result.model_id
    assert tracker.get_run(result.train_run_id).data.tags[cv.TAG_MODEL_ID] == version.model_id
    assert "input_example.json" not in _model_files(tracker, version.model_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    served = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    assert served.predict(np.zeros((1, 3, 16, 16), np.float32)).shape == (1, 4)


def test_register_best_of_a_pareto_front_is_best_on_the_first_objective():
    front = [
        {"number": 3, "values": {"best_ami": 0.5, "best_probe_acc": 0.9}},
        {"number": 1, "values": {"best_ami": 0.7, "best_probe_acc": 0.2}},
        {"number": 2, "values": {"best_ami": 0.7, "best_probe_acc": 0.4}},
    ]
    maxmax = [("best_ami", "maximize"), ("best_probe_acc", "maximize")]
    assert registry_pick(front, maxmax)["number"] == 1  # tie on best_ami: lowest number
    assert registry_pick(front, [("best_ami", "minimize"), *maxmax[1:]])["number"] == 3
    assert registry_pick(front, maxmax[::-1])["number"] == 3
    assert registry_pick([], maxmax) is None


def test_postgresql_store_logs_loads_and_registers(postgres_url, tmp_path, monkeypatch):
    """The same records on PostgreSQL (artifacts in a shared folder): a tiny model, no data."""
    from clusterprobe.runners import logged_model, models
    from clusterprobe.runners.checkpoints import log_checkpoint
    from clusterprobe.runners.config import RunConfig
    from clusterprobe.runners.register import register_run
    from clusterprobe.tracker.datasets import DatasetInfo, log_dataset
    from clusterprobe.tracker.store import resolve_store
    from clusterprobe.tracker.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(resolve_store(None, postgres_url, artifact_root=str(tmp_path / "art")))
    config = RunConfig(arch="resnet10t", image_size=16, epochs=1)
    cfg = models.model_config(config, 3, 16)
    net = models.create_model(config, 3, 16).eval()
    info = DatasetInfo("toy", "abc123", {"dataset": "toy"}, {"images": 6}, {"label": "long"})
    with tracker.start_run("train", params={"epochs": 1}) as ctx:
        log_dataset(ctx, info, "train")
        sha256 = log_checkpoint(ctx, net, cfg)
        logged_model.log_train_model(
            tracker, ctx.run_id, cfg, weights_sha256=sha256, params={"epochs": "1"}, step=1
        )
    version = register_run(tracker, ctx.run_id, "pg-model")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres_url)
    (given,) = mlflow.get_run(ctx.run_id).inputs.dataset_inputs
    assert (given.dataset.name, given.dataset.digest) == ("toy", "abc123")
    served = mlflow.pyfunc.load_model(f"models:/pg-model/{version.version}")
    images = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(served.predict(images), expected, rtol=0, atol=1e-6)


def test_a_replaced_checkpoint_does_not_load_as_the_logged_model(store_copy, monkeypatch):
    from clusterprobe.tracker.tracking import Tracker

    store, result = store_copy
    folder = Tracker(store).artifact_path(result.train_run_id, cv.ART_CHECKPOINT_DIR)
    weights = Path(folder) / cv.CHECKPOINT_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    with pytest.raises(ValueError, match="not the one this model was logged with"):
        mlflow.pyfunc.load_model(f"models:/{result.model_id}")
