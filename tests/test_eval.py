"""`clusterprobe eval`: measure a stored checkpoint or a weights file, record an eval run.

Runs on a copy of the tiny pipeline run's store. The run's own eval runs are the
reference for the consistency checks; sklearn (Ward + AMI on features taken with
plain forward hooks here) is the independent one.
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.tracker import conventions as cv
from safetensors.torch import load_file
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_mutual_info_score
from sklearn.preprocessing import normalize

# The tiny run's data and measurement flags (tests/conftest.py TINY_RUN), for --weights;
# --preprocess dataset: images as the run prepared them (a weights file otherwise gets
# timm's data config of its architecture).
TINY_FLAGS = (
    "--classes 4 --subclasses 2 --train-per-subclass 12 --eval-per-subclass 8 "
    "--image-size 16 --batch-size 32 --probe-per-subclass 6 --preprocess dataset"
).split()
LAYER_METRICS = [f"{m}_f{f}" for m in ("ami", "purity") for f in range(1, 6)] + [
    cv.PROBE_METRIC,
    cv.KNN_METRIC,
]


@pytest.fixture(scope="module")
def stored(tiny_run, tmp_path_factory):
    """(store, tracker, train run id, {checkpoint epoch: the run's own eval run}, config) in a
    copy of the tiny run's store: eval adds runs, the session's store stays as it was."""
    from clusterprobe.tracker.store import local_store
    from clusterprobe.tracker.tracking import Tracker

    shared, config, result = tiny_run
    target = tmp_path_factory.mktemp("eval") / "mlruns"
    shutil.copytree(shared.root, target)
    store = local_store(target)
    tracker = Tracker(store)
    own = {}
    for run_id in result.eval_run_ids:
        run = tracker.get_run(run_id)
        own[int(run.data.params[cv.PARAM_CHECKPOINT_EPOCH])] = run
    return store, tracker, result.train_run_id, own, config


def _eval(store, capsys, *argv) -> str:
    """Run `clusterprobe eval`; the new eval run's id."""
    capsys.readouterr()
    assert cli_main(["eval", *argv, "--store", str(store.root), "--quiet"]) == 0
    out = capsys.readouterr().out
    return next(line.split()[2] for line in out.splitlines() if line.startswith("eval run:"))


def _curves(tracker, run_id) -> dict[str, list[float]]:
    out = {}
    for key in LAYER_METRICS:
        history = sorted(tracker.client.get_metric_history(run_id, key), key=lambda m: m.step)
        out[key] = [m.value for m in history]
    return out


def _assert_same_measurement(tracker, run_id, reference) -> None:
    """Every per-layer metric, summary and per-superclass value equal, exactly."""
    assert _curves(tracker, run_id) == _curves(tracker, reference.info.run_id)
    run = tracker.get_run(run_id)
    for key in cv.SUMMARY_METRICS:
        assert run.data.metrics[key] == reference.data.metrics[key], key
    tables = [
        pd.read_parquet(tracker.artifact_path(r, cv.ART_LAYER_METRICS)).drop(columns="run_id")
        for r in (run_id, reference.info.run_id)
    ]
    pd.testing.assert_frame_equal(*tables)


def test_long_stages_show_progress_unless_quiet(stored, capsys):
    # at 224 px the probe images' forward passes alone take minutes
    store, _, train_id, _, _ = stored
    capsys.readouterr()
    assert cli_main(["eval", "--from", train_id, "--store", str(store.root)]) == 0
    err = capsys.readouterr().err
    assert "embed" in err and "probe images" in err and "image/s" in err
    _eval(store, capsys, "--from", train_id)  # --quiet
    assert "probe images" not in capsys.readouterr().err


@pytest.mark.parametrize("epoch", [None, 1])
def test_eval_from_reproduces_the_runs_own_metrics(stored, capsys, epoch):
    store, tracker, train_id, own, config = stored
    argv = ["--from", train_id] + ([] if epoch is None else ["--epoch", str(epoch)])
    run_id = _eval(store, capsys, *argv)
    epoch = epoch or config.epochs
    run = tracker.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[cv.TAG_PARENT] == train_id
    params, reference = run.data.params, own[epoch].data.params
    assert params[cv.PARAM_MODEL_SOURCE] == "trained"
    assert params[cv.PARAM_CHECKPOINT_EPOCH] == str(epoch)
    for key in ("arch", "seed", "classes", "eval_per_subclass", "dataset_digest", "eval_set"):
        assert params[key] == reference[key], key
    assert params[cv.PARAM_TEST_ACC_LABELS] == "superclass"
    # the run measured at 4x its batch (one forward batch of 64 eval images), eval at the
    # batch itself (two): the same numbers, exactly
    _assert_same_measurement(tracker, run_id, own[epoch])
    report = tracker.artifact_path(run_id, cv.ART_REPORT).read_text()  # eval logs one too
    assert f"eval run {run_id}; model {params['arch']}" in report


def test_eval_weights_reproduces_them_again_under_one_model_run(stored, capsys):
    store, tracker, train_id, own, config = stored
    path = tracker.artifact_path(train_id, cv.ART_WEIGHTS)
    runs = [_eval(store, capsys, "--weights", str(path), "--arch", "resnet18", *TINY_FLAGS)]
    _assert_same_measurement(tracker, runs[0], own[config.epochs])
    runs.append(_eval(store, capsys, "--weights", str(path), "--arch", "resnet18", *TINY_FLAGS))
    parents = {tracker.get_run(r).data.tags[cv.TAG_PARENT] for r in runs}
    (model_id,) = parents  # both evaluations of these weights nest under one model run
    model = tracker.get_run(model_id)
    assert model.data.tags[cv.TAG_KIND] == "model" and model.info.status == "FINISHED"
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.data.params[cv.PARAM_WEIGHTS_SHA256] == sha
    assert model.data.params[cv.PARAM_WEIGHTS_PATH] == str(path)
    assert model.data.params["arch"] == "resnet18" and model.data.params["head_classes"] == "4"
    params = tracker.get_run(runs[0]).data.params
    assert params[cv.PARAM_MODEL_SOURCE] == "weights" and "epochs" not in params
    assert params[cv.PARAM_WEIGHTS_SHA256] == sha and params["labels"] == "superclass"

    from clusterprobe.queries.connect import connect

    with connect(store.root) as analysis:
        sources = dict(analysis.sql("SELECT run_id, model_source FROM evals").fetchall())
    assert sources[runs[0]] == "weights" and sources[own[config.epochs].info.run_id] == "trained"


def test_torch_file_holding_a_state_dict_entry(stored, capsys, tmp_path):
    """A .pt training checkpoint ({"state_dict": ..., "epoch": ...}) loads as the same model."""
    store, tracker, train_id, own, config = stored
    state = load_file(str(tracker.artifact_path(train_id, cv.ART_WEIGHTS)))
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 2}, path)
    run_id = _eval(store, capsys, "--weights", str(path), "--arch", "resnet18", *TINY_FLAGS)
    _assert_same_measurement(tracker, run_id, own[config.epochs])


def _eval_images(config):
    from clusterprobe.runners.data.registry import load_dataset

    data = load_dataset(config)
    return data, torch.stack([data.eval[i][0] for i in range(len(data.eval))])


def test_fp64_equals_sklearn_on_plain_hook_features(stored, capsys):
    """Two layers, features from plain forward hooks on a float64 copy of the checkpoint
    (timm + safetensors, not clusterprobe's loader), flattened, L2-normalised, sklearn Ward
    + AMI per superclass at every factor: equal to the stored values to 1e-6."""
    store, tracker, train_id, own, config = stored
    run_id = _eval(store, capsys, "--from", train_id, "--precision", "fp64")
    run = tracker.get_run(run_id)
    assert run.data.params["precision"] == "fp64" and run.data.params["embed.gram"] == "fp64"
    gram = np.load(tracker.artifact_path(run_id, f"{cv.ART_DIST_DIR}/gram_000.npy"))
    assert gram.dtype == np.float64  # distances/ keeps fp64 Grams as float64

    model = timm.create_model("resnet18", num_classes=4)
    model.load_state_dict(load_file(str(tracker.artifact_path(train_id, cv.ART_WEIGHTS))))
    model = model.double().eval()
    acts = {}
    layers = {1: model.layer1[1], 6: model.layer4[0]}
    for i, module in layers.items():
        module.register_forward_hook(lambda m, a, o, i=i: acts.__setitem__(i, o))
    data, images = _eval_images(config)
    with torch.no_grad():
        model(images.double())
    table = pd.read_parquet(tracker.artifact_path(run_id, cv.ART_LAYER_METRICS))
    ami = table[table.metric == "ami"].set_index(["layer_index", "superclass", "factor"]).value
    sup, sub = data.eval_labels.superclass, data.eval_labels.subclass
    checked = 0
    for li, x in acts.items():
        for s in range(4):
            rows = sup == s
            feats = normalize(x[torch.from_numpy(rows)].reshape(int(rows.sum()), -1).numpy())
            for f in range(1, 6):
                k = min(2 * f, int(rows.sum()))
                pred = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(feats)
                ref = adjusted_mutual_info_score(sub[rows], pred)
                assert ami[(li, s, f)] == pytest.approx(ref, abs=1e-6), (li, s, f)
                checked += 1
    assert checked == 2 * 4 * 5


@pytest.mark.parametrize(("width", "labels"), [(8, "subclass"), (10, None)])
def test_a_head_of_another_width(stored, capsys, tmp_path, width, labels):
    """The head is the file's: 8 outputs = the 8 subclasses (test_acc on them, equal to a
    plain forward's accuracy); 10 outputs predict no label of the set (no test_acc)."""
    store, tracker, train_id, own, config = stored
    torch.manual_seed(1)
    model = timm.create_model("resnet18", num_classes=width).eval()
    path = tmp_path / f"head{width}.pth"
    torch.save(model.state_dict(), path)
    capsys.readouterr()
    argv = ["eval", "--weights", str(path), "--arch", "resnet18", *TINY_FLAGS, "--save", "none"]
    assert cli_main([*argv, "--store", str(store.root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"classifier head: {width} outputs" in out
    run_id = next(line.split()[2] for line in out.splitlines() if line.startswith("eval run:"))
    run = tracker.get_run(run_id)
    parent = tracker.get_run(run.data.tags[cv.TAG_PARENT])
    assert parent.data.params["head_classes"] == str(width)
    if labels is None:
        assert "no test_acc" in out and cv.TEST_ACC_METRIC not in run.data.metrics
        return
    data, images = _eval_images(config)
    with torch.no_grad():
        own_acc = (model(images).argmax(1).numpy() == data.eval_labels.subclass).mean()
    assert run.data.params[cv.PARAM_TEST_ACC_LABELS] == "subclass"
    assert run.data.metrics[cv.TEST_ACC_METRIC] == pytest.approx(own_acc, abs=1e-12)


def _bad_input(case, stored, tmp_path) -> tuple[list[str], str]:
    """(argv, a piece of the expected error line) for one kind of bad input."""
    store, tracker, train_id, own, config = stored
    weights = str(tracker.artifact_path(train_id, cv.ART_WEIGHTS))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    pickle = tmp_path / "corrupt.pt"
    pickle.write_bytes(b"PK\x03\x04 truncated zip")
    return {
        "missing file": (["--weights", str(tmp_path / "no.pt"), "--arch", "resnet18"], "no such"),
        "corrupt safetensors": (["--weights", str(corrupt), "--arch", "resnet18"], "readable"),
        "corrupt pt": (["--weights", str(pickle), "--arch", "resnet18"], "not a readable torch"),
        "another arch": (["--weights", weights, "--arch", "resnet34"], "80 missing"),
        "unknown timm name": (["--weights", weights, "--arch", "resnet81"], "not a supported"),
        "epoch never saved": (["--from", train_id, "--epoch", "5"], "saved: 1, 2"),
        "eval run": (["--from", own[1].info.run_id], f"give its train run, {train_id}"),
        "unknown run": (["--from", "0" * 32], "no such run"),
        "two sources": (["--from", train_id, "--weights", weights], "give one model"),
        "no arch": (["--weights", weights], "needs --arch"),
    }[case]


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "corrupt safetensors",
        "corrupt pt",
        "another arch",
        "unknown timm name",
        "epoch never saved",
        "eval run",
        "unknown run",
        "two sources",
        "no arch",
    ],
)
def test_bad_input_is_one_line_exit_2_and_stores_nothing(stored, capsys, tmp_path, case):
    store, tracker, *_ = stored
    argv, message = _bad_input(case, stored, tmp_path)
    database = (store.root / "mlflow.db").read_bytes()
    files = sorted(p for p in (store.root / "artifacts").rglob("*"))
    capsys.readouterr()
    assert cli_main(["eval", *argv, "--store", str(store.root)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1, captured.err
    assert lines[0].startswith("clusterprobe eval: error: ") and message in lines[0], lines[0]
    assert (store.root / "mlflow.db").read_bytes() == database
    assert sorted(p for p in (store.root / "artifacts").rglob("*")) == files


def test_eval_config_keeps_the_sources_data_unless_the_dataset_is_named():
    from clusterprobe.runners.config import RunConfig
    from clusterprobe.runners.evaluate import EVAL_SAVE, eval_config

    base = RunConfig(classes=4, eval_per_subclass=8, shuffled=True, device="cuda", seed=3)
    kept = eval_config(base, {"eval_per_subclass": 5}, {"precision": "fp64"})
    assert (kept.classes, kept.eval_per_subclass, kept.shuffled) == (4, 5, True)
    assert (kept.precision, kept.seed) == ("fp64", 3)
    assert (kept.device, kept.save) == ("auto", EVAL_SAVE)  # never the source's
    fresh = eval_config(base, {"dataset": "synthetic", "subclasses": 2}, {})
    assert (fresh.classes, fresh.subclasses, fresh.shuffled) == (None, 2, False)


def test_a_crash_after_the_eval_run_opened_is_exit_1_and_failed(stored, capsys, tmp_path):
    """Weights whose activations turn NaN pass every input check; the embed then fails
    inside the open eval run: one line, exit 1, the run FAILED (its model run stays)."""
    store, tracker, train_id, own, config = stored
    state = load_file(str(tracker.artifact_path(train_id, cv.ART_WEIGHTS)))
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    before = {r.info.run_id for r in tracker.search_runs(kind="eval")}
    capsys.readouterr()
    argv = ["eval", "--weights", str(path), "--arch", "resnet18", *TINY_FLAGS]
    assert cli_main([*argv, "--store", str(store.root), "--quiet"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clusterprobe eval: failed: ValueError")
    (new,) = [r for r in tracker.search_runs(kind="eval") if r.info.run_id not in before]
    assert new.info.status == "FAILED" and "NaN" in new.data.tags[cv.TAG_ERROR]
