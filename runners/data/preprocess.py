"""How images become what the model sees: the dataset's own recipe, or its weights'.

``RunConfig.preprocess`` picks the recipe:

* ``dataset``: each dataset's own (``transforms.py``: resize and centre-crop at the
  dataset's size, the paper's resize 256 / crop 224 for large images, bilinear;
  mean/std from timm's config of the architecture; the synthetic set: rendered at
  the size, its train split's per-channel statistics, no resize). What ``run``
  trains with, so what a train run's checkpoints are measured with.
* ``model``: timm's data config of the architecture
  (``timm.data.resolve_data_config``: input size, mean/std, interpolation,
  ``crop_pct``, ``crop_mode``), applied by timm's own eval transform
  (``timm.data.create_transform``). The default for weights made elsewhere
  (``eval --weights``, ``--pretrained``): they expect what they were trained with.

The config's single overrides then win: ``image_size`` (the input size), ``mean``,
``std``, ``interpolation``, ``crop_pct``. The result, a :class:`Preprocess`, is
recorded as every run's ``input.*`` params (``tracker.conventions``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from clusterprobe.runners.data import transforms
from clusterprobe.tracker import conventions as cv
from clusterprobe.tracker.errors import UsageError

NO_RESIZE = "none"  # interpolation of a recipe that feeds images at the size they are made


@dataclass(frozen=True)
class Preprocess:
    """One resolved recipe: the eval transform, and the record of it."""

    source: str  # "dataset" | "model": the recipe the overrides were applied to
    input_size: int  # px, square
    mean: tuple[float, ...]  # per channel, of images scaled to [0, 1]
    std: tuple[float, ...]
    interpolation: str  # choices.INTERPOLATIONS, or NO_RESIZE
    crop_pct: float  # resize the shorter side to input_size / crop_pct, then crop
    crop_mode: str = "center"  # timm's: center | squash | border

    def params(self) -> dict[str, str]:
        return {
            cv.PARAM_INPUT_SOURCE: self.source,
            cv.PARAM_INPUT_SIZE: str(self.input_size),
            cv.PARAM_INPUT_MEAN: ",".join(str(float(v)) for v in self.mean),
            cv.PARAM_INPUT_STD: ",".join(str(float(v)) for v in self.std),
            cv.PARAM_INPUT_INTERPOLATION: self.interpolation,
            cv.PARAM_INPUT_CROP_PCT: str(float(self.crop_pct)),
            cv.PARAM_INPUT_CROP_MODE: self.crop_mode,
        }

    def resize_size(self) -> int:
        """The shorter side before the centre crop."""
        if self.source == "model":  # timm's own rounding (create_transform)
            return math.floor(self.input_size / self.crop_pct)
        return round(self.input_size / self.crop_pct)

    def describe(self) -> str:
        if self.interpolation == NO_RESIZE:
            return f"as made at {self.input_size} px, normalised"
        return (
            f"resize {self.resize_size()} ({self.interpolation}), {self.crop_mode} crop "
            f"{self.input_size}, normalised"
        )

    def record(self) -> dict:
        """For ``dataset.json`` (``transforms``): what ``transforms.describe`` gives, and the
        recipe."""
        return {
            "preprocess": self.source,
            "image_size": self.input_size,
            "eval": self.describe(),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }

    def eval_transform(self):
        """Image -> normalised float tensor [3, size, size]: timm's eval transform for the
        ``model`` recipe (PIL images, and float tensors in [0, 1], batched too); the
        dataset recipe's resize + centre crop otherwise (PIL images)."""
        if self.source == "model":
            from timm.data import create_transform

            return create_transform(
                input_size=(3, self.input_size, self.input_size),
                is_training=False,
                interpolation=self.interpolation,
                mean=self.mean,
                std=self.std,
                crop_pct=self.crop_pct,
                crop_mode=self.crop_mode,
            )
        from torchvision import transforms as T

        return T.Compose(
            [
                T.Resize(
                    self.resize_size(),
                    interpolation=T.InterpolationMode(self.interpolation),
                    antialias=True,
                ),
                T.CenterCrop(self.input_size),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    def decode_size(self) -> int:
        """Smallest shorter side a decoded image needs for :meth:`eval_transform`."""
        return math.ceil(self.input_size / self.crop_pct)


def model_recipe(arch: str) -> Preprocess:
    """timm's data config of ``arch`` (its pretrained tag's, else the default tag's), as
    ``timm.data.resolve_data_config`` resolves it for a model built under that name."""
    from clusterprobe.runners.models import check_name
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    check_name(arch)  # UsageError: unknown name or tag
    pretrained = get_pretrained_cfg(arch)
    if pretrained is None:
        raise UsageError(f"--preprocess model: timm has no data config for {arch!r}")
    data = resolve_data_config(pretrained_cfg=pretrained.to_dict())
    return Preprocess(
        source="model",
        input_size=int(data["input_size"][-1]),
        mean=tuple(float(v) for v in data["mean"]),
        std=tuple(float(v) for v in data["std"]),
        interpolation=str(data["interpolation"]),
        crop_pct=float(data["crop_pct"]),
        crop_mode=str(data.get("crop_mode") or "center"),
    )


def resolve(config, *, native_size: int, mean=None, std=None, resizes: bool = True):
    """The :class:`Preprocess` ``config`` asks for on a dataset whose own images are
    ``native_size`` px, normalised by ``mean``/``std`` (None: timm's for the arch).
    ``resizes=False``: the dataset makes its images at the input size (the synthetic
    set), so its own recipe has no resize or crop to override."""
    if config.preprocess == "model":
        base = model_recipe(config.arch)
    else:
        size = config.image_size or native_size
        if mean is None:
            mean, std = transforms.normalisation(config.arch)
        if resizes:
            base = dataset_recipe(size, mean, std)
        else:
            given = [f for f in ("interpolation", "crop_pct") if getattr(config, f) is not None]
            if given:
                flags = ", ".join(f"--{f.replace('_', '-')}" for f in given)
                raise UsageError(
                    f"{flags}: {config.dataset} images are made at the input size, with "
                    "nothing to resize; they apply with --preprocess model"
                )
            base = Preprocess("dataset", size, tuple(mean), tuple(std), NO_RESIZE, 1.0)
    return _override(base, config)


def dataset_recipe(size: int, mean, std) -> Preprocess:
    """The dataset recipe for images resized to ``size`` (``transforms.eval_transform``)."""
    return Preprocess("dataset", size, tuple(mean), tuple(std), "bilinear", dataset_crop_pct(size))


def dataset_crop_pct(size: int) -> float:
    """The dataset recipe's crop fraction at ``size`` (transforms.eval_transform's)."""
    resize = size if size <= transforms.SMALL_MAX else round(size * transforms.EVAL_RESIZE_RATIO)
    return size / resize


def _override(base: Preprocess, config) -> Preprocess:
    changes = {
        "input_size": config.image_size,
        "mean": config.mean,
        "std": config.std,
        "interpolation": config.interpolation,
        "crop_pct": config.crop_pct,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    for key in ("mean", "std"):
        if key in changes:
            changes[key] = tuple(float(v) for v in changes[key])
    return replace(base, **changes)


@dataclass(frozen=True)
class ImageTransforms:
    """What a dataset of image files or arrays builds its splits with."""

    pre: Preprocess
    eval: object  # callable: image -> tensor, deterministic
    train: object  # callable: the paper's augmentation at the input size, same normalisation
    eval_draft: int  # smallest shorter side a decoded image needs (ImageFiles' draft)
    train_draft: int | None
    record: dict  # the dataset record's "transforms"


def image_transforms(config, native_size: int) -> ImageTransforms:
    """The transforms of a dataset of ``native_size`` px images (BREEDS, CIFAR-100, your
    folders) under ``config``'s preprocessing."""
    pre = paper_pixels(resolve(config, native_size=native_size), config)
    size = pre.input_size
    return ImageTransforms(
        pre=pre,
        eval=pre.eval_transform(),
        train=(
            pre.eval_transform()
            if config.augment == "none"
            else transforms.train_transform(size, pre.mean, pre.std, config.augment)
        ),
        eval_draft=pre.decode_size(),
        train_draft=transforms.decode_size(size, train=True),
        record={**transforms.describe(size, pre.mean, pre.std, config.augment), **pre.record()},
    )


def paper_pixels(pre: Preprocess, config) -> Preprocess:
    """``--augment paper`` feeds pixels in [0, 1], in training and evaluation alike: no
    mean/std unless ``--mean``/``--std`` are given."""
    if config.augment != "paper":
        return pre
    return replace(
        pre,
        mean=pre.mean if config.mean is not None else transforms.PAPER_MEAN,
        std=pre.std if config.std is not None else transforms.PAPER_STD,
    )
