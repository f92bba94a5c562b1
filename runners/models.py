"""Models by timm name, and the layers we tap, as data.

(Interface fixed by the lead; the main-job helper fills in the bodies.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tap:
    """One layer whose activation is measured; index = forward order, 0..L-1."""

    index: int
    name: str  # module path in the model, e.g. "layer1.0"
    module: torch.nn.Module
    kind: str  # "block" | "stage" | "conv" | "fc" | "attn" | "mlp"
    capture: str = "output"  # "output": forward hook; "input": forward pre-hook (ViT after-attn)
