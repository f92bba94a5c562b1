"""The dataset interface every loader returns: images plus two label levels.

A loader builds a :class:`HierarchicalData`; the rest of the pipeline sees only
this. Labels live in numpy arrays beside the torch datasets so that the
embedding stage can select one superclass's evaluation images without loading
any image.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch.utils.data


def user_cache(name: str) -> Path:
    """``name`` in clusterprobe's cache folder: ``$CLUSTERPROBE_CACHE``, else
    ``$XDG_CACHE_HOME/clusterprobe``, else ``~/.cache/clusterprobe``."""
    base = os.environ.get("CLUSTERPROBE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "clusterprobe"
    )
    return Path(base) / name


@dataclass(frozen=True)
class Labels:
    superclass: np.ndarray  # int64 [N], 0..S-1
    subclass: np.ndarray  # int64 [N], global subclass id 0..K-1

    def __post_init__(self):
        if self.superclass.shape != self.subclass.shape or self.superclass.ndim != 1:
            raise ValueError("superclass and subclass labels must be 1-D and of equal length")


@dataclass
class HierarchicalData:
    """A two-level labelled image dataset, split into train and eval.

    ``train[i]`` and ``eval[i]`` return ``(image, superclass, subclass)`` with the
    image a float tensor [3, H, W], already transformed (augmented for train).
    ``train_plain`` is the train split with the eval transform (for probes).
    """

    name: str  # registry name, e.g. "synthetic", "living17"
    shuffled: bool
    train: torch.utils.data.Dataset
    eval: torch.utils.data.Dataset
    train_plain: torch.utils.data.Dataset
    train_labels: Labels
    eval_labels: Labels
    superclass_names: list[str]
    subclass_names: list[str]  # indexed by global subclass id
    image_size: int
    # What went in, for the run record: class ids/wnids per superclass, counts, options.
    record: dict = field(default_factory=dict)
    # How images became model input (data.preprocess.Preprocess); its params are recorded.
    preprocess: object | None = None

    @property
    def num_superclasses(self) -> int:
        return len(self.superclass_names)

    @property
    def num_subclasses(self) -> int:
        return len(self.subclass_names)

    def groups(self) -> list[list[int]]:
        """Global subclass ids of each superclass, in label order."""
        pairs = np.unique(
            np.concatenate(
                [
                    np.stack([lab.superclass, lab.subclass], axis=1)
                    for lab in (self.train_labels, self.eval_labels)
                ]
            ),
            axis=0,
        )
        out: list[list[int]] = [[] for _ in range(self.num_superclasses)]
        for sup, sub in pairs.tolist():
            out[sup].append(sub)
        return out

    def digest(self) -> str:
        """Short hash of the class lists, so runs on the same classes can be matched."""
        payload = json.dumps(
            {"groups": [[self.subclass_names[s] for s in g] for g in self.groups()]},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]
