"""Embedding pass: Grams from hooks equal Grams of the flattened activations, on CPU."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import torch
from clusterprobe.runners.data.base import Labels
from clusterprobe.runners.engine.cluster import DeadLayerWarning as ClusterDeadWarning
from clusterprobe.runners.engine.cluster import cluster_protocol
from clusterprobe.runners.engine.embed import DeadLayerWarning, embed_eval, pooled_features
from clusterprobe.runners.engine.projection import Projector
from clusterprobe.runners.models import Tap
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_mutual_info_score
from sklearn.preprocessing import normalize


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 3, stride=2, padding=1),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 10),
    )


def tiny_taps(model):
    return [
        Tap(0, "0", model[0], "conv"),
        Tap(1, "2", model[2], "conv"),
        Tap(2, "4.in", model[4], "fc", capture="input"),  # forward pre-hook: the fc's input
        Tap(3, "4", model[4], "fc"),
    ]


@pytest.fixture(scope="module")
def resnet():
    return resnet_and_taps()


def resnet_and_taps():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=4, zero_init_last=False)
    taps = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(model, stage)):
            taps.append(Tap(len(taps), f"{stage}.{i}", block, "block"))
    return model, taps


class ListDataset(torch.utils.data.Dataset):
    """A plain map-style dataset (goes through DataLoader, not the tensor fast path)."""

    def __init__(self, x, sup, sub):
        self.x, self.sup, self.sub = x, sup, sub

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.sup[i]), int(self.sub[i])


def reference_activations(model, taps, x):
    acts = {}
    handles = []
    for tap in taps:
        if tap.capture == "input":
            handles.append(
                tap.module.register_forward_pre_hook(
                    lambda m, a, i=tap.index: acts.__setitem__(i, a[0])
                )
            )
        else:
            handles.append(
                tap.module.register_forward_hook(
                    lambda m, a, o, i=tap.index: acts.__setitem__(i, o)
                )
            )
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return acts


def unit_gram(a: torch.Tensor) -> np.ndarray:
    f = normalize(a.reshape(a.shape[0], -1).double().numpy())
    return f @ f.T


def structured_images(n_sup=3, n_sub=4, per=8, size=16, seed=0):
    """Coloured gratings: superclass = orientation, subclass = colour (+ noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    xs, sups, subs = [], [], []
    for s in range(n_sup):
        angle = np.pi * s / n_sup
        wave = np.sin(2 * np.pi * 3 * (np.cos(angle) * xx + np.sin(angle) * yy))
        for c in range(n_sub):
            colour = np.array([np.cos(c), np.sin(c), 0.5 * c / n_sub])[:, None, None]
            for _ in range(per):
                img = colour * wave[None] + 0.3 * rng.normal(size=(3, size, size))
                xs.append(img)
                sups.append(s)
                subs.append(s * n_sub + c)
    x = torch.tensor(np.stack(xs), dtype=torch.float32)
    return x, np.array(sups), np.array(subs)


@pytest.mark.parametrize(
    "kind, budget",
    [
        ("tensor", None),  # everything fits: one forward per superclass
        ("tensordataset", None),
        ("dataset", None),
        ("tensor", 100_000),  # layers grouped into several passes
        ("dataset", 60_000),  # block 0 alone is too wide: row blocks, re-run forwards
    ],
)
def test_grams_pooled_and_pixels_match_direct(budget, kind):
    model = tiny_model()
    taps = tiny_taps(model)
    x, sup, sub = structured_images(n_sup=3, n_sub=2, per=6)
    data = {
        "tensor": x,
        "tensordataset": torch.utils.data.TensorDataset(x, torch.as_tensor(sup)),
        "dataset": ListDataset(x, sup, sub),
    }[kind]
    emb = embed_eval(
        model,
        taps,
        data,
        Labels(sup, sub),
        device="cpu",
        batch_size=5,
        quiet=True,
        memory_budget=budget,
    )
    acts = reference_activations(model, taps, x)
    assert emb.layer_names == ["0", "2", "4.in", "4"]
    for s in range(3):
        rows = np.flatnonzero(sup == s)
        np.testing.assert_array_equal(emb.eval_index[s], rows)
        assert emb.grams[s].shape == (4, len(rows), len(rows)) and emb.grams[s].dtype == np.float32
        for li in range(4):
            np.testing.assert_allclose(emb.grams[s][li], unit_gram(acts[li][rows]), atol=2e-6)
        np.testing.assert_allclose(emb.pixel_grams[s], unit_gram(x[rows]), atol=2e-6)
    np.testing.assert_allclose(emb.pooled[0], acts[0].mean(dim=(2, 3)).numpy(), atol=1e-6)
    np.testing.assert_allclose(emb.pooled[2], acts[2].numpy(), atol=1e-6)
    if budget is not None:
        assert int(emb.params["forward_passes"]) > 3  # extra passes: memory-bounded


@pytest.mark.parametrize("budget", [None, 100_000, 10_000])  # one pass, grouped, row blocks
def test_reduced_rows_come_from_the_embeds_own_passes(budget):
    """reduce=...: every eval image's reduced rows (a projection's), the same as a separate
    pass would give, whether the layers were embedded together, in groups or in row blocks."""
    model = tiny_model()
    taps = tiny_taps(model)
    x, sup, sub = structured_images(n_sup=3, n_sub=2, per=6)
    order = np.random.default_rng(0).permutation(len(x))  # superclasses interleaved
    x, sup, sub = x[order], sup[order], sub[order]
    emb = embed_eval(model, taps, x, Labels(sup, sub), device="cpu", batch_size=5, quiet=True,
                     memory_budget=budget, reduce=Projector(6, 2))  # fmt: skip
    alone = pooled_features(model, taps, x, device="cpu", batch_size=5, reduce=Projector(6, 2))
    acts = reference_activations(model, taps, x)
    assert len(emb.reduced) == len(taps)
    for li, got in enumerate(emb.reduced):
        width = acts[li].flatten(1).shape[1]
        assert got.shape == (len(x), min(6, width))
        np.testing.assert_allclose(got, alone[li], rtol=1e-5, atol=1e-5)
    assert embed_eval(model, taps, x, Labels(sup, sub), device="cpu", quiet=True).reduced is None


@pytest.mark.parametrize("budget", [None, 100_000, 10_000])  # one pass, grouped, row blocks
def test_outputs_are_the_models_own_output(budget):
    """outputs=True: the pass with the last tap (here the fc's input, a pre-hook that would
    stop the forward before the fc) runs on to the end; every image's logits are kept."""
    model = tiny_model()
    taps = tiny_taps(model)[:3]
    x, sup, sub = structured_images(n_sup=3, n_sub=2, per=6)
    labels = Labels(sup, sub)
    plain = embed_eval(model, taps, x, labels, device="cpu", batch_size=5, quiet=True)
    assert plain.outputs is None
    emb = embed_eval(
        model,
        taps,
        x,
        labels,
        device="cpu",
        batch_size=5,
        quiet=True,
        memory_budget=budget,
        outputs=True,
    )
    with torch.no_grad():
        logits = model.eval()(x).double().numpy()
    assert emb.outputs.shape == (len(x), 10) and emb.outputs.dtype == np.float64
    np.testing.assert_allclose(emb.outputs, logits, rtol=1e-5, atol=1e-6)
    for s in emb.grams:  # the Grams do not change
        np.testing.assert_allclose(emb.grams[s], plain.grams[s], atol=2e-6)
    if budget is None:  # no extra pass: the same forward went on to the end
        assert emb.params["forward_passes"] == plain.params["forward_passes"]


def test_fp64_keeps_float64_and_restores_the_model(resnet):
    """fp64: the model runs in float64 (restored to float32 after); Grams stay float64 and
    equal the Gram of float64 activations taken with plain hooks on a float64 copy."""
    import copy

    model, taps = resnet
    x, sup, sub = structured_images(n_sup=2, n_sub=2, per=4, size=16)
    emb = embed_eval(
        model, taps, x, Labels(sup, sub), device="cpu", precision="fp64", quiet=True, outputs=True
    )
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert emb.params["precision"] == "fp64" and emb.params["gram"] == "fp64"
    double = copy.deepcopy(model).double()
    double_taps = [Tap(t.index, t.name, double.get_submodule(t.name), t.kind) for t in taps]
    acts = reference_activations(double, double_taps, x.double())
    for s in emb.grams:
        rows = emb.eval_index[s]
        assert emb.grams[s].dtype == np.float64 and emb.pixel_grams[s].dtype == np.float64
        for li in (0, 7):
            np.testing.assert_allclose(emb.grams[s][li], unit_gram(acts[li][rows]), atol=1e-12)
    with torch.no_grad():
        logits = double(x.double()).numpy()
    np.testing.assert_allclose(emb.outputs, logits, atol=1e-12)


def test_pooled_features_subset_and_model_mode_restored():
    model = tiny_model()
    model.train()
    taps = tiny_taps(model)
    x, sup, sub = structured_images(n_sup=2, n_sub=2, per=4)
    pooled = pooled_features(model, taps, ListDataset(x, sup, sub), [5, 1, 3], device="cpu")
    assert model.training  # restored after the eval pass
    acts = reference_activations(model, taps, x[[5, 1, 3]])
    assert [p.shape for p in pooled] == [(3, 8), (3, 4), (3, 256), (3, 10)]
    np.testing.assert_allclose(pooled[1], acts[1].mean(dim=(2, 3)).numpy(), atol=1e-6)


def test_resnet_end_to_end_equals_sklearn_protocol(resnet):
    """embed + cluster_protocol == flatten, normalise, sklearn Ward + AMI on the same activations."""
    model, taps = resnet
    x, sup, sub = structured_images(n_sup=2, n_sub=4, per=6, size=32)
    emb = embed_eval(model, taps, x, Labels(sup, sub), device="cpu", quiet=True)
    subs = {s: sub[emb.eval_index[s]] for s in emb.grams}
    result = cluster_protocol(emb.grams, subs, (1, 3), n_jobs=1)
    acts = reference_activations(model, taps, x)
    for li in (0, 3, 7):
        for si, s in enumerate(result.superclasses):
            rows = emb.eval_index[s]
            feats = normalize(acts[li][rows].reshape(len(rows), -1).double().numpy())
            for fi, f in enumerate((1, 3)):
                k = min(4 * f, len(rows))
                pred = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(feats)
                ref = adjusted_mutual_info_score(sub[rows], pred)
                assert result.ami[li, si, fi] == pytest.approx(ref, abs=1e-9), (li, s, f)


def test_bf16_close_to_fp32(resnet):
    model, taps = resnet
    x, sup, sub = structured_images(n_sup=2, n_sub=4, per=5, size=16, seed=1)
    labels = Labels(sup, sub)
    res = {}
    for precision in ("fp32", "bf16"):
        emb = embed_eval(model, taps, x, labels, device="cpu", precision=precision, quiet=True)
        subs = {s: sub[emb.eval_index[s]] for s in emb.grams}
        res[precision] = cluster_protocol(emb.grams, subs, (1, 2), n_jobs=1)
        assert emb.params["precision"] == precision
    diff = np.abs(res["bf16"].ami - res["fp32"].ami)
    # bf16 keeps ~3 significant digits; occasional near-tied merges flip, so compare means.
    assert diff.mean() < 0.05
    assert np.abs(res["bf16"].mean_ami() - res["fp32"].mean_ami()).max() < 0.1


def test_dead_layer_warns_and_is_recorded():
    torch.manual_seed(0)
    dead = torch.nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        dead.weight.mul_(1e-3)
        dead.bias.fill_(-1.0)  # the ReLU after it outputs zeros only
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 3, 3, padding=1),
        dead,
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 64, 3),
    )
    taps = [
        Tap(0, "0", model[0], "conv"),
        Tap(1, "2", model[2], "conv"),
        Tap(2, "4", model[4], "fc"),
    ]
    x, sup, sub = structured_images(n_sup=2, n_sub=2, per=5, size=8)
    with pytest.warns(DeadLayerWarning) as record:
        emb = embed_eval(model, taps, x, Labels(sup, sub), device="cpu", quiet=True)
    messages = [str(w.message) for w in record]
    assert messages[0].startswith("layer 1 (2) is dead") and messages[1].startswith("layer 2 (4)")
    assert emb.dead == {1: [0, 1], 2: [0, 1]}  # the fc sees only zeros too: output = bias
    assert np.all(emb.grams[0][1] == 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClusterDeadWarning)
        result = cluster_protocol(emb.grams, {s: sub[emb.eval_index[s]] for s in emb.grams})
    assert np.isfinite(result.ami).all()


def test_nan_activations_are_a_value_error():
    model = tiny_model()
    with torch.no_grad():
        model[2].weight[0, 0, 0, 0] = float("nan")
    x, sup, sub = structured_images(n_sup=1, n_sub=2, per=3)
    with pytest.raises(ValueError, match=r"layer 1 \(2\).*NaN/Inf"):
        embed_eval(model, tiny_taps(model), x, Labels(sup, sub), device="cpu", quiet=True)


def test_bad_precision_and_missing_tap():
    model = tiny_model()
    x, sup, sub = structured_images(n_sup=1, n_sub=2, per=2)
    with pytest.raises(
        ValueError, match="precision 'fp16' is not known; choose one of fp32, bf16, fp64"
    ):
        embed_eval(model, tiny_taps(model), x, Labels(sup, sub), device="cpu", precision="fp16")
    stray = Tap(0, "stray", torch.nn.Linear(2, 2), "fc")
    with pytest.raises(ValueError, match="never ran"):
        embed_eval(model, [stray], x, Labels(sup, sub), device="cpu", quiet=True)
