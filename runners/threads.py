"""How many CPU threads torch uses: the cores other processes leave free.

Torch's default is one intra-op thread per core. When other busy processes share the
cores (two runs side by side, a study's workers, other users), those threads spin-wait
for each other and for the cores: two ``clusterprobe run --quick`` started together
took 99 s where one alone took 29 s on 2 cores. So unless told (``--threads N``, or
``OMP_NUM_THREADS`` as a study gives its workers), a run takes the cores that other
processes do not keep busy right now (Linux's run queue, sampled a few times at start;
the 1-minute load average elsewhere), at least one. Not the load average on Linux: it
decays over minutes, so a run started just after another finished took one core of
two on an idle machine (measured: the default run trained in 102 s on 1 thread).

The run queue misses a process that is still importing (reading files, not running),
so two runs started together each saw the machine free and took every core (k = 2:
1.54x slower together than one after the other). Each process therefore also leaves a
claim (a file named by its pid, in a folder of the temp dir) for as long as it lives,
and takes at most its share of the cores among the live claimants. The count is fixed
for the whole run (it sets the order of float sums) and recorded on every run (tag
``clusterprobe.torch_threads``).
"""

from __future__ import annotations

import atexit
import os
import statistics
import tempfile
import time
from pathlib import Path


def free_cores(cores: int, load: float) -> int:
    """Cores not busy at ``load`` (runnable processes, the 1-minute load average), >= 1."""
    return max(1, min(cores, cores - int(load + 0.5)))


def pick_threads(
    requested: int | None, cores: int, load: float, env=os.environ, others: int = 0
) -> int | None:
    """The thread count to set: ``requested`` when given; None (keep torch's own choice)
    where ``OMP_NUM_THREADS`` already fixes it; else the free cores, at most this
    process's share of the cores among ``others`` live clusterprobe processes, >= 1."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads {requested}: give a number of threads >= 1")
        return requested
    if env.get("OMP_NUM_THREADS"):
        return None
    return max(1, min(free_cores(cores, load), cores // (1 + others)))


def claims_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"clusterprobe-threads-{os.getuid()}"


_claimed: Path | None = None  # this process's claim while a command runs


def release() -> None:
    """Withdraw this process's claim (a command ended; the process may live on)."""
    global _claimed
    if _claimed is not None:
        _claimed.unlink(missing_ok=True)
        _claimed = None


def claim(folder: Path | None = None) -> None:
    """Leave this process's claim in ``folder`` (withdrawn by :func:`release`, at the
    latest at exit); an unwritable temp dir leaves none (the run queue alone decides)."""
    global _claimed
    folder = folder or claims_dir()
    mine = folder / str(os.getpid())
    try:
        folder.mkdir(exist_ok=True)
        mine.touch()
    except OSError:
        return
    atexit.unregister(release)  # once, however many commands this process runs
    atexit.register(release)
    _claimed = mine


def other_claimants(folder: Path | None = None) -> int:
    """Live processes other than this one with a claim in ``folder``; a dead one's claim
    (a killed run) is cleared."""
    from clusterprobe.tracker.provenance import pid_alive

    folder = folder or claims_dir()
    others = 0
    try:
        for entry in folder.iterdir():
            if entry.name == str(os.getpid()) or not entry.name.isdigit():
                continue
            if pid_alive(int(entry.name)):
                others += 1
            else:
                entry.unlink(missing_ok=True)
    except OSError:
        return 0
    return others


def busy_now(samples: int = 5, interval_s: float = 0.02) -> float:
    """Runnable processes other than this one, the median of a few reads of Linux's run
    queue (``/proc/loadavg``'s running count); the 1-minute load average where there is
    no such file."""
    try:
        counts = []
        for i in range(samples):
            with open("/proc/loadavg") as fh:
                counts.append(int(fh.read().split()[3].split("/")[0]) - 1)  # less ourselves
            if i + 1 < samples:
                time.sleep(interval_s)
        return float(statistics.median(counts))
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def apply_threads(requested: int | None) -> int:
    """Set torch's intra-op threads by :func:`pick_threads` on this machine; the count used."""
    import torch

    claim()
    load, others = 0.0, 0
    if requested is None:
        # Sampling the run queue takes ~80 ms: long enough for runs started together to
        # have left their claims before they are counted.
        load = busy_now()
        others = other_claimants()
    n = pick_threads(requested, os.cpu_count() or 1, load, others=others)
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()
