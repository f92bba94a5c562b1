"""Losses against their papers' formulas, written out here; SupCon's head reads detached features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.losses import make_objective, squared_loss, supcon_loss
from clusterprobe.runners.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_squared_loss_is_hui_and_belkins_formula():
    rng = np.random.default_rng(0)
    logits, target = rng.normal(size=(5, 4)) * 3, np.array([0, 3, 1, 1, 2])
    k, m = 9.0, 60.0
    # l(x, y) = 1/C [k (f_y - M)^2 + sum_{j != y} f_j^2], averaged over the batch
    ref = np.mean(
        [
            (k * (row[y] - m) ** 2 + sum(row[j] ** 2 for j in range(4) if j != y)) / 4
            for row, y in zip(logits, target, strict=True)
        ]
    )
    got = squared_loss(torch.tensor(logits), torch.tensor(target), k, m)
    assert float(got) == pytest.approx(ref, rel=1e-12)
    # through the objective, with the config's k and M
    cfg = RunConfig(loss="squared", squared_k=2.0, squared_m=5.0)
    linear = torch.nn.Linear(3, 4).double()
    x = torch.tensor(rng.normal(size=(5, 3)))
    loss, out, _ = make_objective(cfg, linear)(linear, x, torch.tensor(target))
    f = out.detach().numpy()
    ref = np.mean(
        [
            (2 * (row[y] - 5) ** 2 + sum(row[j] ** 2 for j in range(4) if j != y)) / 4
            for row, y in zip(f, target, strict=True)
        ]
    )
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-6)  # the loss is taken in fp32


def test_label_smoothing_is_the_smoothed_cross_entropy():
    rng = np.random.default_rng(1)
    linear = torch.nn.Linear(3, 5).double()
    x, y = torch.tensor(rng.normal(size=(6, 3))), torch.tensor([0, 1, 4, 4, 2, 3])
    eps = 0.2
    loss, logits, _ = make_objective(RunConfig(label_smoothing=eps), linear)(linear, x, y)
    logp = torch.log_softmax(logits.detach(), dim=1).numpy()
    # (1 - eps) * -log p_y + eps * mean_j -log p_j  (targets smoothed to eps / C + (1 - eps) 1_y)
    ref = np.mean([(1 - eps) * -lp[t] + eps * -lp.mean() for lp, t in zip(logp, y, strict=True)])
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-6)  # the loss is taken in fp32
    ref_torch = F.cross_entropy(logits.detach(), y, label_smoothing=eps)
    assert float(loss.detach()) == pytest.approx(float(ref_torch), rel=1e-6)


def test_supcon_on_a_small_batch_with_known_positives():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(5, 3))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    labels = [0, 0, 1, 1, 2]  # anchor 4 has no positive: left out of the mean
    t = 0.5
    per_anchor = []
    for i in range(5):
        positives = [p for p in range(5) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(z[i] @ z[a] / t) for a in range(5) if a != i)
        per_anchor.append(
            -sum(math.log(math.exp(z[i] @ z[p] / t) / denom) for p in positives) / len(positives)
        )
    got = supcon_loss(torch.tensor(z), torch.tensor(labels), t)
    assert float(got) == pytest.approx(np.mean(per_anchor), rel=1e-12)


def test_supcon_trains_the_classifier_on_detached_features():
    cfg = RunConfig(loss="supcon", classes=2, image_size=16)
    torch.manual_seed(0)
    model = create_model(cfg, 3, 16)
    objective = make_objective(cfg, model)
    assert objective.views == 2 and objective.head is not None
    images, target = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 0])  # 2 views of 4
    loss, logits, both = objective(model, images, target)
    assert both.tolist() == [0, 1, 2, 0, 0, 1, 2, 0] and logits.shape == (8, 3)
    classifier = model.get_classifier()
    backbone = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    ce = F.cross_entropy(logits, both)
    grads = torch.autograd.grad(ce, [*backbone, classifier.weight], allow_unused=True)
    assert all(g is None for g in grads[:-1])  # the classifier's loss never reaches the backbone
    assert grads[-1] is not None and grads[-1].abs().sum() > 0
    sup = torch.autograd.grad(loss - ce, backbone[0])[0]  # SupCon does shape it
    assert sup.abs().sum() > 0


def test_supcon_refuses_a_model_without_a_linear_classifier():
    class Odd(torch.nn.Module):
        def get_classifier(self):
            return torch.nn.Identity()

    with pytest.raises(ValueError, match="classifier is a Linear layer; Odd's is Identity"):
        make_objective(RunConfig(loss="supcon"), Odd())


def test_two_views_on_both_batch_paths():
    from clusterprobe.runners.data import synthetic
    from clusterprobe.runners.train import _batches

    cfg = RunConfig(classes=2, subclasses=2, train_per_subclass=4, image_size=16)
    data = synthetic.load(cfg)

    class Plain(torch.utils.data.Dataset):  # no .batch(): the DataLoader path
        def __len__(self):
            return len(data.train)

        def __getitem__(self, i):
            return data.train[i]

    for dataset in (data.train, Plain()):
        gen = torch.Generator().manual_seed(0)
        images, sup, _ = next(iter(_batches(dataset, 8, gen, 0, views=2)))
        assert images.shape == (16, 3, 16, 16) and len(sup) == 8
        # each image's two views: the same picture, shifted differently (shift = 2 px)
        assert not torch.equal(images[:8], images[8:])
        centre = (slice(None), slice(None), slice(4, 12), slice(4, 12))
        close = (images[:8][centre] - images[8:][centre]).abs().mean()
        other = (images[:8][centre] - images[8:].roll(1, 0)[centre]).abs().mean()
        assert close < other
