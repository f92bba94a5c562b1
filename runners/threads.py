"""How many CPU threads torch uses: the cores other processes leave free.

Torch's default is one intra-op thread per core. When other busy processes share the
cores (two runs side by side, a study's workers, other users), those threads spin-wait
for each other and for the cores: two ``clusterprobe run --quick`` started together
took 99 s where one alone took 29 s on 2 cores. So unless told (``--threads N``, or
``OMP_NUM_THREADS`` as a study gives its workers), a run takes the cores not already
busy by the 1-minute load average, at least one. The count used is recorded on every
run (tag ``clusterprobe.torch_threads``).
"""

from __future__ import annotations

import os


def free_cores(cores: int, load: float) -> int:
    """Cores not busy at ``load`` (runnable processes, the 1-minute load average), >= 1."""
    return max(1, min(cores, cores - int(load + 0.5)))


def pick_threads(requested: int | None, cores: int, load: float, env=os.environ) -> int | None:
    """The thread count to set: ``requested`` when given; None (keep torch's own choice)
    where ``OMP_NUM_THREADS`` already fixes it; else the free cores."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads {requested}: give a number of threads >= 1")
        return requested
    if env.get("OMP_NUM_THREADS"):
        return None
    return free_cores(cores, load)


def apply_threads(requested: int | None) -> int:
    """Set torch's intra-op threads by :func:`pick_threads` on this machine; the count used."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    n = pick_threads(requested, os.cpu_count() or 1, load)
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()
