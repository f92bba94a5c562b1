"""Feeding a device from a dataset, and the record of what a run was fed.

:func:`make_loader` builds a DataLoader that keeps a GPU busy when images are
decoded from disk: worker processes, pinned memory, persistent workers and a
deep prefetch queue. :func:`dataset_record` / :func:`dataset_params` describe
exactly which classes and how many images went into a run (logged as the
``dataset.json`` artifact and as params).
"""

from __future__ import annotations

import os
import random
from collections import Counter

import numpy as np
import torch
import torch.utils.data
from clusterprobe.runners.data.base import HierarchicalData

PREFETCH_BATCHES = 4  # per worker: enough to hide JPEG-decode jitter behind a GPU step


def default_workers() -> int:
    """A sensible worker count for decoding images: cores - 1, at most 16."""
    return max(0, min(16, (os.cpu_count() or 1) - 1))


def _seed_worker(worker_id: int) -> None:
    # Each worker gets a distinct, reproducible stream for numpy/random-based transforms
    # (torch's own seed is already per worker, derived from the loader's generator).
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int,
    shuffle: bool = False,
    workers: int = 0,
    device: torch.device | str | None = None,
    seed: int = 0,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader tuned for throughput; ``workers=0`` loads in this process."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    extra: dict = {}
    if workers > 0:
        extra.update(
            persistent_workers=True,  # no re-fork per epoch
            prefetch_factor=PREFETCH_BATCHES,
            worker_init_fn=_seed_worker,
        )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=device.type == "cuda",  # lets .to(device, non_blocking=True) overlap
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


def variant(data: HierarchicalData) -> str:
    return "shuffled" if data.shuffled else "natural"


def dataset_record(data: HierarchicalData) -> dict:
    """JSON-able record: classes per superclass, image counts, options, digest."""
    train_counts = Counter(data.train_labels.subclass.tolist())
    eval_counts = Counter(data.eval_labels.subclass.tolist())
    groups = data.groups()
    return {
        "dataset": data.name,
        "variant": variant(data),
        "digest": data.digest(),
        "num_superclasses": data.num_superclasses,
        "num_subclasses": data.num_subclasses,
        "train_images": len(data.train_labels.subclass),
        "eval_images": len(data.eval_labels.subclass),
        "image_size": data.image_size,
        "superclasses": [
            {
                "label": s,
                "name": data.superclass_names[s],
                "subclasses": [
                    {
                        "id": k,
                        "name": data.subclass_names[k],
                        "train_images": train_counts.get(k, 0),
                        "eval_images": eval_counts.get(k, 0),
                    }
                    for k in group
                ],
            }
            for s, group in enumerate(groups)
        ],
        "options": data.record,
    }


def dataset_params(data: HierarchicalData) -> dict[str, str]:
    """Flat params for the runs: dataset, variant, counts, digest of the class lists."""
    return {
        "dataset": data.name,
        "shuffled": str(bool(data.shuffled)),
        "data.variant": variant(data),
        "data.num_superclasses": str(data.num_superclasses),
        "data.num_subclasses": str(data.num_subclasses),
        "data.train_images": str(len(data.train_labels.subclass)),
        "data.eval_images": str(len(data.eval_labels.subclass)),
        "data.digest": data.digest(),
    }
