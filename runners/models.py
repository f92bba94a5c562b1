"""Models by timm name, and the layers we tap, as data.

A model name goes to ``timm.create_model`` unchanged (random init; pretrained
weights only from a local file, ``runners/pretrained.py``). The family, and so
which layers are measured, follows the model's class (``isinstance``), not its
name: seresnet and resnet-d are ResNets, deit (distilled too) is a
VisionTransformer. The paper's taps (arXiv 2311.07864) for the families it studies:

- ``resnet`` (timm ``ResNet``): every BasicBlock/Bottleneck output in forward order
  (resnet18: 8, resnet50: 16); ``--taps stages``: the 4 stage outputs.
- ``vgg`` (timm ``VGG``): every conv output and every fully connected output, taken
  BEFORE norm and ReLU (a forward hook on the conv/linear module itself). timm's VGG
  runs fc6/fc7 as convolutions (``pre_logits.fc1``/``fc2``); they count as fc, and
  the classifier ``head.fc`` is the third: vgg16 = 13 conv + 3 fc = 16.
  ``--taps stages``: the 5 max-pool outputs.
- ``vit`` (timm ``VisionTransformer`` with pre-norm or post-norm residual blocks): the
  residual stream after attention (the input of ``block.norm2``, or of ``block.mlp``
  in a post-norm block: a forward pre-hook) and after the MLP (the block output): 2 per
  block. All tokens are kept (no channel-0 "CLS" slicing, a bug in the authors' code).

Every other timm model is ``features``: a forward hook on each module its
``feature_info`` names (timm's own stage outputs: convnext_atto 4, efficientnet_b0 5,
regnetx_002 5, swin_tiny 4), with ``--taps blocks`` and ``stages`` alike. Hooks, not
``forward_intermediates``: the embed streams one forward pass and stops after the
last tap.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.errors import UsageError


@dataclass(frozen=True)
class Tap:
    """One layer whose activation is measured; index = forward order, 0..L-1."""

    index: int
    name: str  # module path in the model, e.g. "layer1.0"
    module: torch.nn.Module
    kind: str  # "block" | "stage" | "conv" | "fc" | "attn" | "mlp" | "feature"
    capture: str = "output"  # "output": forward hook; "input": forward pre-hook (ViT after-attn)
    # Axis order of a 4-D activation: "NCHW", or "NHWC" (Swin, MambaOut): where the
    # channels are, for average pooling (flattening ignores the order).
    layout: str = "NCHW"
    # How a [B, T, C] token activation becomes the pooled vector (probes, k-NN, transfer):
    # "avg" over tokens ``prefix_tokens`` onwards, or "token" (the class token, index 0).
    # The Gram always keeps every token.
    pool: str = "avg"
    prefix_tokens: int = 0


@dataclass(frozen=True)
class ArchFamily:
    classes: tuple[str, ...]  # timm classes ("module:Class") whose instances are the family
    taps: Callable[[torch.nn.Module, str], list[tuple[str, torch.nn.Module, str, str]]]
    doc: str
    fits: Callable[[torch.nn.Module], bool] = lambda model: True  # more than the class


# --- taps per family: (name, module, kind, capture) in forward order -----------------------


def _resnet_taps(model, taps: str):
    if taps == "stages":
        return [(f"layer{i}", getattr(model, f"layer{i}"), "stage", "output") for i in range(1, 5)]
    out = []
    for i in range(1, 5):
        for j, block in enumerate(getattr(model, f"layer{i}")):
            out.append((f"layer{i}.{j}", block, "block", "output"))
    return out


def _vgg_taps(model, taps: str):
    named = list(model.named_modules())
    if taps == "stages":
        return [(n, m, "stage", "output") for n, m in named if isinstance(m, torch.nn.MaxPool2d)]
    out = [(n, m, "conv", "output") for n, m in named if n.startswith("features.")]
    out = [t for t in out if isinstance(t[1], torch.nn.Conv2d)]
    for name in ("pre_logits.fc1", "pre_logits.fc2", "head.fc"):
        out.append((name, model.get_submodule(name), "fc", "output"))
    return out


def _vit_taps(model, taps: str):
    from timm.models.vision_transformer import ResPostBlock

    if taps == "stages":
        raise ValueError("taps 'stages': ViTs have no stages; use 'blocks'")
    out = []
    for i, block in enumerate(model.blocks):
        # Pre-norm: x + attn(norm1(x)) enters norm2. Post-norm: x + norm1(attn(x)) enters mlp.
        after_attn = "mlp" if isinstance(block, ResPostBlock) else "norm2"
        out.append((f"blocks.{i}.{after_attn}", getattr(block, after_attn), "attn", "input"))
        out.append((f"blocks.{i}", block, "mlp", "output"))
    return out


def _vit_blocks_fit(model) -> bool:
    """Only blocks whose residual stream after attention is one module's input (parallel
    blocks add attention and MLP at once: no such point) keep the paper's ViT taps."""
    from timm.models.vision_transformer import Block, ResPostBlock

    blocks = getattr(model, "blocks", None)
    return blocks is not None and all(isinstance(b, (Block, ResPostBlock)) for b in blocks)


def _feature_taps(model, taps: str):
    """The modules ``model.feature_info`` names, in its order (timm lists them in forward
    order); ``taps`` is ignored: they are stage outputs already."""
    info = getattr(model, "feature_info", None) or []
    entries = list(getattr(info, "info", info))  # a FeatureInfo, or timm's plain list of dicts
    out, seen = [], set()
    for entry in entries:
        name = entry["module"]
        if name in seen:
            continue
        seen.add(name)
        capture = "input" if entry.get("hook_type") == "forward_pre" else "output"
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise UsageError(
                f"{type(model).__name__}: its feature_info names {name!r}, which the model "
                "does not have; it cannot be tapped with forward hooks"
            ) from None
        out.append((name, module, "feature", capture))
    return out


ARCH_FAMILIES: dict[str, ArchFamily] = {
    "resnet": ArchFamily(
        ("timm.models.resnet:ResNet",), _resnet_taps, "every residual block output (stages: 4)"
    ),
    "vgg": ArchFamily(
        ("timm.models.vgg:VGG",), _vgg_taps, "every conv and fc output before norm/ReLU"
    ),
    "vit": ArchFamily(
        ("timm.models.vision_transformer:VisionTransformer",),
        _vit_taps,
        "residual stream after attention and after MLP",
        fits=_vit_blocks_fit,
    ),
    # Last: any model the others do not claim.
    "features": ArchFamily((), _feature_taps, "the modules its feature_info names"),
}


def _timm_class(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def family_of(model: torch.nn.Module) -> str:
    """The family of a built model, by class: the first whose classes it is an instance of
    (and that it fits); else ``features``."""
    for family, spec in ARCH_FAMILIES.items():
        classes = tuple(_timm_class(c) for c in spec.classes)
        if classes and isinstance(model, classes) and spec.fits(model):
            return family
    return "features"


def check_name(arch: str) -> None:
    """UsageError for a name timm does not know (close timm names as the hint), or a
    pretrained tag it does not have (the tags it has)."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    name, tag = split_model_name_tag(arch)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4)
        hint = f"; close timm names: {', '.join(close)}" if close else ""
        raise UsageError(
            f"--arch {arch!r} is not a supported timm model (any name `timm.list_models()` "
            f"gives; families: {', '.join(ARCH_FAMILIES)}){hint}"
        )
    if tag:
        try:
            get_pretrained_cfg(arch)
        except RuntimeError:
            tags = timm.list_pretrained(f"{name}.*")
            raise UsageError(
                f"--arch {arch!r}: timm has no pretrained tag {tag!r} for {name}; "
                f"tags: {', '.join(tags) or 'none'}"
            ) from None


@functools.cache
def _has_class_token(arch: str) -> bool:
    """Whether timm builds ``arch`` with a class token (kept for --pool gap as well)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    return getattr(model, "cls_token", None) is not None


@functools.cache
def arch_family(arch: str) -> str:
    """The family of a timm model name (a UsageError for an unknown one), found by
    building it on the meta device (no memory, no init cost) and asking its class."""
    check_name(arch)
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False)
    except Exception:  # a model whose init needs real tensors: build it for real, once
        model = timm.create_model(arch, pretrained=False)
    return family_of(model)


def fixed_input_size(timm_name: str) -> bool:
    """Whether timm marks the model's input size fixed (position embeddings, windows):
    such models are built for the run's image size (``img_size``)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(timm_name)
    except RuntimeError:
        return False
    return bool(cfg is not None and cfg.fixed_input_size)


# --- building ------------------------------------------------------------------------------


def model_config(config, num_classes: int, image_size: int | None = None) -> dict:
    """JSON-able description that rebuilds the model without the run's config."""
    import timm
    from timm.models import split_model_name_tag

    family = arch_family(config.arch)
    norm = config.norm
    if family != "vgg" and norm != "default":
        raise UsageError(f"--norm {norm!r} applies to VGG only; leave it 'default' for {family}")
    if family != "resnet" and config.stem != "standard":
        raise UsageError(f"--stem {config.stem!r} applies to ResNets only; use 'standard'")
    if family == "vit" and config.taps == "stages":
        raise UsageError("--taps stages: ViTs have no stages; use --taps blocks")
    pool = config.pool
    if family != "vit" and pool != "default":
        raise UsageError(f"--pool {pool!r} applies to ViTs only; leave it 'default' for {family}")
    if pool == "cls" and not _has_class_token(config.arch):
        raise UsageError(
            f"--pool cls: timm's {config.arch} has no class token (class_token=False); "
            "use --pool gap"
        )
    timm_name = config.arch
    if family == "vgg":
        name, tag = split_model_name_tag(config.arch)
        base = name.removesuffix("_bn")
        if norm == "default":
            norm = "bn" if name.endswith("_bn") else "none"
        timm_name = (f"{base}_bn" if norm == "bn" else base) + (f".{tag}" if tag else "")
        if not timm.is_model(timm_name.partition(".")[0]):
            raise UsageError(f"--arch {config.arch!r} --norm {norm}: timm has no {timm_name!r}")
    return {
        "arch": config.arch,
        "timm_name": timm_name,
        "family": family,
        "num_classes": int(num_classes),
        "stem": config.stem,
        "norm": norm,
        # The paper's VGG normalises after fc6/fc7 too; "default" keeps timm's model as named
        # (vgg16_bn: after the convs only, what its pretrained weights hold).
        "fc_norm": family == "vgg" and config.norm in ("bn", "ln"),
        # ViT: "cls" or "gap" (timm global_pool 'token' | 'avg'); gap keeps the class token
        # in the sequence, excluded from the mean (timm's avg pool), with fc_norm.
        "pool": pool,
        "class_token": _has_class_token(timm_name) if family == "vit" else None,
        "image_size": image_size or config.image_size,
        "timm_version": timm.__version__,
    }


def sized_at_creation(cfg: dict) -> bool:
    """Whether the model is built for its image size (``img_size``): ViTs, and every model
    timm marks as of a fixed input size (Swin, DeiT, ...), whose position embeddings or
    attention windows depend on it."""
    return bool(cfg.get("image_size")) and (
        cfg["family"] == "vit" or fixed_input_size(cfg["timm_name"])
    )


def build_model(cfg: dict, pretrained_file: str | Path | None = None) -> torch.nn.Module:
    """A model from a :func:`model_config` dict: freshly initialised, or with timm's own
    loader reading ``pretrained_file`` (its key mapping, position-embedding resampling and
    head handling); never the network: the file is read where it lies."""
    import timm

    kwargs: dict = {"pretrained": False, "num_classes": cfg["num_classes"]}
    if cfg["family"] == "vgg" and cfg["norm"] == "ln":
        kwargs["norm_layer"] = timm.layers.LayerNorm2d
    if cfg.get("pool") in VIT_POOLS:
        kwargs["global_pool"] = VIT_POOLS[cfg["pool"]]
    if sized_at_creation(cfg):
        kwargs["img_size"] = cfg["image_size"]
    if pretrained_file is not None:
        # source '': timm then loads the 'file' given, never its hub or URL.
        overlay = {"file": str(pretrained_file), "source": ""}
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    try:
        model = timm.create_model(cfg["timm_name"], **kwargs)
    except TypeError as err:
        if "img_size" not in kwargs:
            raise
        raise UsageError(
            f"--image-size {cfg['image_size']}: timm's {cfg['timm_name']} cannot be built for "
            f"another size ({' '.join(str(err).split())[:120]})"
        ) from None
    if cfg["family"] == "resnet" and cfg["stem"] == "cifar":
        # The CIFAR stem: one stride-1 3x3 conv and no max-pool, keeping 32 px resolution.
        width = model.bn1.num_features  # the stem's width, deep (resnet-d) stems too
        model.conv1 = torch.nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        model.maxpool = torch.nn.Identity()
    if cfg.get("fc_norm"):
        _norm_after_fc(model, cfg["norm"])
    for module in model.modules():
        # An in-place op (ReLU, SiLU, LayerScale, ...) would overwrite a tapped output
        # after its hook returned.
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    return model


VIT_POOLS = {"cls": "token", "gap": "avg"}  # --pool -> timm's global_pool


class NormAct(torch.nn.Sequential):
    """Norm then activation, in place of a VGG head's activation: timm's ConvMlp has no
    norm after fc1/fc2, and its forward is fixed, so the norm rides in the act's slot (the
    fc taps, hooked on the fc itself, stay before it)."""

    def __init__(self, norm: torch.nn.Module, act: torch.nn.Module):
        super().__init__()
        self.norm, self.act = norm, act


def _norm_after_fc(model, norm: str) -> None:
    """BatchNorm2d or LayerNorm2d after fc6 and fc7 (timm runs them as convs on [B, C, 1, 1])."""
    import timm

    make = torch.nn.BatchNorm2d if norm == "bn" else timm.layers.LayerNorm2d
    head = model.pre_logits
    for fc, act in (("fc1", "act1"), ("fc2", "act2")):
        width = getattr(head, fc).out_channels
        setattr(head, act, NormAct(make(width), getattr(head, act)))


def create_model(config, num_classes: int, image_size: int | None = None) -> torch.nn.Module:
    """``timm.create_model(config.arch, pretrained=False, ...)`` plus the stem/norm options.

    The initial weights come from ``config.seed`` alone (the global RNG is left as it was),
    so a run's init does not depend on what ran before it in the process.
    """
    cfg = model_config(config, num_classes, image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_model(cfg)


def classifier_name(cfg: dict) -> str:
    """The classifier module of a :func:`model_config`'s model, as timm names it in the
    architecture's pretrained config ('fc' for ResNets, 'head.fc' for VGG, 'head' for
    ViT; the first of a distilled model's two heads): the tensors a weights file's head
    width is read from."""
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(cfg["timm_name"])
    classifier = pretrained.classifier if pretrained is not None else None
    if isinstance(classifier, (tuple, list)):
        classifier = classifier[0] if classifier else None
    if not classifier:
        raise UsageError(f"--arch {cfg['arch']!r}: timm names no classifier module for it")
    return classifier


def layer_taps(model: torch.nn.Module, config) -> list[Tap]:
    """The measured layers of ``model`` in forward order, indexed 0..L-1 (its family by
    class; ``config.taps``: blocks or stages)."""
    family = family_of(model)
    found = ARCH_FAMILIES[family].taps(model, config.taps)
    if not found:
        raise UsageError(f"--arch {config.arch!r}: timm names no feature modules to tap in it")
    idle = [name for name, module, *_ in found if isinstance(module, _CONTAINERS)]
    if idle:
        raise UsageError(
            f"--arch {config.arch!r}: its feature_info names containers that never run "
            f"({', '.join(idle[:3])}); it cannot be tapped with forward hooks"
        )
    nhwc = str(getattr(model, "output_fmt", "NCHW")).upper().endswith("NHWC")
    layout = "NHWC" if nhwc and family == "features" else "NCHW"
    pool, prefix = token_pooling(model) if family == "vit" else ("avg", 0)
    return [
        Tap(i, name, module, kind, capture, layout, pool, prefix)
        for i, (name, module, kind, capture) in enumerate(found)
    ]


def token_pooling(model) -> tuple[str, int]:
    """A ViT's own pooling as (Tap.pool, Tap.prefix_tokens): its class token where it pools
    the token ('token'), else the mean of the patch tokens (prefix tokens excluded, as
    timm's 'avg' pool; also for 'map' and unpooled heads)."""
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    if getattr(model, "global_pool", "") == "token" and prefix > 0:
        return "token", prefix
    return "avg", prefix


_CONTAINERS = (torch.nn.ModuleList, torch.nn.ModuleDict)


def tap_table(config, image_size: int, num_classes: int = 1000) -> list[dict]:
    """What ``--taps list`` prints: every tap of ``config.arch`` (index, name, kind, module
    class, activation shape of one ``image_size`` image), from a model on the meta device
    (no weights, no compute). ``shape`` is None where a meta forward cannot run."""
    cfg = model_config(config, num_classes, image_size)
    with torch.device("meta"):
        model = build_model(cfg).eval()
    taps = layer_taps(model, config)
    shapes: dict[int, tuple] = {}
    handles = []
    for tap in taps:

        def hook(module, args, output=None, _i=tap.index, _pre=tap.capture == "input"):
            x = args[0] if _pre else output
            x = x[0] if isinstance(x, (tuple, list)) else x
            shapes[_i] = tuple(x.shape[1:])

        if tap.capture == "input":
            handles.append(tap.module.register_forward_pre_hook(hook))
        else:
            handles.append(tap.module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, image_size, image_size, device="meta"))
    except Exception:  # some ops have no meta kernel: list the taps without shapes
        pass
    finally:
        for h in handles:
            h.remove()
    return [
        {
            "index": t.index,
            "name": t.name,
            "kind": t.kind,
            "module": type(t.module).__name__,
            "shape": shapes.get(t.index),
            "layout": t.layout,
        }
        for t in taps
    ]


# --- checkpoints ---------------------------------------------------------------------------


def save_checkpoint(model: torch.nn.Module, cfg: dict, directory) -> list[Path]:
    """Write ``model.safetensors`` (state_dict) and ``model_config.json``; return both paths."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / cv.CHECKPOINT_WEIGHTS
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": "pt"})
    config_path = directory / cv.CHECKPOINT_CONFIG
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return [weights, config_path]


def checkpoint_config(directory) -> dict:
    """The ``model_config.json`` of a saved checkpoint (arch, classes, image size, ...)."""
    config_path = Path(directory) / cv.CHECKPOINT_CONFIG
    if not config_path.is_file():
        raise UsageError(f"checkpoint {str(directory)!r} has no {cv.CHECKPOINT_CONFIG}")
    return json.loads(config_path.read_text())


def load_checkpoint(directory, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model from ``model_config.json`` and load its weights (eval mode)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    model = build_model(checkpoint_config(directory))
    model.load_state_dict(load_file(str(directory / cv.CHECKPOINT_WEIGHTS), device="cpu"))
    return model.to(device).eval()
