"""A dataset's image files decoded once before anything trains on them: by the decoded-image
cache's first pass (``cache.py``), which a later run reads instead, or by the corrupt-image
check alone (``imagecheck.py``) with the cache off. Either way a file that does not decode
is refused or, with ``--skip-corrupt``, left out before any run exists.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from clusterprobe.runners.data import cache
from clusterprobe.runners.data.base import Labels
from clusterprobe.runners.data.imagecheck import CorruptImage, find_corrupt, refuse
from clusterprobe.runners.data.images import ImageFiles
from clusterprobe.tracker.errors import UsageError


def check_dataset(data, *, skip_corrupt: bool = False, cache_root=None, progress: bool = False):
    """``data`` (a HierarchicalData) with every image file of both splits decoded once.

    A file that does not decode stops here, before any run exists: a UsageError naming
    it (and how many others), or with ``skip_corrupt`` the files are left out and
    counted in ``data.record["skipped_corrupt"]``. With ``cache_root`` the decoding
    fills the decoded-image cache there (``cache.py``), or reads it when it is already
    built, and the splits read their pixels from it. Datasets not read from files (the
    synthetic generator, CIFAR-100's arrays) are returned unchanged.
    """
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
        raise refuse(bad, "replace or remove it, or pass --skip-corrupt to leave such files out")

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
