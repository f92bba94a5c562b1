"""timm models by name, their layer taps, and checkpoints that reload without network."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from clusterprobe.runners.config import RunConfig
from clusterprobe.runners.models import (
    ARCH_FAMILIES,
    arch_family,
    create_model,
    layer_taps,
    load_checkpoint,
    model_config,
    save_checkpoint,
)
from clusterprobe.tracker.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _taps(arch: str, meta: bool = False, **kw):
    cfg = RunConfig(arch=arch, **kw)
    # Structure-only checks build on the meta device: no weight init, no memory.
    with torch.device("meta" if meta else "cpu"):
        model = create_model(cfg, num_classes=4, image_size=32)
    return model, layer_taps(model, cfg)


def test_resnet18_taps_every_basic_block_in_forward_order():
    model, taps = _taps("resnet18")
    assert [t.name for t in taps] == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert [t.index for t in taps] == list(range(8))
    assert all(t.kind == "block" and t.capture == "output" for t in taps)
    assert all(isinstance(t.module, timm.models.resnet.BasicBlock) for t in taps)


def test_resnet50_taps_16_bottlenecks_and_stages():
    _, taps = _taps("resnet50", meta=True)
    assert len(taps) == 16 and all(
        isinstance(t.module, timm.models.resnet.Bottleneck) for t in taps
    )
    _, stages = _taps("resnet50", meta=True, taps="stages")
    assert [t.name for t in stages] == ["layer1", "layer2", "layer3", "layer4"]


def test_tap_order_is_forward_order():
    model, taps = _taps("resnet18")
    seen = []
    handles = [t.module.register_forward_hook(lambda *_, i=t.index: seen.append(i)) for t in taps]
    model.eval()(torch.randn(1, 3, 32, 32))
    for h in handles:
        h.remove()
    assert seen == list(range(8))


def test_vgg16_taps_13_convs_and_3_fc_before_norm():
    model, taps = _taps("vgg16", meta=True)
    kinds = [t.kind for t in taps]
    assert kinds == ["conv"] * 13 + ["fc"] * 3
    assert [t.name for t in taps[13:]] == ["pre_logits.fc1", "pre_logits.fc2", "head.fc"]
    assert all(isinstance(t.module, (torch.nn.Conv2d, torch.nn.Linear)) for t in taps)
    # Hooked modules are the conv itself, so its output is taken before norm and ReLU;
    # in-place ReLUs are off so a captured output is never overwritten.
    assert not any(m.inplace for m in model.modules() if isinstance(m, torch.nn.ReLU))


@pytest.mark.parametrize(
    "norm,timm_name", [("none", "vgg11"), ("bn", "vgg11_bn"), ("ln", "vgg11"), ("default", "vgg11")]
)
def test_vgg_norm_choice(norm, timm_name):
    mc = model_config(RunConfig(arch="vgg11", norm=norm), 4, 32)
    assert mc["timm_name"] == timm_name and mc["norm"] == ("none" if norm == "default" else norm)
    assert model_config(RunConfig(arch="vgg11_bn"), 4)["norm"] == "bn"


def test_vgg_layernorm_after_every_conv():
    model, taps = _taps("vgg11", meta=True, norm="ln")
    assert len(taps) == 8 + 3
    layers = list(model.features)
    after_conv = [layers[i + 1] for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d)]
    assert len(after_conv) == 8 and all(isinstance(m, timm.layers.LayerNorm2d) for m in after_conv)


def test_vit_two_taps_per_block_with_input_capture():
    cfg = RunConfig(arch="vit_tiny_patch16_224")
    model = create_model(cfg, 4, image_size=32)
    taps = layer_taps(model, cfg)
    assert len(taps) == 2 * len(model.blocks) == 24
    assert [t.kind for t in taps[:2]] == ["attn", "mlp"]
    assert taps[0].capture == "input" and taps[0].name == "blocks.0.norm2"
    got = {}
    h1 = taps[0].module.register_forward_pre_hook(lambda m, a: got.setdefault("attn", a[0]))
    h2 = taps[1].module.register_forward_hook(lambda m, a, o: got.setdefault("mlp", o))
    logits = model.eval()(torch.randn(2, 3, 32, 32))
    h1.remove(), h2.remove()
    assert logits.shape == (2, 4)
    assert got["attn"].shape == got["mlp"].shape == (2, 4 + 1, 192)  # 2x2 patches + CLS, all kept


def test_init_follows_config_seed():
    a = create_model(RunConfig(seed=1), 4, 16).state_dict()
    b = create_model(RunConfig(seed=1), 4, 16).state_dict()
    c = create_model(RunConfig(seed=2), 4, 16).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_cifar_stem():
    model = create_model(RunConfig(stem="cifar"), 4, 32)
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    assert isinstance(model.maxpool, torch.nn.Identity)


def test_unknown_arch_lists_families_and_close_names():
    with pytest.raises(UsageError, match="resnet18") as err:
        arch_family("resnet81")
    for family in ARCH_FAMILIES:
        assert family in str(err.value)
    with pytest.raises(UsageError, match="not a supported"):
        create_model(RunConfig(arch="resnet81"), 4)
    with pytest.raises(UsageError, match="tags: resnet18.a1_in1k"):
        arch_family("resnet18.no_such_tag")


# --- any timm model: the family by class, else timm's own feature modules -----------------


@pytest.mark.parametrize(
    "arch,family,count",
    [
        ("seresnet18", "resnet", 8),  # a ResNet by class, whatever its module's name
        ("resnet50d", "resnet", 16),  # deep stem, same 16 bottlenecks
        ("vgg11_bn.tv_in1k", "vgg", 11),  # a pretrained tag in the name
        ("deit_tiny_patch16_224", "vit", 24),
        ("deit_tiny_distilled_patch16_224", "vit", 24),  # VisionTransformerDistilled
        ("vit_small_patch16_18x2_224", "features", 18),  # parallel blocks: no after-attn point
    ],
)
def test_family_by_class(arch, family, count):
    _, taps = _taps(arch, meta=True)
    assert arch_family(arch) == family and len(taps) == count


@pytest.mark.parametrize(
    "arch,count",
    [
        ("convnext_atto", 4),
        ("efficientnet_b0", 5),
        ("regnetx_002", 5),
        ("swin_tiny_patch4_window7_224", 4),
    ],
)
def test_other_models_tap_the_modules_their_feature_info_names(arch, count):
    """The reference: timm's own feature extractor (features_only) names the same modules."""
    _, taps = _taps(arch, meta=True)
    with torch.device("meta"):
        extractor = timm.create_model(arch, features_only=True)
    assert [t.name for t in taps] == extractor.feature_info.module_name()
    assert len(taps) == count and {t.kind for t in taps} == {"feature"}
    assert {t.layout for t in taps} == {"NHWC" if arch.startswith("swin") else "NCHW"}


def test_nhwc_taps_pool_over_height_and_width():
    """Swin's stages are channels-last: the pooled vector is the mean over H and W of the
    block output, as a plain hook reads it, and the Gram sees every value."""
    from clusterprobe.runners.engine.embed import pooled_features

    model, taps = _taps("swin_tiny_patch4_window7_224")
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    plain = {}
    hooks = [
        t.module.register_forward_hook(lambda m, a, o, i=t.index: plain.setdefault(i, o))
        for t in taps
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    pooled = pooled_features(model, taps, torch.utils.data.TensorDataset(x), device="cpu")
    for i, out in plain.items():
        assert out.shape[-1] == pooled[i].shape[1]  # channels last
        np_ref = out.mean(dim=(1, 2)).numpy()
        assert abs(pooled[i] - np_ref).max() < 1e-5


def test_tap_table_lists_shapes_from_a_meta_forward():
    from clusterprobe.runners.models import tap_table

    rows = tap_table(RunConfig(arch="convnext_atto"), 32)
    assert [(r["name"], r["shape"]) for r in rows] == [
        ("stages.0", (40, 8, 8)),
        ("stages.1", (80, 4, 4)),
        ("stages.2", (160, 2, 2)),
        ("stages.3", (320, 1, 1)),
    ]


def test_options_outside_their_family_are_usage_errors():
    with pytest.raises(UsageError, match="--norm"):
        model_config(RunConfig(norm="ln"), 4)
    with pytest.raises(UsageError, match="--stem"):
        model_config(RunConfig(arch="vgg11", stem="cifar"), 4)


def test_checkpoint_reload_reproduces_logits(tmp_path):
    cfg = RunConfig(stem="cifar")
    torch.manual_seed(0)
    model = create_model(cfg, 5, image_size=16)
    model.train()(torch.randn(8, 3, 16, 16))  # move BatchNorm running stats off their init
    model.eval()
    paths = save_checkpoint(model, model_config(cfg, 5, 16), tmp_path / "ckpt")
    assert sorted(p.name for p in paths) == ["model.safetensors", "model_config.json"]
    saved = json.loads((tmp_path / "ckpt" / "model_config.json").read_text())
    assert saved["arch"] == "resnet18" and saved["stem"] == "cifar" and saved["num_classes"] == 5
    assert saved["image_size"] == 16 and saved["timm_version"] == timm.__version__
    reloaded = load_checkpoint(tmp_path / "ckpt")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))


def test_missing_checkpoint_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="model_config.json"):
        load_checkpoint(tmp_path)
