"""What every benchmark's clock needs on a GPU: its queued work finished before it is read."""

from __future__ import annotations

import torch


def sync(device) -> None:
    """Wait for the work queued on ``device`` (a torch.device or its name); a no-op off CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
