"""Decoded-image cache: decode and resize every image once, then read pixels by memory map.

JPEG decoding dominates loading real images on a CPU (ImageNet at 224 px: ~70 images/s
on 2 cores), far below what a GPU trains on. The first pass decodes each file once
(through ``imagecheck.find_corrupt``, so the corrupt-image check and the cache read
each file once), resizes its shorter side to the recipe's resize size (256 for a
224 px input) with the recipe's interpolation, keeps the centre square, and writes the
pixels into one uint8 array file ``[N, S, S, 3]`` (``numpy.lib.format``, so
``np.load(mmap_mode="r")`` reads it), with the files that did not decode in a JSON file
beside it. Later epochs, runs and study trials map that file and apply the run's own
transforms to each stored square (:class:`CachedFiles`).

What changes: evaluation images are the same pixels the decode path gives (its resize,
then the centre crop). Training crops are drawn from the stored centre square rather
than the whole image: the run records ``image_cache`` so the two stay apart in queries.

A cache file is keyed by the files (folder and name, byte size and modification time,
so a replaced file rebuilds it), their labels, the split, the size and the
interpolation, under ``default_root()`` (``images`` in the user cache folder:
``$CLUSTERPROBE_CACHE``, else ``$XDG_CACHE_HOME/clusterprobe`` or ``~/.cache/clusterprobe``)
or ``--cache DIR``. It is written under a temporary
name and renamed when complete, so a killed first pass leaves no half file behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch.utils.data
from clusterprobe.runners.data.base import user_cache
from clusterprobe.runners.data.imagecheck import CorruptImage, find_corrupt
from clusterprobe.runners.engine.progress import progress_bar
from PIL import Image

DEFAULT_CAP = 64 * 2**30  # bytes a cache file may take unless told otherwise
OFF = "none"  # RunConfig.image_cache: decode every file on every pass
DEFAULT = "default"  # RunConfig.image_cache: the user cache folder


def default_root() -> Path:
    return user_cache("images")


def resolve_root(setting: str) -> Path | None:
    """The folder ``RunConfig.image_cache`` names; None when the cache is off."""
    if setting == OFF:
        return None
    return default_root() if setting == DEFAULT else Path(setting).expanduser()


def dataset_digest(paths: Sequence[str], labels: Sequence[int]) -> str:
    """Digest of which files (by folder and name, size and mtime, not by location) carry
    which labels."""
    h = hashlib.sha256()
    for p, y in zip(paths, labels, strict=True):
        st = os.stat(p)
        name = f"{Path(p).parent.name}/{Path(p).name}"
        h.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\t{int(y)}\n".encode())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Squares:
    """How the stored squares are made: shorter side resized to ``size`` px with
    ``interpolation``, then the ``size x size`` square placed so that a centre crop of
    ``crop`` px from it is the centre crop of ``crop`` px from the whole resized image (the
    two roundings of ``CenterCrop`` differ by a pixel otherwise)."""

    size: int
    interpolation: str = "bilinear"
    crop: int | None = None

    def file(self, root: str | os.PathLike, digest: str, split: str) -> Path:
        name = f"{digest}-{split}-{self.size}px-c{self.crop or self.size}-{self.interpolation}"
        return Path(root) / f"{name}.npy"

    def of(self, image: Image.Image) -> np.ndarray:
        """``image``'s square: uint8 [size, size, 3]."""
        from torchvision.transforms import functional as tf

        size, crop = self.size, self.crop or self.size
        image = tf.resize(image, size, tf.InterpolationMode(self.interpolation), antialias=True)

        def start(full: int) -> int:  # CenterCrop's own rounding, for both crops
            want = int(round((full - crop) / 2.0)) - int(round((size - crop) / 2.0))
            return max(0, min(full - size, want))

        width, height = image.size
        image = tf.crop(image, start(height), start(width), size, size)
        return np.asarray(image, dtype=np.uint8)


def _corrupt_file(target: Path) -> Path:
    return target.with_suffix(".corrupt.json")


def build(
    paths: Sequence[str],
    target: Path,
    squares: Squares,
    *,
    draft: int | None = None,
    cap: int = DEFAULT_CAP,
    progress: bool = False,
) -> list:
    """Decode ``paths`` into ``target``; the corrupt files (``imagecheck.CorruptImage``),
    whose rows stay black. Raises ValueError, before decoding anything, when the file would
    exceed ``cap`` bytes or the free space of its folder."""
    size = squares.size
    need = len(paths) * size * size * 3 + 128
    if need > cap:
        raise ValueError(
            f"image cache {target.name}: {need / 2**30:.1f} GiB for {len(paths)} images at "
            f"{size} px exceeds the cap of {cap / 2**30:.1f} GiB; raise the cap or use a "
            "smaller size"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"--cache {target.parent}: cannot hold the image cache ({err.strerror}); give a "
            "folder, or --cache none"
        ) from None
    free = shutil.disk_usage(target.parent).free
    if need > free:
        raise ValueError(
            f"image cache {target.name}: {need / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB "
            f"free in {target.parent}; point --cache at a disk with room, or --cache none"
        )
    tmp = target.with_suffix(f".{os.getpid()}.part")
    out = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)
    )
    bar = progress_bar(len(paths), show=progress, desc=f"caching {size} px images", unit="img")

    def keep(i: int, image: Image.Image) -> None:
        out[i] = squares.of(image)
        bar.update()

    try:
        bad = find_corrupt(paths, keep=keep, draft=draft or size)
        out.flush()
        corrupt = [dataclasses.asdict(c) for c in bad]
        _corrupt_file(target).write_text(json.dumps(corrupt, indent=1))
        os.replace(tmp, target)  # last: a cache file without its corrupt list never exists
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    return bad


def open_or_build(
    paths: Sequence[str],
    labels: Sequence[int],
    split: str,
    squares: Squares,
    *,
    draft: int | None = None,
    root: str | os.PathLike | None = None,
    cap: int = DEFAULT_CAP,
    progress: bool = False,
) -> tuple[np.ndarray, list]:
    """The read-only memory map ``[N, size, size, 3]`` of these images' ``squares``, built
    on first use, with the files that do not decode (found when it was built). ``draft``:
    the smallest side JPEGs may be decoded at (``ImageFiles``'), the squares' size by
    default."""
    target = squares.file(root or default_root(), dataset_digest(paths, labels), split)
    if not (target.exists() and _corrupt_file(target).exists()):
        build(paths, target, squares, draft=draft, cap=cap, progress=progress)
    pixels = np.load(target, mmap_mode="r")
    size = squares.size
    if pixels.shape != (len(paths), size, size, 3):
        raise ValueError(f"image cache {target}: shape {pixels.shape}, delete it to rebuild")
    bad = [CorruptImage(**c) for c in json.loads(_corrupt_file(target).read_text())]
    return pixels, bad


class CachedFiles(torch.utils.data.Dataset):
    """Image files read from a cache file: ``transform`` of the stored square of
    ``paths[i]`` (row ``rows[i]``), with its two labels; :class:`images.ImageFiles`'s
    interface, so the corrupt-file check and the loaders treat both alike."""

    draft = None  # nothing is decoded here

    def __init__(
        self,
        pixels: np.ndarray,
        rows: np.ndarray,
        paths: Sequence[str],
        superclass: np.ndarray,
        subclass: np.ndarray,
        transform: Callable,
    ):
        if not (len(rows) == len(paths) == len(superclass) == len(subclass)):
            raise ValueError("rows, paths and labels must have the same length")
        self.pixels = pixels
        self.rows = np.asarray(rows, dtype=np.int64)
        self.paths = list(paths)
        self.superclass = np.asarray(superclass, dtype=np.int64)
        self.subclass = np.asarray(subclass, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        image = Image.fromarray(np.asarray(self.pixels[self.rows[i]]))
        return self.transform(image), int(self.superclass[i]), int(self.subclass[i])

    def with_transform(self, transform: Callable, draft: int | None = None) -> CachedFiles:
        """The same files through ``transform``: a :class:`CachedBatches` when it has a
        batch form (``transforms.PaperAugment``)."""
        kind = CachedBatches if hasattr(transform, "batch") else CachedFiles
        return kind(self.pixels, self.rows, self.paths, self.superclass, self.subclass, transform)

    def subset(self, keep: np.ndarray) -> CachedFiles:
        """The files where ``keep`` (bool [N]) is true."""
        return type(self)(
            self.pixels,
            self.rows[keep],
            [p for p, k in zip(self.paths, keep, strict=True) if k],
            self.superclass[keep],
            self.subclass[keep],
            self.transform,
        )


class CachedBatches(CachedFiles):
    """Cached files whose transform augments a whole batch at once (``transform.batch``):
    training reads a batch of squares from the memory map and augments them together
    (:meth:`batch`, the interface ``train`` uses), on the training device."""

    def squares(self, index) -> torch.Tensor:
        """uint8 [B, S, S, 3]: a copy of the stored squares of the files at ``index``."""
        rows = self.rows[np.asarray(index, dtype=np.int64)]
        order = np.argsort(rows)  # the memory map read in file order, then put back
        pixels = np.empty((len(rows), *self.pixels.shape[1:]), dtype=np.uint8)
        pixels[order] = self.pixels[rows[order]]
        return torch.from_numpy(pixels)

    def batch(self, index: torch.Tensor, generator=None, device=None):
        """(images, superclass, subclass) of the files at ``index``, augmented on ``device``.
        On the CPU the crops are read straight from the memory map (a gathered copy of the
        batch's squares cost ~12% of the batch at 224 px); an accelerator gets the squares."""
        index = np.asarray(index, dtype=np.int64)
        if torch.device(device or "cpu").type == "cpu":
            rows = torch.from_numpy(self.rows[index])
            images = self.transform.batch(_as_tensor(self.pixels), generator, rows)
        else:
            images = self.transform.batch(self.squares(index).to(device), generator)
        return (
            images,
            torch.from_numpy(self.superclass[index]),
            torch.from_numpy(self.subclass[index]),
        )


def _as_tensor(pixels: np.ndarray) -> torch.Tensor:
    """The stored squares as a tensor over the same memory (read only: nothing writes to it)."""
    with warnings.catch_warnings():  # torch warns that the read-only map stays read-only
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(pixels)


def cached(data, root: Path, *, progress: bool = False):
    """``data`` (a HierarchicalData of image files) read through the cache under ``root``,
    and the files that do not decode per split: ``(data, bad_train, bad_eval)``. ``None``
    when its recipe keeps more than a centre square (timm's squash and border crops), so
    the cache cannot give the same evaluation pixels. Raises ValueError (cap, disk)."""
    pre = data.preprocess
    if pre is None or pre.crop_mode != "center":
        return None
    squares = Squares(pre.resize_size(), pre.interpolation, pre.input_size)
    out, bad = {}, {}
    for split, files in (("train", data.train_plain), ("eval", data.eval)):
        pixels, bad[split] = open_or_build(
            files.paths,
            files.subclass,
            split,
            squares,
            draft=files.draft,
            root=root,
            progress=progress,
        )
        out[split] = CachedFiles(
            pixels,
            np.arange(len(files)),
            files.paths,
            files.superclass,
            files.subclass,
            files.transform,
        )
    train = out["train"].with_transform(data.train.transform)
    augmented = "; training augmentation on the batch" if isinstance(train, CachedBatches) else ""
    record = {
        **data.record,
        "image_cache": f"centre {squares.size} px squares ({squares.interpolation}){augmented}",
    }
    data = dataclasses.replace(
        data, train=train, train_plain=out["train"], eval=out["eval"], record=record
    )
    return data, bad["train"], bad["eval"]
