"""Decode every image file once before anything trains on it.

A truncated or unreadable file otherwise surfaces only when a DataLoader reaches it,
deep into training or evaluation, as ``OSError: Truncated File Read`` without a path,
and leaves FAILED runs behind. ``find_corrupt`` decodes each file fully (PIL's lazy
``open`` reads only the header, so ``load`` is what finds a truncated JPEG) and
returns the ones that fail, with the reason.

The decoded-image cache decodes through here too: ``keep(index, image)`` receives each
good image, already decoded to RGB, so the check and the cache read every file once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
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


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file's header (no decoding)."""
    with Image.open(path) as im:
        return im.size


def check_dataset(data, *, skip_corrupt: bool = False, cache_root=None, progress: bool = False):
    """``data`` (a HierarchicalData) with every image file of both splits decoded once.

    A file that does not decode stops here, before any run exists: a UsageError naming
    it (and how many others), or with ``skip_corrupt`` the files are left out and
    counted in ``data.record["skipped_corrupt"]``. With ``cache_root`` the decoding
    fills the decoded-image cache there (``cache.py``), or reads it when it is already
    built, and the splits read their pixels from it. Datasets not read from files (the
    synthetic generator, CIFAR-100's arrays) are returned unchanged.
    """
    import dataclasses

    from clusterprobe.runners.data import cache
    from clusterprobe.runners.data.base import Labels
    from clusterprobe.runners.data.images import ImageFiles
    from clusterprobe.tracker.errors import UsageError

    if not isinstance(data.train_plain, ImageFiles) or not isinstance(data.eval, ImageFiles):
        return data
    try:
        got = cache.cached(data, cache_root, progress=progress) if cache_root else None
    except ValueError as err:
        raise UsageError(str(err)) from None
    if got is not None:
        data, bad_train, bad_eval = got
    else:
        bad_train = find_corrupt(data.train_plain.paths)
        bad_eval = find_corrupt(data.eval.paths)
    bad = bad_train + bad_eval
    if not bad:
        return data
    if not skip_corrupt:
        first = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UsageError(
            f"{first.path}: image does not decode ({first.reason}){more}; replace or remove "
            "it, or pass --skip-corrupt to leave such files out"
        )

    def without(files, corrupt: list[CorruptImage]):
        gone = {c.path for c in corrupt}
        kept = files.subset(np.array([p not in gone for p in files.paths], dtype=bool))
        missing = sorted(set(files.subclass.tolist()) - set(kept.subclass.tolist()))
        if missing:
            names = ", ".join(data.subclass_names[k] for k in missing[:5])
            raise UsageError(
                f"--skip-corrupt leaves no images of subclass {names}; replace its bad files"
            )
        return kept

    train_plain = without(data.train_plain, bad_train)
    evals = without(data.eval, bad_eval)
    return dataclasses.replace(
        data,
        train=train_plain.with_transform(data.train.transform, data.train.draft),
        train_plain=train_plain,
        eval=evals,
        train_labels=Labels(train_plain.superclass, train_plain.subclass),
        eval_labels=Labels(evals.superclass, evals.subclass),
        record={**data.record, "skipped_corrupt": [c.path for c in bad]},
    )
