"""--augment paper|standard|none: the training transforms, against torchvision and timm."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data.preprocess import image_transforms
from conftest import ONE_EPOCH_RUN
from PIL import Image
from torchvision import transforms as T

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _photo(w=300, h=400) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _seeded(fn, seed=5):
    torch.manual_seed(seed)
    random.seed(seed)
    return fn()


def test_paper_is_a_random_resized_crop_of_5_to_100_percent_and_a_flip_in_0_1():
    img = _photo()
    tf = image_transforms(RunConfig(augment="paper", image_size=224), 224)
    assert tf.pre.mean == (0.0, 0.0, 0.0) and tf.pre.std == (1.0, 1.0, 1.0)
    ref = T.Compose(
        [
            T.RandomResizedCrop(224, scale=(0.05, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
        ]
    )
    for seed in range(3):
        got = _seeded(lambda: tf.train(img), seed)
        assert torch.allclose(got, _seeded(lambda: ref(img), seed))
        assert got.shape == (3, 224, 224) and 0 <= got.min() and got.max() <= 1
    # evaluation: resize 256, centre crop 224, pixels in [0, 1] as well
    ref_eval = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    assert torch.allclose(tf.eval(img), ref_eval(img), atol=1e-6)
    assert tf.record["augment"] == "paper" and "scale (0.05, 1.0)" in tf.record["train"]


def test_paper_keeps_a_given_mean_and_std():
    tf = image_transforms(RunConfig(augment="paper", mean=(0.5,) * 3, std=(0.25,) * 3), 32)
    assert tf.pre.mean == (0.5,) * 3 and tf.pre.std == (0.25,) * 3


def test_standard_is_timms_training_transform():
    from timm.data import create_transform

    img = _photo()
    tf = image_transforms(RunConfig(augment="standard", image_size=224), 224)
    ref = create_transform(224, is_training=True, mean=tf.pre.mean, std=tf.pre.std)
    for seed in range(3):
        assert torch.equal(_seeded(lambda: tf.train(img), seed), _seeded(lambda: ref(img), seed))


def test_none_trains_on_the_evaluation_transform():
    img = _photo()
    tf = image_transforms(RunConfig(augment="none", image_size=224), 224)
    assert torch.equal(tf.train(img), tf.eval(img))


@pytest.mark.parametrize("augment", ["default", "none", "paper", "standard"])
def test_the_built_in_set_keeps_its_translation_unless_told(augment):
    from clusterprobe.runners.data.registry import load_dataset

    config = RunConfig(
        augment=augment, classes=2, subclasses=2, train_per_subclass=4, eval_per_subclass=2
    )
    data = load_dataset(config)
    assert data.train.shift == (2 if augment == "default" else 0)
    assert data.record["augment"] == augment
    images, *_ = data.train.batch(torch.arange(8), torch.Generator().manual_seed(0))
    assert images.shape == data.eval.batch(torch.arange(8))[0].shape
    if augment == "none":
        assert torch.equal(images, data.train_plain.batch(torch.arange(8))[0])
    if augment == "paper":  # renders clipped to [0, 1], no mean/std, for training and eval
        assert 0 <= images.min() and images.max() <= 1
        ev = data.eval.batch(torch.arange(8))[0]
        assert 0 <= ev.min() and ev.max() <= 1 and data.preprocess.mean == (0.0,) * 3
    if augment == "standard":  # timm's normalisation with the set's own statistics
        plain = data.train_plain.batch(torch.arange(8))[0]
        assert abs(float(plain.mean())) < 1.0 and plain.min() < 0


@pytest.mark.parametrize("augment", ["paper", "standard", "none"])
def test_each_augmentation_trains_one_epoch(store, augment):
    from clusterprobe.runners import pipeline
    from clusterprobe.tracker.tracking import Tracker

    config = RunConfig(augment=augment, **ONE_EPOCH_RUN)
    result = pipeline.run(config, store, quiet=True)
    run = Tracker(store).get_run(result.train_run_id)
    assert run.info.status == "FINISHED" and run.data.params["augment"] == augment
    assert np.isfinite(result.history[0]["train_loss"])
