"""The record of what a run was fed: which classes, how many images, options.

Logged as the ``dataset.json`` artifact and as flat params of the train and eval
runs. Kept free of torch so that recording and re-scoring need not import it.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from clusterprobe.tracker.conventions import PARAM_DATASET, PARAM_SHUFFLED

if TYPE_CHECKING:
    from clusterprobe.runners.data.base import HierarchicalData


def variant(data: HierarchicalData) -> str:
    return "shuffled" if data.shuffled else "natural"


def dataset_record(data: HierarchicalData) -> dict:
    """JSON-able record (the ``dataset.json`` artifact): classes per superclass with
    their image counts, totals, options, digest."""
    train_counts = Counter(data.train_labels.subclass.tolist())
    eval_counts = Counter(data.eval_labels.subclass.tolist())
    return {
        "name": data.name,
        "variant": variant(data),
        "shuffled": bool(data.shuffled),
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
            for s, group in enumerate(data.groups())
        ],
        "options": data.record,
    }


def dataset_params(data: HierarchicalData) -> dict[str, str]:
    """Flat run params describing what data went in (queryable without dataset.json)."""
    return {
        PARAM_DATASET: data.name,
        PARAM_SHUFFLED: str(bool(data.shuffled)),
        "num_superclasses": str(data.num_superclasses),
        "num_subclasses": str(data.num_subclasses),
        "train_images": str(len(data.train_labels.subclass)),
        "eval_images": str(len(data.eval_labels.subclass)),
        "dataset_digest": data.digest(),
        **(data.preprocess.params() if data.preprocess is not None else {}),
    }
