"""`clusterprobe datasets list|show`: what each dataset holds, which classes a variant uses.

``show NAME --json`` prints only JSON: ``{"groups": [[id, ...], ...]}`` (label
order; wnids for BREEDS) or, with ``--split rand|good|bad`` (BREEDS only),
``{"source": [...], "target": [...]}``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys

from clusterprobe.runners import choices
from clusterprobe.tracker.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    ls = sub.add_parser("list", help="all dataset names with their sizes")
    ls.add_argument("--json", action="store_true", help="print JSON only")
    show = sub.add_parser("show", help="the class lists of one dataset / variant")
    show.add_argument("name", help="dataset name (see `clusterprobe datasets list`)")
    show.add_argument("--subclasses", type=int, default=None, metavar="K")
    show.add_argument("--classes", type=int, default=None, metavar="C")
    show.add_argument(
        "--shuffle", dest="shuffled", action="store_true", help="the paper's shuffled variant"
    )
    show.add_argument("--split", default=None, choices=choices.SPLITS)
    show.add_argument("--breeds-info", default=None, metavar="DIR")
    show.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="dataset root (cifar100, folder); BREEDS lists need no images",
    )
    show.add_argument("--json", action="store_true", help="print JSON only")


def main(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list(args.json)
    if args.action == "show":
        return _show(args)
    raise UsageError("choose an action: `clusterprobe datasets list` or `... show NAME`")


def describe(name: str) -> dict:
    """The registry entry's summary plus its module's ``describe()`` (sizes)."""
    from clusterprobe.runners.data.registry import DATASETS

    entry = DATASETS[name]
    out: dict = {"summary": entry.summary}
    if entry.overrides:
        out["alias_for"] = dict(entry.overrides)
        return out
    try:
        module = importlib.import_module(entry.module)
        fn = module.describe
        out.update(fn(name) if inspect.signature(fn).parameters else fn())
    except Exception as err:  # a loader not installed yet must not break the listing
        out["unavailable"] = f"{type(err).__name__}: {err}"
    return out


def _list(as_json: bool) -> int:
    from clusterprobe.runners.data.registry import DATASETS

    rows = {name: describe(name) for name in DATASETS}
    if as_json:
        json.dump(rows, sys.stdout, indent=1, default=str)
        print()
        return 0
    print(
        f"{'NAME':<20} {'SUPER':>6} {'SUB/SUPER':>9} {'TRAIN/SUB':>9} {'EVAL/SUB':>8} {'PX':>4}  SUMMARY"
    )
    for name, d in rows.items():
        cells = [
            str(d.get(k, ""))
            for k in (
                "superclasses",
                "subclasses_per_superclass",
                "train_per_subclass",
                "eval_per_subclass",
                "image_size",
            )
        ]
        # Long descriptive values (folder: "your folders") would wreck the columns.
        cells = [c if len(c) <= 9 else "-" for c in cells]
        note = d["summary"] + (f" [unavailable: {d['unavailable']}]" if "unavailable" in d else "")
        print(
            f"{name:<20} {cells[0]:>6} {cells[1]:>9} {cells[2]:>9} {cells[3]:>8} {cells[4]:>4}  {note}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    from clusterprobe.runners.data import breeds
    from clusterprobe.runners.data.registry import resolve

    entry = resolve(args.name)
    split = args.split or "none"
    breeds.check_split(split, args.classes, args.subclasses, args.shuffled)
    if args.name in breeds.BREEDS:
        hierarchy = breeds.load_hierarchy(breeds.find_info_dir(args.breeds_info))
        cls = breeds.breeds_classes(
            hierarchy,
            args.name,
            split=split,
            classes=args.classes,
            subclasses=args.subclasses,
            shuffle=args.shuffled,
        )
        if args.json:
            print(json.dumps(cls.as_json()))
            return 0
        variant = "shuffled" if cls.shuffled else "natural"
        sizes = f"{len(cls.source)} superclasses x {len(cls.source[0])} subclasses"
        print(f"{args.name} ({variant}, split {split}): {sizes}")
        for label, name in enumerate(cls.superclass_names):
            domains = [("", cls.source[label])]
            if cls.target:
                domains = [("source: ", cls.source[label]), ("target: ", cls.target[label])]
            for prefix, group in domains:
                members = ", ".join(f"{w} ({hierarchy.name(w).split(',')[0]})" for w in group)
                print(f"{label:>3} {name}: {prefix}{members}")
        return 0

    if split != "none":
        raise UsageError(f"--split {split}: only the BREEDS datasets have source/target splits")
    from clusterprobe.runners.config import RunConfig
    from clusterprobe.runners.data.registry import load_dataset

    # Build the dataset with the fewest images the loaders accept; only its classes matter.
    config = RunConfig(
        dataset=args.name,
        classes=args.classes,
        subclasses=args.subclasses,
        shuffled=bool(args.shuffled) or any(k == "shuffled" and v for k, v in entry.overrides),
        data_dir=args.data_dir,
        train_per_subclass=2,
        eval_per_subclass=2,
    )
    data = load_dataset(config)
    groups = [[data.subclass_names[k] for k in g] for g in data.groups()]
    if args.json:
        print(json.dumps({"groups": groups}))
        return 0
    variant = "shuffled" if data.shuffled else "natural"
    print(f"{args.name} ({variant}): {data.num_superclasses} superclasses, digest {data.digest()}")
    for label, (name, group) in enumerate(zip(data.superclass_names, groups, strict=True)):
        print(f"{label:>3} {name}: {', '.join(group)}")
    return 0
