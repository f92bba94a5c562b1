"""ViT pooling (--pool cls|gap) and VGG normalisation after fc6/fc7 (--norm bn|ln)."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.engine.embed import embed_eval, pooled_features
from clusterprobe.runners.models import create_model, layer_taps, model_config
from clusterprobe.tracker.errors import UsageError
from conftest import ONE_EPOCH_32PX_RUN

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VIT = "vit_tiny_patch16_224"  # at 32 px: 2 x 2 patches + the class token


def _vit(pool: str):
    cfg = RunConfig(arch=VIT, pool=pool)
    model = create_model(cfg, 4, image_size=32).eval()
    return model, layer_taps(model, cfg)


def _block_outputs(model, taps, x) -> dict[int, torch.Tensor]:
    """Every tap's raw activation, read by plain hooks (the reference)."""
    got = {}  # the hooks return None: they leave the forward alone
    hooks = []
    for t in taps:
        if t.capture == "input":
            hooks.append(
                t.module.register_forward_pre_hook(lambda m, a, i=t.index: got.update({i: a[0]}))
            )
        else:
            hooks.append(
                t.module.register_forward_hook(lambda m, a, o, i=t.index: got.update({i: o}))
            )
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return got


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_vit_pooled_features_follow_the_pooling(pool):
    model, taps = _vit(pool)
    assert model.global_pool == {"cls": "token", "gap": "avg"}[pool]
    assert model.cls_token is not None  # the class token is kept for gap as well
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    raw = _block_outputs(model, taps, x)
    pooled = pooled_features(model, taps, torch.utils.data.TensorDataset(x), device="cpu")
    for i, act in raw.items():
        assert act.shape == (3, 5, 192)
        ref = act[:, 0] if pool == "cls" else act[:, 1:].mean(dim=1)  # gap: patch tokens only
        np.testing.assert_allclose(pooled[i], ref.numpy(), atol=1e-5)
    # The model's own head reads the same: the class token (cls), the patch mean (gap).
    with torch.no_grad():
        tokens = model.forward_features(x)
        ref = tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(dim=1)
        np.testing.assert_allclose(
            model.forward_head(tokens, pre_logits=True).numpy(),
            (ref if pool == "cls" else model.fc_norm(ref)).numpy(),
            atol=1e-5,
        )
    if pool == "gap":  # timm's avg pool swaps the final norm for fc_norm
        assert isinstance(model.norm, torch.nn.Identity)
        assert isinstance(model.fc_norm, torch.nn.LayerNorm)


def test_vit_grams_keep_every_token():
    model, taps = _vit("cls")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = type("L", (), {"superclass": np.zeros(4, int), "subclass": np.arange(4) % 2})()
    emb = embed_eval(model, taps, x, labels, device="cpu", quiet=True, pixels=False)
    raw = _block_outputs(model, taps, x)
    for i, act in raw.items():
        flat = torch.nn.functional.normalize(act.reshape(4, -1).double(), dim=1)  # 5 tokens
        np.testing.assert_allclose(emb.grams[0][i], (flat @ flat.T).numpy(), atol=1e-5)


def test_pool_is_recorded_and_vit_only():
    mc = model_config(RunConfig(arch=VIT, pool="gap"), 4, 32)
    assert mc["pool"] == "gap" and mc["class_token"] is True
    assert RunConfig(pool="gap").to_params()["pool"] == "gap"
    with pytest.raises(UsageError, match="--pool 'cls' applies to ViTs only"):
        model_config(RunConfig(arch="resnet18", pool="cls"), 4)
    with pytest.raises(UsageError, match="--pool 'max'"):
        RunConfig(pool="max").validate()
    # a ViT built without a class token: gap only, and recorded as such
    no_cls = "vit_medium_patch16_gap_256"
    assert model_config(RunConfig(arch=no_cls, pool="gap"), 4, 32)["class_token"] is False
    with pytest.raises(UsageError, match="has no class token"):
        model_config(RunConfig(arch=no_cls, pool="cls"), 4, 32)


@pytest.mark.parametrize(
    "norm,kind", [("bn", torch.nn.BatchNorm2d), ("ln", timm.layers.LayerNorm2d)]
)
def test_vgg_normalises_after_every_conv_and_fc6_fc7(norm, kind):
    cfg = RunConfig(arch="vgg11", norm=norm)
    with torch.device("meta"):
        model = create_model(cfg, 4, image_size=32)
    norms = [m for m in model.modules() if isinstance(m, kind)]
    assert len(norms) == 8 + 2  # 8 convs, fc6, fc7 (not the classifier)
    head = model.pre_logits
    assert isinstance(head.act1.norm, kind) and head.act1.norm.weight.shape == (4096,)
    assert isinstance(head.act2.norm, kind)
    taps = layer_taps(model, cfg)
    assert [t.name for t in taps[-3:]] == ["pre_logits.fc1", "pre_logits.fc2", "head.fc"]
    assert all(not isinstance(t.module, kind) for t in taps)


def test_vgg_fc_taps_are_taken_before_norm_and_relu():
    """The fc6 tap holds fc1's output; the norm and ReLU come after it, and the recorded
    activation equals fc1 applied to its input (not the normalised one)."""
    cfg = RunConfig(arch="vgg11", norm="bn")
    model = create_model(cfg, 4, image_size=32)
    model.train()(torch.randn(4, 3, 32, 32))  # move the BN statistics off their init
    model.eval()
    taps = layer_taps(model, cfg)
    fc6 = next(t for t in taps if t.name == "pre_logits.fc1")
    seen = {}  # hooks that return None leave the output alone
    h1 = model.pre_logits.fc1.register_forward_hook(lambda m, a, o: seen.update(x=a[0]))
    h2 = model.pre_logits.act1.register_forward_hook(lambda m, a, o: seen.update(after=o))
    x = torch.randn(2, 3, 32, 32)
    pooled = pooled_features(model, taps, torch.utils.data.TensorDataset(x), device="cpu")
    h1.remove(), h2.remove()
    with torch.no_grad():
        before = model.pre_logits.fc1(seen["x"])
        after = torch.relu(model.pre_logits.act1.norm(before))
    np.testing.assert_allclose(pooled[fc6.index], before.mean(dim=(2, 3)).numpy(), atol=1e-5)
    np.testing.assert_allclose(seen["after"].numpy(), after.numpy(), atol=1e-5)
    assert (before < 0).any()  # a pre-ReLU value, so the tap is not after the activation


def test_vgg_default_norm_keeps_timms_model():
    assert model_config(RunConfig(arch="vgg11_bn"), 4)["fc_norm"] is False
    assert model_config(RunConfig(arch="vgg11", norm="none"), 4)["fc_norm"] is False
    assert model_config(RunConfig(arch="vgg11", norm="ln"), 4)["fc_norm"] is True


TINY = ONE_EPOCH_32PX_RUN


@pytest.mark.parametrize(
    "options",
    [dict(arch=VIT, pool="gap"), dict(arch=VIT, pool="cls"), dict(arch="vgg11", norm="bn")],
)
def test_each_option_trains_one_epoch_on_the_built_in_data(store, options):
    from clusterprobe.runners import pipeline
    from clusterprobe.tracker.tracking import Tracker

    result = pipeline.run(RunConfig(**TINY, **options), store, quiet=True)
    run = Tracker(store).get_run(result.train_run_id)
    assert run.info.status == "FINISHED"
    assert all(run.data.params[k] == v for k, v in options.items())
    assert len(result.layers) == (24 if "pool" in options else 8 + 3)
    assert np.isfinite(result.history[0]["train_loss"])


def test_eval_weights_of_a_gap_vit_with_pool(store, tmp_path, capsys):
    """`eval --weights --arch VIT --pool gap`: a GAP-trained state dict (fc_norm, no final
    norm) loads and its model run records the pooling; without --pool it does not fit."""
    from clusterprobe.runners.cli import main as cli_main
    from clusterprobe.tracker.tracking import Tracker
    from safetensors.torch import save_file

    model = create_model(RunConfig(arch=VIT, pool="gap"), 2, image_size=32)
    path = tmp_path / "vit_gap.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    data = "--classes 2 --subclasses 2 --train-per-subclass 4 --eval-per-subclass 4".split()
    argv = ["eval", "--weights", str(path), "--arch", VIT, "--image-size", "32", *data]
    argv += ["--preprocess", "dataset", "--factors", "1", "--save", "none", "--quiet"]
    argv += ["--store", str(store.root)]
    assert cli_main([*argv, "--pool", "gap"]) == 0
    (run,) = Tracker(store).search_runs(kind="model")
    assert run.data.params["pool"] == "gap"
    capsys.readouterr()
    assert cli_main(argv) == 2  # default pooling: a final norm the file does not hold
    err = capsys.readouterr().err
    assert "first missing: norm.weight" in err and "pass --pool gap" in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1
