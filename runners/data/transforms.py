"""The paper's input transforms, and the normalisation a timm model expects.

Large images (ImageNet/BREEDS, 224 px): train = ``RandomResizedCrop(scale=(0.05, 1))``
+ horizontal flip; eval = resize to 256/224 of the size + centre crop (resize 256,
crop 224 at the standard size). Small images (<= 64 px, CIFAR-style): train = resize
to the size + random crop with size/8 zero padding + flip; eval = resize + centre crop.

``--augment`` (``RunConfig.augment``) picks the training augmentation:

* ``default``: the above (the built-in synthetic set: its own small translation);
* ``paper``: random-resized crop (area 0.05-1) + horizontal flip at every size, pixels
  in [0, 1] with no mean/std (train and eval), as the authors' code;
* ``standard``: timm's training transform (``timm.data.create_transform(is_training=
  True)``: random-resized crop 0.08-1, flip, colour jitter 0.4), normalised;
* ``none``: the evaluation transform.
"""

from __future__ import annotations

from clusterprobe.runners.data import batch_augment as ba
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


PAPER_MEAN, PAPER_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # --augment paper: pixels in [0, 1]


def paper_augment(size: int) -> T.Compose:
    """The authors' training augmentation on a PIL image or a [3, H, W] tensor in [0, 1]
    (not normalised): random-resized crop to ``size``, area 0.05-1, then a flip."""
    return T.Compose(
        [T.RandomResizedCrop(size, scale=TRAIN_SCALE, antialias=True), T.RandomHorizontalFlip()]
    )


def standard_augment(size: int, mean, std):
    """timm's training transform for ``size`` px (PIL image -> normalised tensor)."""
    from timm.data import create_transform

    return create_transform(size, is_training=True, mean=tuple(mean), std=tuple(std))


class PaperAugment(T.Compose):
    """The paper's training augmentation: torchvision's transforms on one PIL image, or
    the same recipe on a batch of stored uint8 squares (:meth:`batch`, ``batch_augment``),
    the decoded-image cache's path. ``pad`` > 0: the small-image recipe (resize, random
    crop with ``pad`` px of zeros, flip); 0: random-resized crop of area ``TRAIN_SCALE``
    + flip."""

    def __init__(self, size: int, mean, std, pad: int = 0):
        if pad:
            steps = [
                T.Resize(size, antialias=True),
                T.RandomCrop(size, padding=pad),
                T.RandomHorizontalFlip(),
            ]
        else:
            steps = paper_augment(size).transforms
        super().__init__([*steps, T.ToTensor(), T.Normalize(mean, std)])
        self.size, self.mean, self.std, self.pad = size, tuple(mean), tuple(std), pad

    def batch(self, pixels, generator=None, rows=None):
        """uint8 [N, S, S, 3] squares -> augmented, normalised float [B, 3, size, size], on
        the pixels' device (drawn from ``generator``): the squares at ``rows`` (int64 [B]),
        or all N in order."""
        if pixels.device.type != "cpu":  # the uint8 resize kernel is the CPU's
            pixels = pixels.float()
        if self.pad:
            x = pixels if rows is None else pixels.index_select(0, rows)  # 15x `pixels[rows]`
            x = ba.padded_crops(x, self.size, self.pad, generator)
            return ba.normalise(ba.flip_half(x, generator), self.mean, self.std)
        n = len(pixels) if rows is None else len(rows)
        boxes = ba.sample_boxes(n, *pixels.shape[1:3], TRAIN_SCALE, generator=generator)
        flips = ba.sample_flips(n, generator)
        return ba.normalised_crops(pixels, boxes, flips, self.size, self.mean, self.std, rows)


def train_transform(
    size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, augment: str = "default"
) -> T.Compose:
    """PIL image -> augmented float tensor [3, size, size] (normalised by mean/std), by
    ``augment`` (see the module docstring)."""
    if augment == "paper":
        return PaperAugment(size, mean, std)
    if augment == "standard":
        return standard_augment(size, mean, std)
    if augment == "none":
        return eval_transform(size, mean, std)
    return PaperAugment(size, mean, std, pad=max(1, size // 8) if size <= SMALL_MAX else 0)


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


AUGMENT_TEXT = {
    "paper": "random resized crop {size} scale (0.05, 1.0), hflip, pixels in [0, 1]",
    "standard": "timm create_transform(is_training=True) at {size}",
    "none": "as evaluated",
}


def describe(size: int, mean, std, augment: str = "default") -> dict:
    """The transform recipe for the run record."""
    small = size <= SMALL_MAX
    return {
        "image_size": size,
        "augment": augment,
        "train": (
            AUGMENT_TEXT[augment].format(size=size)
            if augment in AUGMENT_TEXT
            else f"resize {size}, random crop {size} pad {max(1, size // 8)}, hflip"
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
