"""Your own hierarchy on disk: ``root/<superclass>/<subclass>/*.{jpg,png,...}``.

With ``root/train/`` and ``root/val/`` (each laid out as above) those are the
train and evaluation images. Without them every subclass's images are split
once, seeded by ``data_seed``: ``eval_per_subclass`` images (default 20%, at
least one) for evaluation, the rest for training. Folder names are the class
names; superclasses and subclasses are taken in sorted order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from clusterprobe.runners.data.groups import shuffle_groups, subsample_groups, superclass_of
from clusterprobe.runners.data.images import ImageFiles, list_dirs, list_images, take
from clusterprobe.tracker.errors import UsageError

IMAGE_SIZE = 224  # the largest default input size: ImageNet-like photos
EVAL_FRACTION = 0.2  # held out per subclass when there is no val/ root
SIZE_SAMPLE = 64  # files whose headers give the folder's own image size


def scan(root: Path) -> dict[str, list[str]]:
    """{superclass: [subclass, ...]} of a ``root/<superclass>/<subclass>/`` tree."""
    tree = {s: list_dirs(root / s) for s in list_dirs(root)}
    empty = [s for s, subs in tree.items() if not subs]
    if empty:
        raise UsageError(
            f"{root}: superclass folders without subclass folders: {', '.join(empty[:5])}; "
            f"expected {root}/<superclass>/<subclass>/<images>"
        )
    if len(tree) < 2:
        raise UsageError(
            f"{root}: found {len(tree)} superclass folder(s); need at least 2 "
            f"(layout {root}/<superclass>/<subclass>/<images>)"
        )
    return tree


def load(config):
    """The folder hierarchy at ``config.data_dir`` (natural or shuffled)."""
    root, split_roots = _root(config)
    train_root = root / "train" if split_roots else root
    supers, picked, groups, names = _groups(config, root, train_root)
    order = [k for g in groups for k in g]  # global subclass id -> "super/sub"
    ids = iter(range(len(order)))
    sup_of = superclass_of([[next(ids) for _ in g] for g in groups], len(order))
    train_paths, eval_paths, tr_sub, ev_sub = _split(config, root, train_root, split_roots, order)
    return _hierarchical_data(
        config,
        train_paths,
        eval_paths,
        sup_of,
        tr_sub,
        ev_sub,
        names=names,
        order=order,
        record={
            "source": f"image folders {root}",
            "split_roots": split_roots,
            "classes": config.classes,
            "subclasses": config.subclasses,
            "natural_superclasses": [supers[i] for i in picked],
            "groups": groups,
            "train_per_subclass": config.train_per_subclass,
            "eval_per_subclass": config.eval_per_subclass,
            "data_seed": config.data_seed,
        },
    )


def _root(config) -> tuple[Path, bool]:
    """The checked ``--data-dir`` and whether it holds train/ and val/ roots."""
    if not config.data_dir:
        raise UsageError(
            "--dataset folder needs --data-dir DIR laid out as DIR/<superclass>/<subclass>/<images> "
            "(optionally DIR/train/... and DIR/val/...)"
        )
    root = Path(config.data_dir).expanduser()
    if not root.is_dir():
        raise UsageError(f"--data-dir {config.data_dir}: no such folder")
    return root, (root / "train").is_dir() and (root / "val").is_dir()


def _groups(config, root: Path, train_root: Path):
    """(natural superclasses, picked ones, subclass groups as "super/sub", group names)."""
    tree = scan(train_root)
    supers = sorted(tree)
    natural = [[f"{s}/{c}" for c in tree[s]] for s in supers]
    picked, groups = subsample_groups(
        natural, classes=config.classes, subclasses=config.subclasses, dataset=f"folder {root}"
    )
    names = [supers[i] for i in picked]
    if config.shuffled:
        if len({len(g) for g in groups}) != 1:
            raise UsageError(
                "--shuffle needs superclasses with equal subclass counts; add --subclasses K"
            )
        groups = shuffle_groups(groups)
        names = [f"group-{j:02d}" for j in range(len(groups))]
    return supers, picked, groups, names


def _split(config, root: Path, train_root: Path, split_roots: bool, order: list[str]):
    """Train and eval image paths of every subclass (in ``order``) and their subclass ids."""
    train_paths: list[str] = []
    eval_paths: list[str] = []
    train_sub: list[int] = []
    eval_sub: list[int] = []
    for k, rel in enumerate(order):
        seed = config.data_seed * 100_003 + k
        if split_roots:
            tr, ev = _from_split_roots(config, root, train_root, rel, seed)
        else:
            tr, ev = _held_out(config, root, rel, seed)
        if not tr or not ev:
            raise UsageError(f"{rel}: no images for {'training' if not tr else 'evaluation'}")
        train_paths += tr
        eval_paths += ev
        train_sub += [k] * len(tr)
        eval_sub += [k] * len(ev)
    tr_sub = np.asarray(train_sub, dtype=np.int64)
    ev_sub = np.asarray(eval_sub, dtype=np.int64)
    return train_paths, eval_paths, tr_sub, ev_sub


def _from_split_roots(config, root: Path, train_root: Path, rel: str, seed: int):
    """One subclass's train images from train/, eval images from val/."""
    val_dir = root / "val" / rel
    if not val_dir.is_dir():
        raise UsageError(f"{root}/val lacks {rel}/ (present in {root}/train)")
    tr = take(list_images(train_root / rel), config.train_per_subclass, seed)
    ev = take(list_images(val_dir), config.eval_per_subclass, seed)
    return tr, ev


def _held_out(config, root: Path, rel: str, seed: int):
    """One subclass's images split once, seeded: ``eval_per_subclass`` (or 20%) held out."""
    files = list_images(root / rel)
    if len(files) < 2:
        raise UsageError(f"{root / rel}: {len(files)} image(s); need 2+ to split train/eval")
    perm = np.random.default_rng(seed).permutation(len(files))
    n_eval = config.eval_per_subclass or max(1, round(EVAL_FRACTION * len(files)))
    n_eval = min(n_eval, len(files) - 1)
    ev = sorted(files[i] for i in perm[:n_eval])
    tr = take(sorted(files[i] for i in perm[n_eval:]), config.train_per_subclass, seed)
    return tr, ev


def _hierarchical_data(
    config, train_paths, eval_paths, sup_of, tr_sub, ev_sub, *, names, order, record
):
    """The splits as image-file datasets with the run's transforms, and their record."""
    from clusterprobe.runners.data.base import HierarchicalData, Labels
    from clusterprobe.runners.data.preprocess import image_transforms

    tf = image_transforms(config, native_size(train_paths + eval_paths))
    train_plain = ImageFiles(train_paths, sup_of[tr_sub], tr_sub, tf.eval, tf.eval_draft)
    return HierarchicalData(
        name="folder",
        shuffled=bool(config.shuffled),
        train=train_plain.with_transform(tf.train, tf.train_draft),
        eval=ImageFiles(eval_paths, sup_of[ev_sub], ev_sub, tf.eval, tf.eval_draft),
        train_plain=train_plain,
        train_labels=Labels(sup_of[tr_sub], tr_sub),
        eval_labels=Labels(sup_of[ev_sub], ev_sub),
        superclass_names=names,
        subclass_names=order,
        image_size=tf.pre.input_size,
        record={**record, "transforms": tf.record},
        preprocess=tf.pre,
    )


def native_size(paths: list[str]) -> int:
    """The input size a folder defaults to: its images' own (median shorter side of a
    sample, read from the headers), at most ``IMAGE_SIZE``. Small images are not blown up
    to 224 px, which made 32 px digits train ~5x slower than at their own size."""
    from clusterprobe.runners.data.imagecheck import image_size

    step = max(1, len(paths) // SIZE_SAMPLE)
    sides = []
    for path in paths[::step][:SIZE_SAMPLE]:
        try:
            sides.append(min(image_size(path)))
        except Exception:
            continue  # a bad file: the decode check names it
    return int(min(IMAGE_SIZE, np.median(sides))) if sides else IMAGE_SIZE


def describe(name: str | None = None) -> dict:
    return {
        "superclasses": "your folders",
        "subclasses_per_superclass": "your folders",
        "train_per_subclass": "all (or --train-per-subclass)",
        "eval_per_subclass": "val/ or 20% held out",
        "image_size": f"the images' own (at most {IMAGE_SIZE})",
        "offline": True,
        "needs": "--data-dir DIR/<superclass>/<subclass>/<images> (optional DIR/train, DIR/val)",
    }
