"""Per-superclass Ward clustering from Gram matrices: the paper's protocol.

(Interface fixed by the lead; the engine helper fills in the bodies.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ProtocolResult:
    factors: tuple[int, ...]
    superclasses: list[int]
    ami: np.ndarray  # float64 [L, S, F]
    purity: np.ndarray  # float64 [L, S, F]
    assignments: dict[tuple[int, int], np.ndarray]  # (layer, superclass) -> int [F, n]
