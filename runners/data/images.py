"""Image files on disk as a torch Dataset of (image, superclass, subclass).

Shared by the BREEDS, folder and transfer loaders. Listing is by sorted file
name and files are decoded lazily in the DataLoader workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch.utils.data
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")  # any case


def list_images(folder: str | os.PathLike) -> list[str]:
    """Sorted paths of the image files directly inside ``folder`` (hidden files skipped)."""
    exts = {e.lower() for e in IMAGE_EXTENSIONS}
    with os.scandir(folder) as it:
        return sorted(
            e.path
            for e in it
            if not e.name.startswith(".")
            and os.path.splitext(e.name)[1].lower() in exts
            and e.is_file()
        )


def list_dirs(folder: str | os.PathLike) -> list[str]:
    """Sorted names of the sub-folders of ``folder`` (hidden ones skipped)."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def take(paths: Sequence[str], n: int | None, seed: int) -> list[str]:
    """All of ``paths``, or a seeded sample of ``n`` kept in file-name order."""
    if n is None or n >= len(paths):
        return list(paths)
    pick = np.sort(np.random.default_rng(seed).choice(len(paths), n, replace=False))
    return [paths[i] for i in pick]


class ImageFiles(torch.utils.data.Dataset):
    """``paths[i]`` decoded to RGB and transformed, with its two labels.

    ``draft``: let libjpeg decode a JPEG at a reduced scale (1/2, 1/4, 1/8) that
    still keeps its shorter side >= ``draft`` px; JPEG decoding dominates the
    loading cost, so a 32/64 px run reads ImageNet several times faster. Leave it
    None where the transform needs full resolution (random-resized crops).
    """

    def __init__(
        self,
        paths: Sequence[str],
        superclass: np.ndarray,
        subclass: np.ndarray,
        transform: Callable,
        draft: int | None = None,
    ):
        if not (len(paths) == len(superclass) == len(subclass)):
            raise ValueError("paths and labels must have the same length")
        self.paths = list(paths)
        self.superclass = np.asarray(superclass, dtype=np.int64)
        self.subclass = np.asarray(subclass, dtype=np.int64)
        self.transform = transform
        self.draft = draft

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            with Image.open(self.paths[i]) as im:
                if self.draft:
                    im.draft("RGB", (self.draft, self.draft))  # no-op for non-JPEG files
                image = self.transform(im.convert("RGB"))
        except OSError as err:  # PIL's own message names no file (changed since the check)
            raise OSError(f"{self.paths[i]}: {err}") from err
        return image, int(self.superclass[i]), int(self.subclass[i])

    def with_transform(self, transform: Callable, draft: int | None = None) -> ImageFiles:
        return ImageFiles(self.paths, self.superclass, self.subclass, transform, draft)

    def subset(self, keep: np.ndarray) -> ImageFiles:
        """The files where ``keep`` (bool [N]) is true."""
        return ImageFiles(
            [p for p, k in zip(self.paths, keep, strict=True) if k],
            self.superclass[keep],
            self.subclass[keep],
            self.transform,
            self.draft,
        )


def gather(
    folders: Sequence[Path],
    superclass_of: np.ndarray,
    per_subclass: int | None,
    seed: int,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Image paths of each global subclass k from ``folders[k]``, with labels.

    The sample of each subclass is seeded by (seed, k) so changing one class
    leaves the others' images unchanged.
    """
    paths: list[str] = []
    subs: list[int] = []
    for k, folder in enumerate(folders):
        chosen = take(list_images(folder), per_subclass, seed * 100_003 + k)
        paths.extend(chosen)
        subs.extend([k] * len(chosen))
    sub = np.asarray(subs, dtype=np.int64)
    return paths, superclass_of[sub], sub
