"""The built-in procedural dataset: sizes, seeding, the paper's shuffle, pixel baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data import synthetic
from clusterprobe.runners.data.registry import load_dataset
from clusterprobe.tracker.errors import UsageError
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_mutual_info_score

TINY = dict(classes=3, subclasses=2, train_per_subclass=5, eval_per_subclass=3, image_size=16)


def test_shapes_and_labels():
    data = synthetic.load(RunConfig(**TINY))
    assert len(data.train) == 30 and len(data.eval) == 18 and len(data.train_plain) == 30
    image, sup, sub = data.eval[4]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert (sup, sub) == (0, 1)
    assert data.num_superclasses == 3 and data.num_subclasses == 6
    assert data.groups() == [[0, 1], [2, 3], [4, 5]]
    np.testing.assert_array_equal(data.eval_labels.subclass, np.repeat(np.arange(6), 3))
    np.testing.assert_array_equal(data.eval_labels.superclass, np.repeat(np.arange(3), 6))
    assert data.record["groups"] == [[0, 1], [2, 3], [4, 5]]
    assert data.image_size == 16 and not data.shuffled


def test_normalised_with_train_statistics():
    data = synthetic.load(RunConfig(**{**TINY, "train_per_subclass": 40}))
    x = data.train_plain.images
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3)).numpy(), 1.0, atol=1e-3)


def test_seeded_and_deterministic():
    a = synthetic.load(RunConfig(**TINY))
    synthetic._generate.cache_clear()
    b = synthetic.load(RunConfig(**TINY))
    assert torch.equal(a.train_plain.images, b.train_plain.images)
    assert torch.equal(a.eval.images, b.eval.images)
    c = synthetic.load(RunConfig(**TINY, data_seed=1))
    assert not torch.equal(a.eval.images, c.eval.images)
    # Training seed does not touch the data.
    d = synthetic.load(RunConfig(**TINY, seed=7))
    assert torch.equal(a.eval.images, d.eval.images)


def test_shuffled_recipe_matches_hand_computed_randomstate():
    # np.random.RandomState(2).shuffle(list(range(32))), written out once by hand.
    expected = [20, 0, 23, 12, 29, 9, 1, 21, 14, 16, 25, 19, 10, 4, 6, 3,
                27, 5, 30, 24, 17, 2, 7, 28, 26, 18, 11, 22, 31, 13, 15, 8]  # fmt: skip
    natural = [list(range(4 * s, 4 * s + 4)) for s in range(8)]
    groups = synthetic.shuffled_groups(natural)
    assert groups == [expected[i : i + 4] for i in range(0, 32, 4)]
    assert synthetic.shuffled_groups([[0, 1], [2, 3], [4, 5]]) == [[4, 1], [3, 2], [5, 0]]


def test_shuffled_variant_relabels_superclasses_only():
    cfg = RunConfig(**TINY)
    nat = load_dataset(cfg)
    shu = load_dataset(cfg.replace(dataset="synthetic-shuffled"))
    assert shu.shuffled and shu.record["shuffle_seed"] == 2
    assert shu.groups() == [[1, 4], [2, 3], [0, 5]]  # groups() sorts ids within a group
    assert shu.record["groups"] == [[4, 1], [3, 2], [5, 0]]
    assert torch.equal(nat.eval.images, shu.eval.images)
    np.testing.assert_array_equal(nat.eval_labels.subclass, shu.eval_labels.subclass)
    sup_of = {4: 0, 1: 0, 3: 1, 2: 1, 5: 2, 0: 2}
    np.testing.assert_array_equal(
        shu.train_labels.superclass, [sup_of[k] for k in shu.train_labels.subclass]
    )
    assert shu.digest() != nat.digest()


def test_large_hierarchy_has_distinct_traits():
    data = synthetic.load(
        RunConfig(
            classes=16, subclasses=8, train_per_subclass=2, eval_per_subclass=2, image_size=16
        )
    )
    assert data.num_subclasses == 128 and len(set(data.subclass_names)) == 128
    assert len(set(data.superclass_names)) == 16
    assert len(data.eval) == 256


def test_train_split_augments_by_translation_only():
    data = synthetic.load(RunConfig(**TINY))
    index = torch.arange(6)
    plain, _, _ = data.train_plain.batch(index)
    moved, sup, sub = data.train.batch(index, torch.Generator().manual_seed(0))
    assert moved.shape == plain.shape and not torch.equal(moved, plain)
    assert sup.tolist() == [0] * 6 and sub.tolist() == [0] * 5 + [1]


def test_raw_pixels_do_not_cluster_subclasses():
    # The pixel baseline of the protocol: Ward inside each superclass, AMI ~ 0.
    data = synthetic.load(RunConfig(train_per_subclass=2, eval_per_subclass=30, image_size=32))
    x = data.eval.images.flatten(1).numpy().astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sup, sub = data.eval_labels.superclass, data.eval_labels.subclass
    scores = []
    for s in range(data.num_superclasses):
        rows = sup == s
        pred = AgglomerativeClustering(n_clusters=4, linkage="ward").fit_predict(x[rows])
        scores.append(adjusted_mutual_info_score(sub[rows], pred))
    assert np.mean(scores) < 0.1


@pytest.mark.parametrize("field,value", [("classes", 100), ("subclasses", 1), ("image_size", 4)])
def test_out_of_range_sizes_are_usage_errors(field, value):
    with pytest.raises(UsageError, match=field.replace("_", "-")):
        synthetic.load(RunConfig(**{**TINY, field: value}))


def test_describe():
    info = synthetic.describe()
    assert info["superclasses"] == 8 and info["subclasses_per_superclass"] == 4
    assert info["image_size"] == 32 and info["max_superclasses"] >= 16
