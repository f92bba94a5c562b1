"""Decode every image file once before anything trains on it.

A truncated or unreadable file otherwise surfaces only when a DataLoader reaches it,
deep into training or evaluation, as ``OSError: Truncated File Read`` without a path,
and leaves FAILED runs behind. ``find_corrupt`` decodes each file fully (PIL's lazy
``open`` reads only the header, so ``load`` is what finds a truncated JPEG) and
returns the ones that fail, with the reason.

The decoded-image cache decodes through here too: ``keep(index, image)`` receives each
good image, already decoded to RGB, so the check and the cache read every file once
(``dataset_check.check_dataset`` takes one path or the other for a whole dataset).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class CorruptImage:
    path: str
    reason: str  # one line: the decoder's error


def decode(path: str | os.PathLike, draft: int | None = None) -> Image.Image:
    """The file decoded to RGB (all pixels read); OSError/ValueError etc. if it is bad.

    ``draft``: let libjpeg decode at a reduced scale keeping the shorter side >= draft
    px (a no-op for other formats), as the training loader does.
    """
    with Image.open(path) as im:
        if draft:
            im.draft("RGB", (draft, draft))
        im.load()
        return im.convert("RGB")


def find_corrupt(
    paths: Sequence[str | os.PathLike],
    *,
    keep: Callable[[int, Image.Image], None] | None = None,
    draft: int | None = None,
) -> list[CorruptImage]:
    """The files of ``paths`` that do not decode, in input order, each with its reason.

    ``keep(i, image)`` is called for every file that decodes (``i``: its index in
    ``paths``), so a caller that needs the pixels does not decode the file again.
    """
    bad: list[CorruptImage] = []
    for i, path in enumerate(paths):
        try:
            image = decode(path, draft)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ...
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            bad.append(CorruptImage(str(path), reason))
            continue
        if keep is not None:
            keep(i, image)
    return bad


def refuse(bad: Sequence[CorruptImage], advice: str):
    """The one-line error for files that do not decode: the first, how many others, and
    ``advice`` (what the user can do). A UsageError to raise."""
    from clusterprobe.tracker.errors import UsageError

    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return UsageError(f"{bad[0].path}: image does not decode ({bad[0].reason}){more}; {advice}")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file's header (no decoding)."""
    with Image.open(path) as im:
        return im.size
