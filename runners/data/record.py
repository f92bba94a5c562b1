"""The record of what a run was fed: which classes, how many images, options.

Logged as the ``dataset.json`` artifact, as flat params of the train and eval runs,
and as the runs' MLflow dataset input (:func:`dataset_info`). Kept free of torch so
that recording and re-scoring need not import it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from clusterprobe.tracker.conventions import PARAM_DATASET, PARAM_SHUFFLED
from clusterprobe.tracker.datasets import DatasetInfo

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


# --- the MLflow dataset input --------------------------------------------------------------

# Record keys that name places on this machine (or say where the files were found): left
# out of the digest, so the same images read from another mount point are the same data.
LOCAL_KEYS = frozenset({"data_dir", "imagenet_root", "breeds_info", "split_roots", "source"})


def _portable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _portable(v) for k, v in value.items() if k not in LOCAL_KEYS}
    if isinstance(value, (list, tuple)):
        return [_portable(v) for v in value]
    return value


def content_digest(record: Mapping) -> str:
    """Hash of everything a dataset record says about the data (class lists, image counts,
    size, options), its local paths left out: equal digests, equal data. Unlike the
    class-list ``dataset_digest`` param, two runs with other image counts differ here."""
    payload = json.dumps(_portable(record), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def dataset_info(record: Mapping) -> DatasetInfo:
    """The MLflow dataset input of a dataset record: a hierarchical one (``dataset_record``)
    or a transfer set's (``classes`` and ``images_per_class``); shown on the run page."""
    if "superclasses" in record:
        size = record.get("image_size")
        name = str(record["name"]) + ("-shuffled" if record.get("shuffled") else "")
        profile = {
            "variant": record.get("variant"),
            "superclasses": record.get("num_superclasses"),
            "subclasses": record.get("num_subclasses"),
            "train_images": record.get("train_images"),
            "eval_images": record.get("eval_images"),
            "image_size": size,
            "class_list_digest": record.get("digest"),  # the runs' dataset_digest param
            "classes": {
                s["name"]: [k["name"] for k in s["subclasses"]] for s in record["superclasses"]
            },
        }
        labels = {"superclass": "long", "subclass": "long"}
        options = record.get("options") or {}
    else:
        size = (record.get("transforms") or {}).get("image_size")
        name = str(record["name"])
        counts = list(record.get("images_per_class") or [])
        profile = {
            "classes": list(record.get("classes") or []),
            "images": sum(counts),
            "images_per_class": counts,
            "image_size": size,
        }
        labels = {"label": "long"}
        options = record
    source = {"dataset": str(record["name"])}
    source.update({k: str(options[k]) for k in sorted(LOCAL_KEYS) if options.get(k)})
    image = {"image": f"float32[3,{size},{size}]"} if size else {}
    return DatasetInfo(
        name=name,
        digest=content_digest(record),
        source=source,
        profile=profile,
        columns={**image, **labels},
    )


def normalisation(record: Mapping) -> dict | None:
    """``{"mean": [...], "std": [...]}`` the images were normalised with, where the
    record says (synthetic data: ``normalise_*``; loaders using torchvision transforms:
    ``transforms``); None where it does not."""
    options = record.get("options") or {}
    if "normalise_mean" in options:
        return {"mean": options["normalise_mean"], "std": options["normalise_std"]}
    transforms = options.get("transforms") or {}
    if "mean" in transforms:
        return {"mean": transforms["mean"], "std": transforms["std"]}
    return None
