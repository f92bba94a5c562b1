"""Models by timm name, and the layers we tap, as data.

A model name goes to ``timm.create_model`` unchanged (``pretrained=False``: no
network). Which layers are measured follows the paper (arXiv 2311.07864):

- ``resnet``: every BasicBlock/Bottleneck output in forward order (resnet18: 8,
  resnet50: 16); ``--taps stages``: the 4 stage outputs.
- ``vgg``: every conv output and every fully connected output, taken BEFORE
  norm and ReLU (a forward hook on the conv/linear module itself). timm's VGG
  runs fc6/fc7 as convolutions (``pre_logits.fc1``/``fc2``); they count as fc,
  and the classifier ``head.fc`` is the third: vgg16 = 13 conv + 3 fc = 16.
  ``--taps stages``: the 5 max-pool outputs.
- ``vit``: the residual stream after attention (the input of ``block.norm2``,
  a forward pre-hook) and after the MLP (the block output): 2 per block. All
  tokens are kept (no channel-0 "CLS" slicing, a bug in the authors' code).
"""

from __future__ import annotations

import difflib
import functools
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
    kind: str  # "block" | "stage" | "conv" | "fc" | "attn" | "mlp"
    capture: str = "output"  # "output": forward hook; "input": forward pre-hook (ViT after-attn)


@dataclass(frozen=True)
class ArchFamily:
    timm_module: str  # timm's model module: its registered names make the family
    taps: Callable[[torch.nn.Module, str], list[tuple[str, torch.nn.Module, str, str]]]
    doc: str


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
    if taps == "stages":
        raise ValueError("taps 'stages': ViTs have no stages; use 'blocks'")
    out = []
    for i, block in enumerate(model.blocks):
        out.append((f"blocks.{i}.norm2", block.norm2, "attn", "input"))
        out.append((f"blocks.{i}", block, "mlp", "output"))
    return out


ARCH_FAMILIES: dict[str, ArchFamily] = {
    "resnet": ArchFamily("resnet", _resnet_taps, "every residual block output (stages: 4)"),
    "vgg": ArchFamily("vgg", _vgg_taps, "every conv and fc output before norm/ReLU"),
    "vit": ArchFamily(
        "vision_transformer", _vit_taps, "residual stream after attention and after MLP"
    ),
}


@functools.cache
def _family_names(family: str) -> frozenset[str]:
    import timm

    return frozenset(timm.list_models(module=ARCH_FAMILIES[family].timm_module))


def arch_family(arch: str) -> str:
    """The family of a timm model name, or a UsageError listing families and close names."""
    for family in ARCH_FAMILIES:
        if arch in _family_names(family):
            return family
    import timm

    known = [n for f in ARCH_FAMILIES for n in sorted(_family_names(f))]
    close = difflib.get_close_matches(arch, known, n=4) or difflib.get_close_matches(
        arch, timm.list_models(), n=4
    )
    hint = f"; close timm names: {', '.join(close)}" if close else ""
    raise UsageError(
        f"--arch {arch!r} is not a supported timm model; families: "
        f"{', '.join(f'{f} ({ARCH_FAMILIES[f].timm_module})' for f in ARCH_FAMILIES)}{hint}"
    )


# --- building ------------------------------------------------------------------------------


def model_config(config, num_classes: int, image_size: int | None = None) -> dict:
    """JSON-able description that rebuilds the model without the run's config."""
    import timm

    family = arch_family(config.arch)
    norm = config.norm
    if family != "vgg" and norm != "default":
        raise UsageError(f"--norm {norm!r} applies to VGG only; leave it 'default' for {family}")
    if family != "resnet" and config.stem != "standard":
        raise UsageError(f"--stem {config.stem!r} applies to ResNets only; use 'standard'")
    if family == "vit" and config.taps == "stages":
        raise UsageError("--taps stages: ViTs have no stages; use --taps blocks")
    timm_name = config.arch
    if family == "vgg":
        base = config.arch.removesuffix("_bn")
        if norm == "default":
            norm = "bn" if config.arch.endswith("_bn") else "none"
        timm_name = f"{base}_bn" if norm == "bn" else base
        if timm_name not in _family_names("vgg"):
            raise UsageError(f"--arch {config.arch!r} --norm {norm}: timm has no {timm_name!r}")
    return {
        "arch": config.arch,
        "timm_name": timm_name,
        "family": family,
        "num_classes": int(num_classes),
        "stem": config.stem,
        "norm": norm,
        "image_size": image_size or config.image_size,
        "timm_version": timm.__version__,
    }


def build_model(cfg: dict) -> torch.nn.Module:
    """A freshly initialised model from a :func:`model_config` dict (no network)."""
    import timm

    kwargs: dict = {"pretrained": False, "num_classes": cfg["num_classes"]}
    if cfg["family"] == "vgg" and cfg["norm"] == "ln":
        kwargs["norm_layer"] = timm.layers.LayerNorm2d
    if cfg["family"] == "vit" and cfg.get("image_size"):
        kwargs["img_size"] = cfg["image_size"]
    model = timm.create_model(cfg["timm_name"], **kwargs)
    if cfg["family"] == "resnet" and cfg["stem"] == "cifar":
        # The CIFAR stem: one stride-1 3x3 conv and no max-pool, keeping 32 px resolution.
        width = model.conv1.out_channels
        model.conv1 = torch.nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        model.maxpool = torch.nn.Identity()
    for module in model.modules():
        # An in-place ReLU would overwrite a tapped conv output after its hook returned.
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    return model


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
    ViT): the tensors a weights file's head width is read from."""
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(cfg["timm_name"])
    if pretrained is None or not pretrained.classifier:
        raise UsageError(f"--arch {cfg['arch']!r}: timm names no classifier module for it")
    return pretrained.classifier


def layer_taps(model: torch.nn.Module, config) -> list[Tap]:
    """The measured layers of ``model`` in forward order, indexed 0..L-1."""
    family = arch_family(config.arch)
    found = ARCH_FAMILIES[family].taps(model, config.taps)
    return [
        Tap(i, name, module, kind, capture) for i, (name, module, kind, capture) in enumerate(found)
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
