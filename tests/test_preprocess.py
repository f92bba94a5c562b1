"""Preprocessing: the dataset's own recipe, or timm's data config of the model, then overrides.

References are timm's own: ``resolve_data_config`` for the recipe and
``create_transform`` for the images it produces.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data import transforms
from clusterprobe.runners.data.preprocess import resolve
from clusterprobe.runners.data.registry import load_dataset
from clusterprobe.tracker.errors import UsageError
from PIL import Image
from timm.data import create_transform, resolve_data_config

TINY = dict(classes=2, subclasses=2, train_per_subclass=2, eval_per_subclass=3)


def _timm_config(name: str) -> dict:
    with torch.device("meta"):
        return resolve_data_config(model=timm.create_model(name))


@pytest.mark.parametrize(
    "arch", ["resnet18.a1_in1k", "convnext_atto", "deit_tiny_patch16_224", "test_vit.r160_in1k"]
)
def test_the_model_recipe_is_timms_data_config(arch):
    pre = resolve(RunConfig(arch=arch, preprocess="model"), native_size=32)
    want = _timm_config(arch)
    assert (pre.input_size, pre.mean, pre.std) == (
        want["input_size"][-1],
        want["mean"],
        want["std"],
    )
    assert (pre.interpolation, pre.crop_pct, pre.crop_mode) == (
        want["interpolation"],
        want["crop_pct"],
        want["crop_mode"],
    )


def test_the_dataset_recipe_is_the_papers_and_overrides_win():
    big = resolve(RunConfig(), native_size=224)
    assert (big.source, big.input_size, big.resize_size(), big.interpolation) == (
        "dataset",
        224,
        256,
        "bilinear",
    )
    assert (big.mean, big.std) == transforms.normalisation("resnet18")
    assert resolve(RunConfig(), native_size=32).crop_pct == 1.0
    over = RunConfig(
        arch="resnet18.a1_in1k",
        preprocess="model",
        image_size=64,
        mean=(0.5, 0.5, 0.5),
        interpolation="bilinear",
        crop_pct=1.0,
    )
    pre = resolve(over, native_size=32)
    assert (pre.input_size, pre.mean, pre.interpolation, pre.crop_pct) == (
        64,
        (0.5, 0.5, 0.5),
        "bilinear",
        1.0,
    )
    assert pre.std == _timm_config("resnet18.a1_in1k")["std"]  # not overridden: timm's


def test_dataset_recipe_transform_is_unchanged_from_the_papers(tmp_path):
    """The recipe as data rebuilds the transform datasets always used, bit for bit."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (300, 260, 3), dtype=np.uint8))
    for size in (32, 224):
        mean, std = transforms.normalisation("resnet18")
        old = transforms.eval_transform(size, mean, std)(image)
        new = resolve(RunConfig(), native_size=size).eval_transform()(image)
        assert torch.equal(old, new), size


def test_synthetic_images_through_the_model_recipe_are_timms_transform_of_the_renders():
    name = "test_convnext.r160_in1k"
    raw = load_dataset(RunConfig(**TINY, mean=(0, 0, 0), std=(1, 1, 1)))  # renders as they are
    data = load_dataset(RunConfig(**TINY, arch=name, preprocess="model"))
    assert data.image_size == 160 and data.preprocess.source == "model"
    timm_tf = create_transform(**_timm_config(name), is_training=False)
    for i in (0, len(data.eval) - 1):
        want = timm_tf(raw.eval[i][0].clamp(0, 1))  # a decoded image lies in [0, 1]
        torch.testing.assert_close(data.eval[i][0], want, rtol=0, atol=1e-6)
    x, *_ = data.train_plain.batch(torch.arange(2))
    assert x.shape == (2, 3, 160, 160)


def test_folder_images_through_the_model_recipe_are_timms_transform(tmp_path):
    name = "test_convnext.r160_in1k"
    rng = np.random.default_rng(1)
    for sup in ("a", "b"):
        for sub in ("x", "y"):
            folder = tmp_path / sup / f"{sup}{sub}"
            folder.mkdir(parents=True)
            for k in range(3):
                pixels = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{k}.png")
    config = RunConfig(dataset="folder", data_dir=str(tmp_path), arch=name, preprocess="model")
    data = load_dataset(config)
    timm_tf = create_transform(**_timm_config(name), is_training=False)
    path = data.eval.paths[0]
    want = timm_tf(Image.open(path).convert("RGB"))
    torch.testing.assert_close(data.eval[0][0], want, rtol=0, atol=1e-6)
    assert data.record["transforms"]["crop_pct"] == 0.95


def test_resize_options_on_synthetic_renders_need_the_model_recipe():
    with pytest.raises(UsageError, match="--interpolation, --crop-pct: synthetic images"):
        load_dataset(RunConfig(**TINY, interpolation="bicubic", crop_pct=0.9))


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"preprocess": "timm"}, "--preprocess 'timm'"),
        ({"mean": (0.5, 0.5)}, "--mean 0.5,0.5: give 3"),
        ({"std": (0.5, 0.5, 0.0)}, "all > 0"),
        ({"crop_pct": 1.5}, "--crop-pct 1.5"),
        ({"interpolation": "lanczos"}, "--interpolation 'lanczos'"),
    ],
)
def test_bad_preprocessing_values(changes, message):
    with pytest.raises(UsageError, match=message):
        RunConfig(**changes).validate()
