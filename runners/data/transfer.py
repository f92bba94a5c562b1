"""Transfer sets: a flat labelled image folder or a torchvision dataset.

The transfer protocol clusters the pooled features of an out-of-distribution
set as a whole (no superclasses). A source is either a folder laid out as
``root/<class>/<images>`` (e.g. UC Merced as distributed) or the name of a
torchvision dataset (``flowers102``, ``oxford_iiit_pet``, ``dtd``, ... or any
``torchvision.datasets`` class name), read from ``data_dir``, fetched with
``download``. Items are ``(image, label, label)`` so code written for a
:class:`HierarchicalData` split (image first) reads them unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch.utils.data
from clusterprobe.runners.data import transforms
from clusterprobe.runners.data.images import ImageFiles, list_dirs, list_images, take
from clusterprobe.tracker.errors import UsageError

# Friendly names -> (torchvision class, keyword arguments for the evaluation split).
TORCHVISION_SETS: dict[str, tuple[str, dict]] = {
    "flowers102": ("Flowers102", {"split": "test"}),
    "oxford_iiit_pet": ("OxfordIIITPet", {"split": "test"}),
    "dtd": ("DTD", {"split": "test"}),
    "food101": ("Food101", {"split": "test"}),
    "stl10": ("STL10", {"split": "test"}),
    "cifar10": ("CIFAR10", {"train": False}),
}


@dataclass(frozen=True)
class TransferData:
    name: str
    images: torch.utils.data.Dataset  # items (image, label, label), eval transform applied
    labels: np.ndarray  # int64 [N]
    class_names: list[str]
    record: dict = field(default_factory=dict)
    image_size: int = 224  # what the model sees
    preprocess: object | None = None  # data.preprocess.Preprocess

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class _Relabelled(torch.utils.data.Dataset):
    """A torchvision dataset's (image, target) as (image, target, target)."""

    def __init__(self, base, index: np.ndarray):
        self.base = base
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        image, target = self.base[int(self.index[i])]
        return image, int(target), int(target)


def load_transfer(
    source: str,
    *,
    data_dir: str | None = None,
    image_size: int = 224,
    arch: str | None = None,
    per_class: int | None = None,
    seed: int = 0,
    download: bool = False,
    preprocess=None,
) -> TransferData:
    """The transfer set ``source`` (folder path or dataset name), eval transform applied:
    ``preprocess`` (a ``data.preprocess.Preprocess``), else the dataset recipe at
    ``image_size`` with timm's normalisation of ``arch``."""
    import dataclasses

    from clusterprobe.runners.data.preprocess import dataset_recipe

    if preprocess is None:
        preprocess = dataset_recipe(image_size, *transforms.normalisation(arch))
    tf = preprocess.eval_transform()
    record = {"source": source, "per_class": per_class, "seed": seed}
    record["transforms"] = preprocess.record()
    path = Path(source).expanduser()
    if path.is_dir():
        data = _from_folder(path, tf, preprocess.decode_size(), per_class, seed, record)
    else:
        data = _from_torchvision(source, data_dir, tf, per_class, seed, download, record)
    return dataclasses.replace(data, image_size=preprocess.input_size, preprocess=preprocess)


def _from_folder(root: Path, tf, draft: int, per_class, seed, record) -> TransferData:
    class_names = list_dirs(root)
    paths: list[str] = []
    labels: list[int] = []
    for k, name in enumerate(class_names):
        files = take(list_images(root / name), per_class, seed * 100_003 + k)
        paths += files
        labels += [k] * len(files)
    if len(class_names) < 2 or not paths:
        raise UsageError(
            f"transfer folder {root}: found {len(class_names)} class folders and {len(paths)} "
            f"images; expected {root}/<class>/<images> with 2+ classes"
        )
    from clusterprobe.runners.data.imagecheck import find_corrupt, refuse

    bad = find_corrupt(paths)  # every file decoded once, before the eval run exists
    if bad:
        raise refuse(bad, "replace or remove it from the transfer folder")
    y = np.asarray(labels, dtype=np.int64)
    return TransferData(root.name, ImageFiles(paths, y, y, tf, draft), y, class_names, record)


def _targets(ds) -> np.ndarray:
    for attr in ("targets", "_labels", "labels"):
        if hasattr(ds, attr):
            return np.asarray(getattr(ds, attr), dtype=np.int64)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)


def _from_torchvision(name, data_dir, tf, per_class, seed, download, record) -> TransferData:
    import torchvision.datasets as tvd

    cls_name, kwargs = TORCHVISION_SETS.get(name.lower(), (name, {}))
    cls = getattr(tvd, cls_name, None)
    if cls is None or not isinstance(cls, type):
        raise UsageError(
            f"transfer set {name!r} is neither a folder nor a torchvision dataset; use a folder "
            f"root/<class>/<images> or one of {', '.join(TORCHVISION_SETS)}"
        )
    if not data_dir:
        raise UsageError(f"transfer set {name!r} needs --data-dir DIR (and --download to fetch it)")
    try:
        ds = cls(data_dir, transform=tf, download=download, **kwargs)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise UsageError(f"transfer set {name!r} in {data_dir}: {err} (add --download?)") from None
    y = _targets(ds)
    index = np.arange(len(y))
    if per_class is not None:
        rng = np.random.default_rng(seed)
        index = np.sort(
            np.concatenate(
                [
                    rng.choice(m, min(per_class, len(m)), replace=False)
                    for m in (np.flatnonzero(y == c) for c in np.unique(y))
                ]
            )
        )
    class_names = [str(c) for c in getattr(ds, "classes", range(int(y.max()) + 1))]
    record["torchvision"] = {"class": cls_name, **kwargs}
    return TransferData(name, _Relabelled(ds, index), y[index], class_names, record)
