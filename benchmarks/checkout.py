"""Import ``clusterprobe.runners.*`` / ``clusterprobe.tracker.*`` from this checkout.

The GPU benchmarks run on machines where clusterprobe is not pip-installed (and mlflow
is absent): importing this module first registers package objects whose ``__path__`` is
the repo folder, so the engine imports without the distribution.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def install_shim() -> None:
    """Register ``clusterprobe``, ``clusterprobe.tracker`` and ``clusterprobe.runners`` as
    package objects over the repo folders (their ``__init__`` files are not needed)."""
    pkg = types.ModuleType("clusterprobe")
    pkg.__path__ = []
    sys.modules["clusterprobe"] = pkg
    for sub in ("tracker", "runners"):
        mod = types.ModuleType(f"clusterprobe.{sub}")
        mod.__path__ = [str(REPO / sub)]
        mod.__package__ = f"clusterprobe.{sub}"
        sys.modules[f"clusterprobe.{sub}"] = mod
        setattr(pkg, sub, mod)
