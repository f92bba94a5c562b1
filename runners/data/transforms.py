"""The paper's input transforms, and the normalisation a timm model expects.

Large images (ImageNet/BREEDS, 224 px): train = ``RandomResizedCrop(scale=(0.05, 1))``
+ horizontal flip; eval = resize to 256/224 of the size + centre crop (resize 256,
crop 224 at the standard size). Small images (<= 64 px, CIFAR-style): train = resize
to the size + random crop with size/8 zero padding + flip; eval = resize + centre crop.
"""

from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_MAX = 64  # at or below this size the small-image recipe applies
TRAIN_SCALE = (0.05, 1.0)  # area range of the random-resized crop (the paper's 0.05-1)
EVAL_RESIZE_RATIO = 256 / 224  # resize 256, centre crop 224


def normalisation(arch: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from timm's pretrained config of ``arch``; ImageNet's if unknown."""
    if arch:
        try:
            import timm.models

            cfg = timm.models.get_pretrained_cfg(arch)
        except Exception:  # unknown name or no config: fall back rather than fail a load
            cfg = None
        if cfg is not None and cfg.mean and cfg.std:
            return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
    return IMAGENET_MEAN, IMAGENET_STD


def train_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """PIL image -> augmented, normalised float tensor [3, size, size]."""
    if size <= SMALL_MAX:
        steps = [
            T.Resize(size, antialias=True),
            T.RandomCrop(size, padding=max(1, size // 8)),
            T.RandomHorizontalFlip(),
        ]
    else:
        steps = [
            T.RandomResizedCrop(size, scale=TRAIN_SCALE, antialias=True),
            T.RandomHorizontalFlip(),
        ]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def eval_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """PIL image -> normalised float tensor [3, size, size], deterministic."""
    resize = size if size <= SMALL_MAX else round(size * EVAL_RESIZE_RATIO)
    return T.Compose(
        [
            T.Resize(resize, antialias=True),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def decode_size(size: int, train: bool) -> int | None:
    """Smallest shorter side a decoded image needs for the transform (None: full size).

    Small-image recipes and the eval resize throw resolution away anyway; the
    train random-resized crop may zoom into 5% of the area, so it gets full size.
    """
    if size <= SMALL_MAX:
        return size
    return None if train else round(size * EVAL_RESIZE_RATIO)


def describe(size: int, mean, std) -> dict:
    """The transform recipe for the run record."""
    small = size <= SMALL_MAX
    return {
        "image_size": size,
        "train": (
            f"resize {size}, random crop {size} pad {max(1, size // 8)}, hflip"
            if small
            else f"random resized crop {size} scale {TRAIN_SCALE}, hflip"
        ),
        "eval": (
            f"resize {size}, centre crop {size}"
            if small
            else f"resize {round(size * EVAL_RESIZE_RATIO)}, centre crop {size}"
        ),
        "mean": list(mean),
        "std": list(std),
    }
