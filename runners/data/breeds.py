"""BREEDS (Santurkar et al., arXiv 2008.04859): ImageNet regrouped into superclasses.

The class lists are rebuilt from the three BREEDS hierarchy files
(``class_hierarchy.txt``, ``dataset_class_info.json``, ``node_names.txt``) with
the procedure of the robustness library's BREEDS helpers, re-implemented here:

1. Keep the hierarchy edges that lead to an ImageNet class (the "leaves").
2. A node's level is its *longest* path from the root ``n00001740`` (entity).
3. Candidate superclasses: the nodes at the dataset's level (under ``ancestor``
   when given), sorted by wnid; eligible ones reach at least the dataset's
   standard subclass count of leaves.
4. ``split=None``: one legacy ``RandomState(2)``; per superclass (label order)
   ``choice(sorted leaves, n, replace=False)``.
   ``split="rand"``: the same draw of the full count, first half = source,
   second half = target. ``"good"``/``"bad"``: deterministic partitions of the
   superclass's child subtrees (similar subclasses across / within domains).

The variants of arXiv 2311.07864 (Nguyen & Kornblith) on top: ``classes`` first
draws that many eligible superclasses on the same generator (labels in draw
order), ``subclasses`` draws that many per superclass instead of the standard
count (eligibility unchanged, so entity13 keeps 13 superclasses); the shuffled
variant regroups the result (:func:`~clusterprobe.runners.data.groups.shuffle_groups`).

Images come from an ImageNet root laid out as ``train/<wnid>/*`` and
``val/<wnid>/*`` (the usual folder-per-class layout), mapped by wnid.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from clusterprobe.runners.choices import SPLITS
from clusterprobe.runners.data.groups import SEED, shuffle_groups
from clusterprobe.tracker.errors import UsageError

ROOT_WNID = "n00001740"  # entity
INFO_FILES = ("class_hierarchy.txt", "dataset_class_info.json", "node_names.txt")
# The BREEDS-calibrated ("modified") hierarchy, pinned to a commit; sha256 of each file
# so a download that changed or was cut short is refused rather than silently used.
INFO_URL = (
    "https://raw.githubusercontent.com/MadryLab/BREEDS-Benchmarks/"
    "f83be509107e89f41dde0e4e8e7f8be051fbb891/imagenet_class_hierarchy/modified/"
)
INFO_SHA256 = {
    "dataset_class_info.json": "be90503d57a001f95e094a81dc4de90772bfc58546ca58061d6474799829afd0",
    "class_hierarchy.txt": "039cfaddf9732855b93f7899ba4b5ba6d80f8dbe15cfaad566f575b6c8ce0216",
    "node_names.txt": "322af45711ed69a7b199f11225bd964c7dae71df3c586498bef2f7c9e031dedb",
}


@dataclass(frozen=True)
class BreedsSpec:
    level: int
    ancestor: str | None
    subclasses: int  # the standard count per superclass (also the eligibility threshold)
    superclasses: int  # how many the standard construction yields (for `datasets list`)


BREEDS: dict[str, BreedsSpec] = {
    "entity13": BreedsSpec(level=3, ancestor=None, subclasses=20, superclasses=13),
    "entity30": BreedsSpec(level=4, ancestor=None, subclasses=8, superclasses=30),
    "living17": BreedsSpec(level=5, ancestor="n00004258", subclasses=4, superclasses=17),
    "nonliving26": BreedsSpec(level=5, ancestor="n00021939", subclasses=4, superclasses=26),
}


# --- the hierarchy ------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    """The BREEDS hierarchy restricted to ancestors of ImageNet classes."""

    leaves: tuple[str, ...]  # ImageNet wnids, in class-index order
    leaf_names: dict[str, str]
    node_names: dict[str, str]
    children: dict[str, tuple[str, ...]]
    level: dict[str, int]  # longest path from the root
    leaf_set: frozenset[str] = frozenset()  # set(leaves), for membership tests

    def name(self, wnid: str) -> str:
        return self.node_names.get(wnid) or self.leaf_names.get(wnid) or wnid

    def descendants(self, node: str) -> set[str]:
        """``node`` and every node below it."""
        seen, todo = {node}, [node]
        while todo:
            for c in self.children.get(todo.pop(), ()):
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        return seen

    def leaves_under(self, node: str) -> list[str]:
        """Sorted ImageNet classes reachable from ``node``.

        As in the reference helpers, the walk does not continue below a leaf
        (a leaf reached only through another leaf is not counted), and a leaf
        node counts itself.
        """
        leaf_set = self.leaf_set
        found: set[str] = {node} if node in leaf_set else set()
        seen, todo = {node}, [node]
        while todo:
            for c in self.children.get(todo.pop(), ()):
                if c in leaf_set:
                    found.add(c)
                elif c not in seen:
                    seen.add(c)
                    todo.append(c)
        return sorted(found)

    def nodes_at_level(self, level: int, ancestor: str | None = None) -> list[str]:
        nodes = [n for n, lv in self.level.items() if lv == level]
        if ancestor is not None:
            below = self.descendants(ancestor)
            nodes = [n for n in nodes if n in below]
        return sorted(nodes)


def load_hierarchy(info_dir: str | os.PathLike) -> Hierarchy:
    """Parse the three BREEDS files in ``info_dir`` (see :func:`find_info_dir`)."""
    info_dir = Path(info_dir)
    with open(info_dir / "dataset_class_info.json") as f:
        class_info = json.load(f)
    leaves = tuple(c[1] for c in sorted(class_info, key=lambda c: int(c[0])))
    leaf_names = {c[1]: c[2] for c in class_info}
    edges = []
    for line in (info_dir / "class_hierarchy.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            edges.append((parts[0], parts[1]))
    node_names = {}
    for line in (info_dir / "node_names.txt").read_text().splitlines():
        wnid, _, name = line.strip().partition("\t")
        if wnid:
            node_names[wnid] = name

    # Keep only nodes from which an ImageNet class can be reached (walk up from the leaves).
    parents: dict[str, list[str]] = defaultdict(list)
    nodes = set()
    for p, c in edges:
        parents[c].append(p)
        nodes.update((p, c))
    keep = {leaf for leaf in leaves if leaf in nodes}
    todo = list(keep)
    while todo:
        for p in parents.get(todo.pop(), ()):
            if p not in keep:
                keep.add(p)
                todo.append(p)
    children: dict[str, list[str]] = defaultdict(list)
    for p, c in edges:
        if c in keep and c not in children[p]:
            children[p].append(c)
    frozen_children = {p: tuple(cs) for p, cs in children.items()}
    return Hierarchy(
        leaves=leaves,
        leaf_names=leaf_names,
        node_names=node_names,
        children=frozen_children,
        level=_longest_path_levels(frozen_children, ROOT_WNID),
        leaf_set=frozenset(leaves),
    )


def _longest_path_levels(children: dict[str, tuple[str, ...]], root: str) -> dict[str, int]:
    """Level of every node reachable from ``root``: its longest path from the root.

    (The reference walks every path top-down and keeps the maximum depth; on a
    DAG that is the longest path, computed here in topological order.)
    """
    reach = {root}
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in reach:
                reach.add(c)
                todo.append(c)
    indegree = dict.fromkeys(reach, 0)
    for p in reach:
        for c in children.get(p, ()):
            indegree[c] += 1
    level = dict.fromkeys(reach, 0)
    ready = [n for n in reach if indegree[n] == 0]
    while ready:
        p = ready.pop()
        for c in children.get(p, ()):
            level[c] = max(level[c], level[p] + 1)
            indegree[c] -= 1
            if indegree[c] == 0:
                ready.append(c)
    return level


# --- finding the files ----------------------------------------------------------


def cache_dir() -> Path:
    """Where downloaded hierarchy files live: $CLUSTERPROBE_CACHE/breeds or ~/.cache/..."""
    from clusterprobe.runners.data.base import user_cache

    return user_cache("breeds")


def find_info_dir(breeds_info: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The folder holding the three hierarchy files.

    ``--breeds-info DIR`` wins; otherwise the cache, filled once from the
    BREEDS-Benchmarks repository when ``download`` (the files are ~110 kB).
    """
    if breeds_info is not None:
        path = Path(breeds_info).expanduser()
        missing = [f for f in INFO_FILES if not (path / f).is_file()]
        if missing:
            raise UsageError(
                f"--breeds-info {breeds_info}: missing {', '.join(missing)}; the folder must hold "
                f"{', '.join(INFO_FILES)} (BREEDS-Benchmarks imagenet_class_hierarchy/modified/)"
            )
        return path
    cached = cache_dir()
    if all((cached / f).is_file() for f in INFO_FILES):
        return cached
    reason = "downloading is off"
    if download:
        try:
            _download(cached)
            return cached
        except (OSError, ValueError) as err:  # URLError is an OSError
            reason = f"download from {INFO_URL} failed: {err}"
    raise UsageError(
        f"BREEDS hierarchy files not found: pass --breeds-info DIR (a folder with "
        f"{', '.join(INFO_FILES)} from github.com/MadryLab/BREEDS-Benchmarks, "
        f"imagenet_class_hierarchy/modified/), or run once with internet access to cache them "
        f"in {cached} ({reason})"
    )


def _download(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in INFO_FILES:
        with urllib.request.urlopen(INFO_URL + name, timeout=30) as response:
            data = response.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != INFO_SHA256[name]:
            raise ValueError(f"{name} has sha256 {digest}, expected {INFO_SHA256[name]}")
        tmp = target / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, target / name)  # atomic: parallel first runs never see half a file


# --- the class lists ---------------------------------------------------------------


@dataclass(frozen=True)
class BreedsClasses:
    """Which ImageNet classes a BREEDS variant uses, in label order."""

    dataset: str
    split: str  # "none" | "rand" | "good" | "bad"
    shuffled: bool
    superclasses: list[str]  # wnids of the superclass nodes, label order (natural variant)
    superclass_names: list[str]
    source: list[list[str]]  # per label: subclass wnids (all of them for split "none")
    target: list[list[str]] = field(default_factory=list)  # empty for split "none"
    num_classes: int | None = None
    num_subclasses: int | None = None

    def as_json(self) -> dict:
        """What `datasets show --json` prints."""
        if self.split == "none":
            return {"groups": self.source}
        return {"source": self.source, "target": self.target}


def check_split(split, classes, subclasses, shuffled) -> None:
    """A source/target split is defined only for the standard class lists: UsageError
    naming the options that a split cannot be combined with."""
    if (split or "none") == "none":
        return
    given = [
        flag
        for flag, value in (
            ("--classes", classes),
            ("--subclasses", subclasses),
            ("--shuffle", shuffled),
        )
        if value not in (None, False)
    ]
    if given:
        raise UsageError(
            f"--split {split} cannot be combined with {', '.join(given)}: the BREEDS recipe "
            f"defines source/target splits only for the standard class lists"
        )


def breeds_classes(
    hierarchy: Hierarchy,
    dataset: str,
    *,
    split: str = "none",
    classes: int | None = None,
    subclasses: int | None = None,
    shuffle: bool = False,
) -> BreedsClasses:
    """The class lists of one BREEDS dataset / variant (see the module docstring)."""
    spec = BREEDS[dataset]
    split = split or "none"
    if split not in SPLITS:
        raise UsageError(f"--split {split!r}: choose from {', '.join(SPLITS)}")
    check_split(split, classes, subclasses, shuffle)

    rng = np.random.RandomState(SEED)
    candidates = hierarchy.nodes_at_level(spec.level, spec.ancestor)
    leaves = [hierarchy.leaves_under(n) for n in candidates]
    eligible = [i for i, lv in enumerate(leaves) if len(lv) >= spec.subclasses]
    if classes is not None and not 2 <= classes <= len(eligible):
        raise UsageError(
            f"--classes {classes}: {dataset} has {len(eligible)} superclasses; use 2..{len(eligible)}"
        )
    if subclasses is not None and not 1 <= subclasses <= spec.subclasses:
        raise UsageError(
            f"--subclasses {subclasses}: {dataset} has {spec.subclasses} subclasses per "
            f"superclass; use 1..{spec.subclasses}"
        )
    if classes:
        eligible = [int(i) for i in rng.choice(eligible, classes, replace=False)]
    superclasses = [candidates[i] for i in eligible]
    names = [hierarchy.name(w) for w in superclasses]

    target: list[list[str]] = []
    if split == "none":
        n = subclasses or spec.subclasses
        source = [[str(w) for w in rng.choice(leaves[i], n, replace=False)] for i in eligible]
    else:
        source = []
        # The reference iterates sorted(superclasses); without --classes that is label order.
        for sc in sorted(superclasses):
            src, tgt = _split_superclass(hierarchy, sc, spec.subclasses, split, rng)
            source.append(src)
            target.append(tgt)
    if shuffle:
        source = shuffle_groups(source, SEED)
        names = [f"group-{j:02d}" for j in range(len(source))]
    return BreedsClasses(
        dataset=dataset,
        split=split,
        shuffled=shuffle,
        superclasses=superclasses,
        superclass_names=names,
        source=source,
        target=target,
        num_classes=classes,
        num_subclasses=subclasses,
    )


def _split_superclass(
    hierarchy: Hierarchy, superclass: str, n: int, split: str, rng: np.random.RandomState
) -> tuple[list[str], list[str]]:
    """Partition one superclass's subclasses into source and target halves."""
    # Descend through single-child chains to the first node that branches.
    desc = sorted(hierarchy.children.get(superclass, ()))
    while len(desc) == 1:
        desc = sorted(hierarchy.children.get(desc[0], ()))
    subtrees = {d: hierarchy.leaves_under(d) for d in desc}
    half = n // 2
    if split == "rand":
        pool = sorted(w for d in desc for w in subtrees[d])
        sel = [str(w) for w in rng.choice(pool, 2 * half, replace=False)]
        return sel[:half], sel[half:]

    # Largest subtrees first (stable: ties keep wnid order).
    by_size = sorted(subtrees.items(), key=lambda kv: -len(kv[1]))
    src: list[str] = []
    tgt: list[str] = []
    spare: list[str] = []
    for _, members in by_size:
        n_src, n_tgt = len(src), len(tgt)
        if split == "bad":
            # Fill one domain with whole subtrees before the other: similar subclasses
            # end up on the same side.
            if n_src <= n_tgt and n_src < half:
                spare.extend(members[half - n_src :])
                src.extend(members[: half - n_src])
            elif n_tgt < half:
                spare.extend(members[half - n_tgt :])
                tgt.extend(members[: half - n_tgt])
        else:
            # "good": split every subtree across the domains.
            if len(members) == 1:
                cut = 1 if n_src < half else 0
            else:
                cut = min(len(members) // 2, half - n_src)
            if n_src < half:
                src.extend(members[:cut])
            if n_tgt < half:
                tgt.extend(members[cut : cut + half - n_tgt])
    if split == "bad":
        if len(src) < half:
            src.extend(spare[: half - len(src)])
        if len(tgt) < half:
            tgt.extend(spare[: half - len(tgt)])
    if len(src) != half or len(tgt) != half or set(src) & set(tgt):
        raise ValueError(f"{superclass}: {split} split did not yield two disjoint halves of {half}")
    return src, tgt


# --- images ------------------------------------------------------------------------

IMAGE_SIZE = 224
EVAL_PER_SUBCLASS = 50  # ImageNet val images per class: the paper clusters all of them
SHOWN = 5  # missing wnids listed in an error


def imagenet_root(data_dir: str | None, dataset: str) -> Path:
    """The ImageNet folder (with ``train/<wnid>/`` and ``val/<wnid>/``), checked."""
    layout = "an ImageNet folder with train/<wnid>/ and val/<wnid>/ sub-folders"
    if not data_dir:
        raise UsageError(f"--dataset {dataset} needs --imagenet-root DIR ({layout})")
    root = Path(data_dir).expanduser()
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise UsageError(
            f"--imagenet-root {data_dir}: no {' or '.join(missing)}/ folder; expected {layout}"
        )
    return root


def check_wnids(root: Path, wnids: list[str], dataset: str) -> None:
    """UsageError listing the class folders of ``wnids`` that ``root`` lacks."""
    missing = [
        f"{split}/{w}"
        for w in wnids
        for split in ("train", "val")
        if not (root / split / w).is_dir()
    ]
    if missing:
        shown = ", ".join(missing[:SHOWN]) + (", ..." if len(missing) > SHOWN else "")
        lacking = len({m.split("/")[1] for m in missing})
        raise UsageError(
            f"ImageNet root {root} lacks {lacking} of the {len(wnids)} classes {dataset} needs "
            f"({len(missing)} folders missing: {shown}); point --imagenet-root at a full "
            f"ImageNet with train/<wnid>/ and val/<wnid>/, or ask for fewer classes "
            f"(--classes/--subclasses)"
        )


def load(config):
    """The BREEDS dataset ``config.dataset`` (variant and split from ``config``).

    Trains on ImageNet train images of the chosen subclasses, evaluates on their
    val images. With ``split`` rand/good/bad the run uses the source domain's
    subclasses (BREEDS trains on the source); the target lists go to the record.
    """
    from clusterprobe.runners.data.base import HierarchicalData, Labels
    from clusterprobe.runners.data.groups import superclass_of
    from clusterprobe.runners.data.images import ImageFiles, gather
    from clusterprobe.runners.data.preprocess import image_transforms

    name = config.dataset
    if name not in BREEDS:
        raise UsageError(
            f"--dataset {name!r} is not a BREEDS dataset; choose from {', '.join(BREEDS)}"
        )
    info_dir = find_info_dir(config.breeds_info)
    hierarchy = load_hierarchy(info_dir)
    cls = breeds_classes(
        hierarchy,
        name,
        split=config.split or "none",
        classes=config.classes,
        subclasses=config.subclasses,
        shuffle=config.shuffled,
    )
    root = imagenet_root(config.data_dir, name)
    wnids = [w for g in cls.source for w in g]
    check_wnids(root, wnids, name)

    ids = iter(range(len(wnids)))
    sup_of = superclass_of([[next(ids) for _ in g] for g in cls.source], len(wnids))
    tr_paths, tr_sup, tr_sub = gather(
        [root / "train" / w for w in wnids], sup_of, config.train_per_subclass, config.data_seed
    )
    ev_paths, ev_sup, ev_sub = gather(
        [root / "val" / w for w in wnids], sup_of, config.eval_per_subclass, config.data_seed
    )
    empty = [
        f"{split}/{wnids[k]}"
        for split, sub in (("train", tr_sub), ("val", ev_sub))
        for k in sorted(set(range(len(wnids))) - set(sub.tolist()))
    ]
    if empty:
        raise UsageError(
            f"ImageNet root {root}: {len(empty)} class folders hold no images "
            f"({', '.join(empty[:SHOWN])}{', ...' if len(empty) > SHOWN else ''})"
        )

    tf = image_transforms(config, IMAGE_SIZE)
    train_plain = ImageFiles(tr_paths, tr_sup, tr_sub, tf.eval, tf.eval_draft)
    return HierarchicalData(
        name=name,
        shuffled=bool(config.shuffled),
        train=train_plain.with_transform(tf.train, tf.train_draft),
        eval=ImageFiles(ev_paths, ev_sup, ev_sub, tf.eval, tf.eval_draft),
        train_plain=train_plain,
        train_labels=Labels(tr_sup, tr_sub),
        eval_labels=Labels(ev_sup, ev_sub),
        superclass_names=cls.superclass_names,
        subclass_names=wnids,
        image_size=tf.pre.input_size,
        preprocess=tf.pre,
        record={
            "source": "BREEDS (arXiv 2008.04859) over ImageNet",
            "split": cls.split,
            "classes": cls.num_classes,
            "subclasses": cls.num_subclasses,
            "superclass_wnids": cls.superclasses,
            "groups": cls.source,
            "target_groups": cls.target,
            "subclass_labels": {w: hierarchy.name(w) for w in wnids},
            "train_per_subclass": config.train_per_subclass,
            "eval_per_subclass": config.eval_per_subclass,
            "data_seed": config.data_seed,
            "imagenet_root": str(root),
            "breeds_info": str(info_dir),
            "transforms": tf.record,
        },
    )


def describe(name: str | None = None) -> dict:
    spec = BREEDS[name or "living17"]
    return {
        "superclasses": spec.superclasses,
        "subclasses_per_superclass": spec.subclasses,
        "train_per_subclass": "~1300 (all ImageNet train images)",
        "eval_per_subclass": EVAL_PER_SUBCLASS,
        "image_size": IMAGE_SIZE,
        "offline": False,
        "needs": "--imagenet-root DIR; hierarchy files via --breeds-info DIR or one download",
    }
