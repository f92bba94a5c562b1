"""`eval --pretrained NAME`: timm's weights from the Hugging Face cache, never the network.

The cache is a temporary folder in huggingface_hub's layout holding random-init weights
of timm's tiny test models (conftest ``hf_cache``); every test runs with sockets refused
(``no_network``), so a network attempt fails it even where the code swallowed the error.
"""

from __future__ import annotations

import hashlib

import pytest
import timm
import torch
from clusterprobe.runners.cli import main as cli_main
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.tracking import Tracker
from safetensors.torch import load_file
from timm.data import resolve_data_config

# 2 superclasses x 2 subclasses, 4 eval and 2 probe images each: a few seconds at 160 px.
SMALL = (
    "--classes 2 --subclasses 2 --train-per-subclass 2 --eval-per-subclass 4 "
    "--probe-per-subclass 2 --batch-size 16 --save none --quiet"
).split()


def _eval(store, capsys, *argv) -> str:
    capsys.readouterr()
    assert cli_main(["eval", *argv, *SMALL, "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    return next(line.split()[2] for line in out.splitlines() if line.startswith("eval run:"))


def _cached_file(cache, name):
    return next((cache / f"models--timm--{name}").rglob("model.safetensors"))


def test_pretrained_is_read_from_the_cache_and_prepared_as_timm_says(
    store, hf_cache, no_network, capsys
):
    name = "test_convnext.r160_in1k"
    run_id = _eval(store, capsys, "--pretrained", name)
    tracker = Tracker(store)
    run = tracker.get_run(run_id)
    params = run.data.params
    assert run.info.status == "FINISHED" and params[cv.PARAM_MODEL_SOURCE] == "pretrained"
    assert params["arch"] == name and params["family"] == "features"

    # The recorded data config is timm's for this model (independent: resolve_data_config).
    want = resolve_data_config(model=timm.create_model(name))
    assert params[cv.PARAM_INPUT_SOURCE] == "model"
    assert int(params[cv.PARAM_INPUT_SIZE]) == want["input_size"][-1] == 160
    assert tuple(map(float, params[cv.PARAM_INPUT_MEAN].split(","))) == want["mean"]
    assert tuple(map(float, params[cv.PARAM_INPUT_STD].split(","))) == want["std"]
    assert params[cv.PARAM_INPUT_INTERPOLATION] == want["interpolation"]
    assert float(params[cv.PARAM_INPUT_CROP_PCT]) == want["crop_pct"]
    assert params[cv.PARAM_INPUT_CROP_MODE] == want["crop_mode"]

    # Nested under one model run holding the cached file's fingerprint; a second
    # evaluation of the same weights nests under it too.
    path = _cached_file(hf_cache, name)
    model = tracker.get_run(run.data.tags[cv.TAG_PARENT])
    assert model.data.tags[cv.TAG_KIND] == "model"
    assert (
        model.data.params[cv.PARAM_WEIGHTS_SHA256] == hashlib.sha256(path.read_bytes()).hexdigest()
    )
    assert model.data.params[cv.PARAM_PRETRAINED] == name
    assert model.data.params[cv.PARAM_HF_HUB_ID] == f"timm/{name}"
    again = _eval(store, capsys, "--pretrained", name, "--image-size", "32")
    assert tracker.get_run(again).data.tags[cv.TAG_PARENT] == model.info.run_id
    assert tracker.get_run(again).data.params[cv.PARAM_INPUT_SIZE] == "32"


def test_the_loaded_model_holds_the_cached_weights(hf_cache, no_network):
    """Every tensor of the file is in the model (nothing left at its random init)."""
    from clusterprobe.runners.config import RunConfig
    from clusterprobe.runners.data.registry import load_dataset
    from clusterprobe.runners.sources import PretrainedSource

    name = "test_convnext.r160_in1k"
    source = PretrainedSource(name)
    config = source.base_config().replace(classes=2, subclasses=2, image_size=32)
    assert config == RunConfig(
        arch=name, preprocess="model", classes=2, subclasses=2, image_size=32
    )
    loaded = source.load(config, load_dataset(config), "cpu")
    state = loaded.model.state_dict()
    stored = load_file(str(_cached_file(hf_cache, name)))
    assert set(stored) == set(state)
    assert all(torch.equal(state[k], v) for k, v in stored.items())


def test_a_vit_at_another_size_gets_its_position_embeddings_resampled(
    store, hf_cache, no_network, capsys
):
    run_id = _eval(store, capsys, "--pretrained", "test_vit.r160_in1k", "--image-size", "32")
    run = Tracker(store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["family"] == "vit"


def test_an_empty_cache_is_one_line_exit_2_and_no_network(
    store, tmp_path, monkeypatch, no_network, capsys
):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    database = (store.root / "mlflow.db").read_bytes()
    capsys.readouterr()
    assert cli_main(["eval", "--pretrained", "resnet18.a1_in1k", "--store", str(store.root)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1, captured.err
    assert "not in the Hugging Face cache" in lines[0] and "--download" in lines[0]
    assert str(tmp_path / "empty" / "hub") in lines[0]
    assert (store.root / "mlflow.db").read_bytes() == database


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--pretrained", "resnet81"], "not a supported timm model"),
        (["--pretrained", "resnet18.no_tag"], "tags: resnet18.a1_in1k"),
        (["--pretrained", "test_vit.r160_in1k", "--arch", "resnet18"], "model is its own"),
    ],
)
def test_bad_names_are_one_line_exit_2(store, hf_cache, no_network, capsys, argv, message):
    capsys.readouterr()
    assert cli_main(["eval", *argv, "--store", str(store.root)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_offline_guard_switches_huggingface_hub_offline_and_back():
    from clusterprobe.runners.pretrained import offline
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    with offline():
        assert constants.is_offline_mode()
    assert constants.HF_HUB_OFFLINE == before
