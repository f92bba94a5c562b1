"""Pick the compute device from a flag: "auto", "cpu", "cuda" or "cuda:N"."""

from __future__ import annotations

import torch
from clusterprobe.tracker.errors import UsageError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU. Asking for absent CUDA is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name!r}: no CUDA device is available; use 'cpu' or 'auto'")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s); "
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
        return device
    raise UsageError(f"--device {name!r}: choose 'auto', 'cpu', 'cuda' or 'cuda:N'")
