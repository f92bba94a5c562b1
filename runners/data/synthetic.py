"""Procedural hierarchical images: shape silhouettes (superclass) x gratings (subclass).

Natural hierarchy: every superclass is one silhouette (disc, square, triangle,
...); its subclasses fill that silhouette with sinusoidal gratings of distinct
orientation and spatial frequency. A network trained on superclass labels only
needs the silhouette, so it may discard the grating: the paper's natural case.

Shuffled variant (``config.shuffled``): the same subclasses, regrouped with the
paper's recipe (arXiv 2311.07864; the authors' BREEDS code): concatenate the
per-superclass subclass lists in label order, shuffle once with a fresh legacy
``numpy.random.RandomState(2)``, cut into consecutive groups of the original
size. A superclass then holds unrelated silhouettes and gratings, and the
network must encode what tells its subclasses apart.

Every image draws its own size, position, rotation jitter, grating phase,
colours and background noise, so raw pixels do not cluster the subclasses.
Images are generated with vectorised numpy per subclass from
``(data_seed, subclass, split)``, so a subclass's images do not depend on how
many other classes are asked for; results are cached in-process.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from clusterprobe.runners.data.base import HierarchicalData, Labels
from clusterprobe.runners.data.memory import InMemoryImages
from clusterprobe.tracker.errors import UsageError

CLASSES = 8
SUBCLASSES = 4
TRAIN_PER_SUBCLASS = 150
EVAL_PER_SUBCLASS = 50
IMAGE_SIZE = 32
SHUFFLE_SEED = 2  # the paper's RandomState(2)
TRAIN_SHIFT = 2  # px of random translation while training (flips would change the grating)

MAX_CLASSES = 32
MAX_SUBCLASSES = 16
MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 128

# Per-image nuisances, in units of the image size (32 px: shapes 14-21 px wide).
SIZE_RANGE = (0.44, 0.66)
ROTATION_JITTER = math.radians(12)
NOISE_STD = 0.08
# Grating periods in px at 32 px (scaled with the image): 4 frequencies, 2.5 octaves.
PERIODS_32 = (3.0, 4.6, 7.0, 11.0)


# --- silhouettes -----------------------------------------------------------------------------
# Each is f(u, v) with the shape's nominal radius 1: inside where f < 1.


def _polar(u, v):
    return np.hypot(u, v), np.arctan2(v, u)


def _disc(u, v):
    return np.hypot(u, v)


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) / 0.8


def _diamond(u, v):
    return np.abs(u) + np.abs(v)


def _cross(u, v, arm=0.34):
    a, b = np.abs(u), np.abs(v)
    return np.minimum(np.maximum(a / arm, b), np.maximum(a, b / arm))


def _x_shape(u, v):
    c = math.sqrt(0.5)
    return _cross(c * (u + v), c * (u - v), arm=0.3)


def _polygon(n: int, rot: float = 0.0):
    def f(u, v):
        rho, phi = _polar(u, v)
        sector = 2 * math.pi / n
        local = np.mod(phi - rot, sector) - sector / 2
        return rho * np.cos(local) / math.cos(math.pi / n)

    return f


def _star(n: int, inner: float = 0.45):
    def f(u, v):
        rho, phi = _polar(u, v)
        sector = 2 * math.pi / n
        t = np.abs(np.mod(phi + math.pi / 2, sector) - sector / 2) / (sector / 2)  # 0 at a tip
        return rho / (1.0 - (1.0 - inner) * t)

    return f


def _ring(inner: float, outer_fn=_disc):
    def f(u, v):
        r = outer_fn(u, v)
        return np.maximum(r, inner / np.maximum(r, 1e-6))

    return f


def _flower(k: int, depth: float = 0.3):
    def f(u, v):
        rho, phi = _polar(u, v)
        return rho / (1.0 - depth + depth * np.cos(k * phi))

    return f


def _half_disc(u, v):
    return np.maximum(np.hypot(u, v), v + 0.7)  # a disc cut flat at v = 0.3


def _crescent(u, v):
    outer = np.hypot(u, v)
    inner = np.hypot(u - 0.45, v) / 0.75
    return np.maximum(outer, 1.0 / np.maximum(inner, 1e-6))


def _shape_table() -> list[tuple[str, object]]:
    """The first eight follow the project's reference recipe; the rest extend it procedurally."""
    table = [
        ("disc", _disc),
        ("square", _square),
        ("triangle", _polygon(3, rot=-math.pi / 2)),
        ("cross", _cross),
        ("ring", _ring(0.55)),
        ("diamond", _diamond),
        ("star5", _star(5)),
        ("x", _x_shape),
        ("hexagon", _polygon(6)),
        ("crescent", _crescent),
        ("flower3", _flower(3)),
        ("half-disc", _half_disc),
        ("square-ring", _ring(0.6, _square)),
        ("star8", _star(8, inner=0.6)),
        ("flower5", _flower(5, 0.25)),
        ("pentagon", _polygon(5, rot=math.pi / 2)),
    ]
    for n in range(4, 4 + MAX_CLASSES):  # procedural tail: stars, flowers, polygon rings
        if len(table) >= MAX_CLASSES:
            break
        table.append((f"star{n}-thin", _star(n, inner=0.3)))
        table.append((f"flower{n + 2}", _flower(n + 2, 0.35)))
        table.append((f"polygon{n + 3}-ring", _ring(0.5, _polygon(n + 3))))
    return table[:MAX_CLASSES]


SHAPES = _shape_table()


# --- gratings --------------------------------------------------------------------------------


def _grating_grid(total: int, seed: int) -> np.ndarray:
    """(orientation rad, period in px at 32) for each global subclass, all distinct.

    A grid of 4 periods x ceil(total/4) orientations, dealt to subclasses in a
    seeded order so that one superclass gets a mix of orientations and periods.
    """
    n_period = len(PERIODS_32)
    n_orient = max(1, math.ceil(total / n_period))
    grid = [
        (math.pi * o / n_orient, PERIODS_32[p]) for o in range(n_orient) for p in range(n_period)
    ]
    order = np.random.RandomState(seed).permutation(len(grid))[:total]
    return np.array([grid[i] for i in order], dtype=np.float64)


def _orientation_jitter(total: int) -> float:
    n_orient = max(1, math.ceil(total / len(PERIODS_32)))
    return 0.2 * math.pi / n_orient  # well inside half the gap between neighbours


# --- rendering -------------------------------------------------------------------------------


def render(shape_fn, orientation: float, period32: float, n: int, size: int, rng, jitter: float):
    """``n`` images [n, 3, size, size] in [0, 1]-ish of one (silhouette, grating) subclass."""
    scale = size / 32.0
    diam = rng.uniform(*SIZE_RANGE, n) * size
    radius = diam / 2
    cx = rng.uniform(radius * 0.9, size - radius * 0.9)
    cy = rng.uniform(radius * 0.9, size - radius * 0.9)
    rot = rng.uniform(-ROTATION_JITTER, ROTATION_JITTER, n)
    theta = orientation + rng.uniform(-jitter, jitter, n)
    period = period32 * scale * rng.uniform(0.93, 1.07, n)
    phase = rng.uniform(0, 2 * math.pi, n)
    fg = rng.uniform(0.55, 1.0, (n, 3))
    bg = rng.uniform(0.0, 0.4, (n, 3))
    invert = rng.random(n) < 0.5

    grid = np.arange(size, dtype=np.float64) + 0.5
    x = grid[None, None, :] - cx[:, None, None]  # [n, 1, W]
    y = grid[None, :, None] - cy[:, None, None]  # [n, H, 1]
    c, s = np.cos(rot)[:, None, None], np.sin(rot)[:, None, None]
    u = (c * x + s * y) / radius[:, None, None]
    v = (-s * x + c * y) / radius[:, None, None]
    f = shape_fn(u, v)  # [n, H, W]
    # Soft edge about one pixel wide, so the silhouette is anti-aliased.
    mask = np.clip((1.0 - f) * radius[:, None, None] + 0.5, 0.0, 1.0)
    ct, st = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    wave = np.sin(2 * math.pi * (ct * x + st * y) / period[:, None, None] + phase[:, None, None])
    level = 0.5 + 0.5 * wave  # [n, H, W] in [0, 1]
    fg_img = fg[:, :, None, None] * (0.25 + 0.75 * level[:, None])
    bg_img = bg[:, :, None, None] + rng.normal(0, NOISE_STD, (n, 3, size, size))
    img = mask[:, None] * fg_img + (1 - mask[:, None]) * bg_img
    img = np.where(invert[:, None, None, None], 1.0 - img, img)
    img += rng.normal(0, NOISE_STD / 2, img.shape)
    return img.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _generate(classes: int, subclasses: int, n_train: int, n_eval: int, size: int, seed: int):
    """Raw images and natural labels, cached: (train_x, train_sub, eval_x, eval_sub, gratings)."""
    total = classes * subclasses
    gratings = _grating_grid(total, seed)
    jitter = _orientation_jitter(total)
    parts: dict[str, list[np.ndarray]] = {"train": [], "eval": []}
    for k in range(total):
        shape_fn = SHAPES[k // subclasses][1]
        for split_id, (split, n) in enumerate((("train", n_train), ("eval", n_eval))):
            rng = np.random.default_rng([seed, k, split_id])
            parts[split].append(render(shape_fn, *gratings[k], n, size, rng, jitter))
    train_x = np.concatenate(parts["train"])
    eval_x = np.concatenate(parts["eval"])
    train_sub = np.repeat(np.arange(total), n_train)
    eval_sub = np.repeat(np.arange(total), n_eval)
    return train_x, train_sub, eval_x, eval_sub, gratings


def shuffled_groups(groups: list[list[int]], seed: int = SHUFFLE_SEED) -> list[list[int]]:
    """The paper's regrouping: concatenate in label order, one seeded shuffle, equal cuts."""
    flat = [k for g in groups for k in g]
    np.random.RandomState(seed).shuffle(flat)
    size = len(groups[0])
    return [flat[i : i + size] for i in range(0, len(flat), size)]


def _check(name: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        flag = name.replace("_", "-")
        raise UsageError(f"--{flag} {value}: the synthetic dataset supports {lo}..{hi}")
    return value


def load(config) -> HierarchicalData:
    """Build the synthetic dataset ``config`` asks for (natural or shuffled)."""
    classes = _check("classes", config.classes or CLASSES, 2, MAX_CLASSES)
    subclasses = _check("subclasses", config.subclasses or SUBCLASSES, 2, MAX_SUBCLASSES)
    n_train = _check(
        "train_per_subclass", config.train_per_subclass or TRAIN_PER_SUBCLASS, 2, 100_000
    )
    n_eval = _check("eval_per_subclass", config.eval_per_subclass or EVAL_PER_SUBCLASS, 2, 100_000)
    size = _check("image_size", config.image_size or IMAGE_SIZE, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    shuffle_seed = int(config.extra.get("shuffle_seed", SHUFFLE_SEED))

    train_x, train_sub, eval_x, eval_sub, gratings = _generate(
        classes, subclasses, n_train, n_eval, size, config.data_seed
    )
    natural = [list(range(s * subclasses, (s + 1) * subclasses)) for s in range(classes)]
    groups = shuffled_groups(natural, shuffle_seed) if config.shuffled else natural
    sup_of = np.empty(classes * subclasses, dtype=np.int64)
    for s, group in enumerate(groups):
        sup_of[group] = s

    pre, train_t, eval_t, transform = _model_input(config, size, train_x, eval_x)
    train_labels = Labels(sup_of[train_sub], train_sub.astype(np.int64))
    eval_labels = Labels(sup_of[eval_sub], eval_sub.astype(np.int64))

    def split(x, labels, shift):
        return InMemoryImages(
            x,
            torch.from_numpy(labels.superclass),
            torch.from_numpy(labels.subclass),
            shift,
            transform,
        )

    train_plain = split(train_t, train_labels, 0)
    subclass_names = [
        f"{SHAPES[k // subclasses][0]}/o{math.degrees(o):.0f}-p{p:g}"
        for k, (o, p) in enumerate(gratings)
    ]
    superclass_names = (
        [f"group-{s:02d}" for s in range(classes)]
        if config.shuffled
        else [SHAPES[s][0] for s in range(classes)]
    )
    return HierarchicalData(
        name="synthetic",
        shuffled=bool(config.shuffled),
        train=_train_split(config.augment, train_plain, pre),
        eval=split(eval_t, eval_labels, 0),
        train_plain=train_plain,
        train_labels=train_labels,
        eval_labels=eval_labels,
        superclass_names=superclass_names,
        subclass_names=subclass_names,
        image_size=pre.input_size,
        preprocess=pre,
        record={
            "groups": groups,
            "classes": classes,
            "subclasses": subclasses,
            "train_per_subclass": n_train,
            "eval_per_subclass": n_eval,
            "image_size": size,
            "data_seed": config.data_seed,
            "shuffle_seed": shuffle_seed if config.shuffled else None,
            "train_shift": TRAIN_SHIFT if config.augment == "default" else 0,
            "augment": config.augment,
            "normalise_mean": list(pre.mean),
            "normalise_std": list(pre.std),
            "transforms": pre.record(),
        },
    )


def _model_input(config, size: int, train_x: np.ndarray, eval_x: np.ndarray):
    """(Preprocess, train and eval tensors, per-item transform or None) for rendered images.

    The dataset's own recipe normalises with the train split's per-channel statistics
    (or the ``--mean``/``--std`` given), once, in memory. The model's recipe treats the
    renders as photos: clipped to [0, 1] like decoded images, then timm's eval transform
    (resize, crop, the weights' normalisation) per item, so that 224 px copies of a
    whole split never sit in memory.
    """
    from clusterprobe.runners.data.preprocess import paper_pixels, resolve

    if config.preprocess == "model":
        if config.augment in ("paper", "standard"):
            raise UsageError(
                f"--augment {config.augment}: the synthetic set augments with --preprocess "
                "dataset only; use --augment default or none"
            )
        pre = resolve(config, native_size=size)
        raw = [torch.from_numpy(np.clip(x, 0.0, 1.0)) for x in (train_x, eval_x)]
        return pre, raw[0], raw[1], pre.eval_transform()
    if config.augment in ("paper", "standard"):  # pixels in [0, 1], as decoded photos
        train_x, eval_x = np.clip(train_x, 0.0, 1.0), np.clip(eval_x, 0.0, 1.0)
    mean = train_x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = train_x.std(axis=(0, 2, 3), dtype=np.float64)
    pre = resolve(config, native_size=size, mean=mean.tolist(), std=std.tolist(), resizes=False)
    pre = paper_pixels(pre, config)
    if config.augment == "standard":  # timm's transform normalises after its PIL steps
        from torchvision import transforms as T

        raw = [torch.from_numpy(x.astype(np.float32)) for x in (train_x, eval_x)]
        return pre, raw[0], raw[1], T.Normalize(pre.mean, pre.std)
    mean, std = np.asarray(pre.mean, dtype=np.float64), np.asarray(pre.std, dtype=np.float64)

    def tensor(x):
        return torch.from_numpy(
            ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
        )

    return pre, tensor(train_x), tensor(eval_x), None


def _train_split(augment: str, plain: InMemoryImages, pre) -> InMemoryImages:
    """The training split under ``--augment``: the set's own translation (default), none,
    or the paper's / timm's augmentation per image (flips included: they change a
    grating's orientation, so the subclass cue, but not the superclass's silhouette)."""
    from clusterprobe.runners.data import transforms

    if augment == "paper":
        return plain.with_augment(transforms.paper_augment(pre.input_size))
    if augment == "standard":
        from torchvision import transforms as T

        timm_train = transforms.standard_augment(pre.input_size, pre.mean, pre.std)
        return plain.with_augment(T.Compose([T.ToPILImage(), timm_train]))
    return plain if augment == "none" else plain.with_shift(TRAIN_SHIFT)


def describe() -> dict:
    return {
        "superclasses": CLASSES,
        "subclasses_per_superclass": SUBCLASSES,
        "train_per_subclass": TRAIN_PER_SUBCLASS,
        "eval_per_subclass": EVAL_PER_SUBCLASS,
        "image_size": IMAGE_SIZE,
        "max_superclasses": MAX_CLASSES,
        "max_subclasses": MAX_SUBCLASSES,
        "offline": True,
    }
