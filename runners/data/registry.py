"""Dataset registry: name -> loader. Help, `datasets list` and validation read it.

Each entry names a module with ``load(config) -> HierarchicalData`` and
``describe() -> dict`` (sizes for `datasets list`); modules are imported only
when their dataset is used, so no loader's dependencies leak into another's.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from clusterprobe.tracker.errors import UsageError, did_you_mean


@dataclass(frozen=True)
class DatasetEntry:
    module: str  # module with load(config) and describe()
    summary: str  # one line for `datasets list`
    overrides: tuple[tuple[str, object], ...] = ()  # config fields an alias fixes


DATASETS: dict[str, DatasetEntry] = {
    "synthetic": DatasetEntry(
        "clusterprobe.runners.data.synthetic",
        "procedural shapes x gratings, 8 superclasses x 4 subclasses, 32 px (offline)",
    ),
    "synthetic-shuffled": DatasetEntry(
        "clusterprobe.runners.data.synthetic",
        "alias: synthetic with --shuffle",
        overrides=(("shuffled", True),),
    ),
    # Real datasets (need files on disk; see `clusterprobe datasets show NAME`).
    "entity13": DatasetEntry(
        "clusterprobe.runners.data.breeds",
        "BREEDS ENTITY-13 from ImageNet: 13 superclasses x 20 subclasses, 224 px",
    ),
    "entity30": DatasetEntry(
        "clusterprobe.runners.data.breeds",
        "BREEDS ENTITY-30 from ImageNet: 30 superclasses x 8 subclasses, 224 px",
    ),
    "living17": DatasetEntry(
        "clusterprobe.runners.data.breeds",
        "BREEDS LIVING-17 from ImageNet: 17 superclasses x 4 subclasses, 224 px",
    ),
    "nonliving26": DatasetEntry(
        "clusterprobe.runners.data.breeds",
        "BREEDS NON-LIVING-26 from ImageNet: 26 superclasses x 4 subclasses, 224 px",
    ),
    "cifar100": DatasetEntry(
        "clusterprobe.runners.data.cifar100",
        "CIFAR-100: 20 coarse superclasses x 5 fine subclasses, 32 px",
    ),
    "folder": DatasetEntry(
        "clusterprobe.runners.data.folder",
        "your images: DIR/<superclass>/<subclass>/*.jpg (optional DIR/train, DIR/val)",
    ),
}


def resolve(name: str) -> DatasetEntry:
    try:
        return DATASETS[name]
    except KeyError:
        hint = did_you_mean(name, DATASETS)
        raise UsageError(
            f"--dataset {name!r} is not known{hint}; choose from {', '.join(sorted(DATASETS))}"
        ) from None


def canonical(config):
    """Apply an alias's overrides: synthetic-shuffled -> synthetic + shuffle."""
    entry = resolve(config.dataset)
    if not entry.overrides:
        return config
    base = next(n for n, e in DATASETS.items() if e.module == entry.module and not e.overrides)
    return config.replace(dataset=base, **dict(entry.overrides))


def load_dataset(config):
    """Build the HierarchicalData that ``config`` asks for."""
    config = canonical(config)
    return importlib.import_module(resolve(config.dataset).module).load(config)
