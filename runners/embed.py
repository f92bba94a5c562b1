"""Stream images through a model and reduce each tapped layer to Gram matrices.

(Interface fixed by the lead; the engine helper fills in the bodies.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Embedding:
    """What the model's evaluation pass leaves behind; enough to re-cluster.

    Rows of ``grams[s]`` follow ``eval_index[s]`` (indices into the eval split).
    """

    layer_names: list[str]
    grams: dict[int, np.ndarray]  # superclass -> float32 [L, n, n], Gram of unit vectors
    eval_index: dict[int, np.ndarray]  # superclass -> int64 [n] indices into the eval split
    pixel_grams: dict[int, np.ndarray]  # superclass -> float32 [n, n], raw pixels
    pooled: list[np.ndarray]  # per layer float32 [N_eval, C_l] (GAP / token mean), eval order
    dead: dict[int, list[int]] = field(default_factory=dict)  # layer -> superclasses with zero rows
