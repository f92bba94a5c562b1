"""CIFAR-100 as a two-level hierarchy: 20 coarse superclasses x 5 fine subclasses.

Read from the official python pickles (``cifar-100-python/{train,test,meta}``),
because torchvision's ``CIFAR100`` exposes only the fine labels; the coarse
labels are the pickle's ``coarse_labels``, the names its ``meta`` file's.
``--download`` fetches the archive with torchvision (checksum-verified) into
``--data-dir`` (default: the clusterprobe cache). Train on the 50,000 train
images, evaluate on the 10,000 test images (100 per fine class).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch.utils.data
from clusterprobe.runners.data.groups import shuffle_groups, subsample_groups, superclass_of
from clusterprobe.tracker.errors import UsageError
from PIL import Image

FOLDER = "cifar-100-python"
IMAGE_SIZE = 32
TRAIN_PER_SUBCLASS = 500
EVAL_PER_SUBCLASS = 100


def default_dir() -> Path:
    from clusterprobe.runners.data.base import user_cache

    return user_cache("cifar100")


def find_folder(data_dir: str | None, download: bool) -> Path:
    """The ``cifar-100-python`` folder: under ``data_dir`` (or it), downloaded if asked."""
    root = Path(data_dir).expanduser() if data_dir else default_dir()
    for candidate in (root / FOLDER, root):
        if all((candidate / f).is_file() for f in ("train", "test", "meta")):
            return candidate
    if download:
        import torchvision

        try:
            torchvision.datasets.CIFAR100(str(root), train=True, download=True)
        except Exception as err:  # network or checksum failure: one clear line
            raise UsageError(f"--download: fetching CIFAR-100 into {root} failed: {err}") from None
        return root / FOLDER
    raise UsageError(
        f"CIFAR-100 not found in {root} (expected {FOLDER}/train, test, meta): pass --data-dir DIR "
        f"holding {FOLDER}/, or add --download to fetch it (~160 MB) there"
    )


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        raw = pickle.load(f, encoding="latin1")  # the official files are Python 2 pickles
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [N, 32, 32, 3], fine int64 [N], coarse int64 [N]) of train or test."""
    d = _unpickle(folder / split)
    data = np.asarray(d["data"], dtype=np.uint8)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are R, G, B planes
    return (
        np.ascontiguousarray(images),
        np.asarray(d["fine_labels"], dtype=np.int64),
        np.asarray(d["coarse_labels"], dtype=np.int64),
    )


def read_meta(folder: Path) -> tuple[list[str], list[str]]:
    """(fine names [100], coarse names [20]) from the meta file."""
    d = _unpickle(folder / "meta")
    return _names(d["fine_label_names"]), _names(d["coarse_label_names"])


class ArrayImages(torch.utils.data.Dataset):
    """uint8 HWC images held in memory, transformed per item."""

    def __init__(self, images: np.ndarray, superclass, subclass, transform):
        self.images = images
        self.superclass = np.asarray(superclass, dtype=np.int64)
        self.subclass = np.asarray(subclass, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = self.transform(Image.fromarray(self.images[i]))
        return image, int(self.superclass[i]), int(self.subclass[i])

    def with_transform(self, transform) -> ArrayImages:
        return ArrayImages(self.images, self.superclass, self.subclass, transform)


def natural_groups(fine: np.ndarray, coarse: np.ndarray, num_coarse: int) -> list[list[int]]:
    """Fine label ids of each coarse label, sorted (the official pairing)."""
    pairs = set(zip(coarse.tolist(), fine.tolist(), strict=True))
    return [sorted(f for c, f in pairs if c == s) for s in range(num_coarse)]


def _select(fine: np.ndarray, keep: dict[int, int], per_subclass: int | None, seed: int):
    """Indices of images whose fine label is kept (sampled per class), and their new ids."""
    index = []
    for old, new in sorted(keep.items(), key=lambda kv: kv[1]):
        members = np.flatnonzero(fine == old)
        if per_subclass is not None and per_subclass < len(members):
            rng = np.random.default_rng(seed * 100_003 + new)
            members = np.sort(rng.choice(members, per_subclass, replace=False))
        index.append(members)
    index = np.concatenate(index) if index else np.empty(0, dtype=np.int64)
    new_ids = np.asarray([keep[int(f)] for f in fine[index]], dtype=np.int64)
    return index, new_ids


def load(config):
    """CIFAR-100, natural or shuffled, optionally subsampled (``classes``/``subclasses``)."""
    from clusterprobe.runners.data.base import HierarchicalData, Labels
    from clusterprobe.runners.data.preprocess import image_transforms

    folder = find_folder(config.data_dir, config.download)
    fine_names, coarse_names = read_meta(folder)
    tr_img, tr_fine, tr_coarse = read_split(folder, "train")
    te_img, te_fine, te_coarse = read_split(folder, "test")

    natural = natural_groups(tr_fine, tr_coarse, len(coarse_names))
    coarse_ids = [c for c, g in enumerate(natural) if g]  # a cut-down copy may lack some
    picked, groups = subsample_groups(
        [natural[c] for c in coarse_ids],
        classes=config.classes,
        subclasses=config.subclasses,
        dataset="cifar100",
    )
    coarse_kept = [coarse_names[coarse_ids[i]] for i in picked]
    names = list(coarse_kept)
    if config.shuffled:
        if len({len(g) for g in groups}) != 1:
            raise UsageError("--shuffle needs superclasses of equal size; add --subclasses K")
        groups = shuffle_groups(groups)
        names = [f"group-{j:02d}" for j in range(len(groups))]
    order = [f for g in groups for f in g]  # global subclass id -> fine label
    keep = {f: k for k, f in enumerate(order)}
    ids = iter(range(len(order)))
    sup_of = superclass_of([[next(ids) for _ in g] for g in groups], len(order))

    tr_idx, tr_sub = _select(tr_fine, keep, config.train_per_subclass, config.data_seed)
    te_idx, te_sub = _select(te_fine, keep, config.eval_per_subclass, config.data_seed)
    tf = image_transforms(config, IMAGE_SIZE)
    train_plain = ArrayImages(tr_img[tr_idx], sup_of[tr_sub], tr_sub, tf.eval)
    return HierarchicalData(
        name="cifar100",
        shuffled=bool(config.shuffled),
        train=train_plain.with_transform(tf.train),
        eval=ArrayImages(te_img[te_idx], sup_of[te_sub], te_sub, tf.eval),
        train_plain=train_plain,
        train_labels=Labels(sup_of[tr_sub], tr_sub),
        eval_labels=Labels(sup_of[te_sub], te_sub),
        superclass_names=names,
        subclass_names=[fine_names[f] for f in order],
        image_size=tf.pre.input_size,
        preprocess=tf.pre,
        record={
            "source": "CIFAR-100 (official python pickles: coarse_labels, fine_labels, meta)",
            "classes": config.classes,
            "subclasses": config.subclasses,
            "coarse_labels": coarse_kept,
            "groups": [[fine_names[f] for f in g] for g in groups],
            "fine_label_ids": [list(g) for g in groups],
            "train_per_subclass": config.train_per_subclass,
            "eval_per_subclass": config.eval_per_subclass,
            "data_seed": config.data_seed,
            "data_dir": str(folder),
            "transforms": tf.record,
        },
    )


def describe(name: str | None = None) -> dict:
    return {
        "superclasses": 20,
        "subclasses_per_superclass": 5,
        "train_per_subclass": TRAIN_PER_SUBCLASS,
        "eval_per_subclass": EVAL_PER_SUBCLASS,
        "image_size": IMAGE_SIZE,
        "offline": False,
        "needs": f"--data-dir DIR holding {FOLDER}/, or --download",
    }
