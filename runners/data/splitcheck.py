"""Warn about splits too small to say anything: a few images per subclass train nothing
and cluster trivially, yet a run on them finishes and looks like a result.

(``--quick`` on a folder of 12 images per subclass held out 11 for evaluation and trained
on 1 image per subclass, 4 in all, without a word.)
"""

from __future__ import annotations

import numpy as np

MIN_TRAIN_PER_SUBCLASS = 5  # below this, training on the split is a smoke test
MIN_EVAL_PER_SUBCLASS = 2  # below this, no subclass can form a cluster of its own


def split_warnings(train_subclass: np.ndarray, eval_subclass: np.ndarray) -> list[str]:
    """One line per split whose smallest subclass has fewer images than the minimum."""
    out = []
    for split, labels, least, flag in (
        ("train", train_subclass, MIN_TRAIN_PER_SUBCLASS, "--train-per-subclass"),
        ("eval", eval_subclass, MIN_EVAL_PER_SUBCLASS, "--eval-per-subclass"),
    ):
        _, counts = np.unique(np.asarray(labels), return_counts=True)
        if len(counts) and counts.min() < least:
            out.append(
                f"the {split} split has {int(counts.min())} image(s) in its smallest subclass "
                f"({len(labels)} in all; fewer than {least} per subclass says little); "
                f"check {flag} and how many images each subclass folder holds"
            )
    return out
