"""Feeding a device from a dataset.

:func:`make_loader` builds a DataLoader that keeps a GPU busy when images are
decoded from disk: worker processes, pinned memory, persistent workers and a
deep prefetch queue. What a run was fed is described in :mod:`.record`.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.utils.data

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
