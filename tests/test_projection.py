"""The projected probe input: streamed per batch, equal to a dense reference of the same matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.data import synthetic
from clusterprobe.runners.engine.embed import layer_features, pooled_features
from clusterprobe.runners.engine.projection import Projector, sparse_projection
from clusterprobe.runners.models import create_model, layer_taps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_matrix_is_li_hastie_churchs_very_sparse_projection_and_seeded():
    d, dim = 40_000, 64
    dense = sparse_projection(d, dim, [7, 2]).to_dense().numpy()
    nonzero = dense[dense != 0]
    density = 1 / math.sqrt(d)  # 1/200
    assert nonzero.size / dense.size == pytest.approx(density, rel=0.05)
    scale = math.sqrt(1 / density) / math.sqrt(dim)  # sqrt(s / dim), s = 1 / density
    np.testing.assert_allclose(np.unique(nonzero), [-scale, scale], rtol=1e-6)
    assert np.mean(nonzero > 0) == pytest.approx(0.5, abs=0.03)
    again = sparse_projection(d, dim, [7, 2]).to_dense().numpy()
    other = sparse_projection(d, dim, [7, 3]).to_dense().numpy()
    assert np.array_equal(dense, again) and not np.array_equal(dense, other)
    # squared norms preserved in expectation: E|Px|^2 = |x|^2
    x = np.random.default_rng(0).normal(size=(200, d))
    ratio = np.sum((x @ dense.T) ** 2, axis=1) / np.sum(x**2, axis=1)
    assert ratio.mean() == pytest.approx(1.0, abs=0.05)


def tiny_model_and_data():
    """A resnet18 at 16 px (eval mode), its 8 taps and the built-in data's 20 eval images."""
    cfg = RunConfig(classes=2, subclasses=2, train_per_subclass=2, eval_per_subclass=5,
                    image_size=16)  # fmt: skip
    data = synthetic.load(cfg)
    model = create_model(cfg, 2, data.image_size).eval()
    return model, layer_taps(model, cfg), data


def test_streamed_projection_equals_the_dense_reference():
    model, taps, data = tiny_model_and_data()
    dim, seed = 100, 4
    got = pooled_features(
        model, taps, data.eval, device="cpu", batch_size=3, reduce=Projector(dim, seed)
    )
    # reference: every eval image's flattened activation held whole, times the dense matrix
    flat: dict[int, torch.Tensor] = {}
    handles = [
        t.module.register_forward_hook(lambda m, i, o, k=t.index: flat.update({k: o.flatten(1)}))
        for t in taps
    ]
    images = torch.stack([data.eval[i][0] for i in range(len(data.eval))])
    with torch.no_grad():
        model(images)
    for h in handles:
        h.remove()
    assert len(got) == len(taps) == 8
    for layer, x in flat.items():
        x = x.double()
        if x.shape[1] <= dim:  # narrow layers (the 1x1 last stage: 512 > 100, so none here)
            want = x.numpy()
        else:
            dense = sparse_projection(x.shape[1], dim, [seed, layer]).to_dense().double()
            want = (x @ dense.T).numpy()
        assert got[layer].shape == (len(data.eval), want.shape[1])
        np.testing.assert_allclose(got[layer], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_pooled_and_projected_features_come_from_one_forward_pass():
    model, taps, data = tiny_model_and_data()
    calls = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    rows = [0, 3, 4, 7, 9, 12, 15, 18, 19]
    pooled, projected = layer_features(
        model, taps, data.eval, rows, reducers=(None, Projector(50, 1)), device="cpu",
        batch_size=4,
    )  # fmt: skip
    assert calls == [4, 4, 1]  # each image through the model once, for both
    handle.remove()
    alone = pooled_features(model, taps, data.eval, rows, device="cpu", batch_size=4)
    proj_alone = pooled_features(
        model, taps, data.eval, rows, device="cpu", batch_size=4, reduce=Projector(50, 1)
    )
    assert len(pooled) == len(projected) == len(taps)
    for a, b in zip(pooled + projected, alone + proj_alone, strict=True):
        assert a.shape[0] == len(rows)
        np.testing.assert_array_equal(a, b)
    assert pooled[0].shape[1] == 64 and projected[0].shape[1] == 50


def test_a_layer_no_wider_than_the_dimension_is_kept_flat():
    x = torch.randn(3, 2, 2, 5)
    out = Projector(20, 0)(1, x)
    assert torch.equal(out, x.reshape(3, -1))
    with pytest.raises(ValueError, match="projection dimension 0"):
        Projector(0, 0)
