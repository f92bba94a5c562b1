"""Class-list operations shared by the real datasets: subsample and shuffle groups.

A *group* is the list of subclass ids (wnids, fine-label ids, folder names) of one
superclass; a dataset's groups in label order define its hierarchy. The draws
follow the code of arXiv 2311.07864 (itself built on the BREEDS helpers): numpy's
legacy ``RandomState`` seeded with 2, ``choice(..., replace=False)``, so class
lists match the published ones and stay stable across numpy versions (the legacy
generator's stream is frozen by numpy's compatibility policy).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from clusterprobe.tracker.errors import UsageError

SEED = 2  # the BREEDS / paper seed for every class-list draw


def shuffle_groups(groups: Sequence[Sequence], seed: int = SEED) -> list[list]:
    """The paper's shuffled variant: superclasses made of unrelated subclasses.

    Concatenate the groups in label order, shuffle the flat list once with a
    fresh ``RandomState(seed)``, cut it into consecutive groups of the first
    group's size. Group j becomes label j.
    """
    flat = [k for g in groups for k in g]
    np.random.RandomState(seed).shuffle(flat)
    size = len(groups[0])
    return [flat[i : i + size] for i in range(0, len(flat), size)]


def subsample_groups(
    groups: Sequence[Sequence],
    *,
    classes: int | None = None,
    subclasses: int | None = None,
    seed: int = SEED,
    dataset: str = "dataset",
) -> tuple[list[int], list[list]]:
    """Draw ``classes`` groups, then ``subclasses`` members of each, on one generator.

    Returns (indices of the kept groups in draw order, their members). Without
    ``subclasses`` a group keeps its members in their natural order; with it the
    members are drawn (draw order), as BREEDS does.
    """
    check_counts(groups, classes=classes, subclasses=subclasses, dataset=dataset)
    rng = np.random.RandomState(seed)
    index = list(range(len(groups)))
    if classes:
        index = [int(i) for i in rng.choice(index, classes, replace=False)]
    kept = [list(groups[i]) for i in index]
    if subclasses:
        kept = [[g[int(j)] for j in rng.choice(len(g), subclasses, replace=False)] for g in kept]
    return index, kept


def check_counts(
    groups: Sequence[Sequence],
    *,
    classes: int | None,
    subclasses: int | None,
    dataset: str,
) -> None:
    """UsageError unless 2 <= classes <= #groups and 1 <= subclasses <= smallest group."""
    if classes is not None and not 2 <= classes <= len(groups):
        raise UsageError(
            f"--classes {classes}: {dataset} has {len(groups)} superclasses; use 2..{len(groups)}"
        )
    smallest = min(len(g) for g in groups)
    if subclasses is not None and not 1 <= subclasses <= smallest:
        raise UsageError(
            f"--subclasses {subclasses}: {dataset} has {smallest} subclasses per superclass; "
            f"use 1..{smallest}"
        )


def superclass_of(groups: Sequence[Sequence[int]], num_subclasses: int) -> np.ndarray:
    """int64 [K]: the label of each global subclass id, from groups of global ids."""
    out = np.full(num_subclasses, -1, dtype=np.int64)
    for label, group in enumerate(groups):
        out[list(group)] = label
    return out
