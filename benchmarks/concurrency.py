"""Runs that share a machine: k `clusterprobe run --quick` started together vs one after another.

For each k (default 1, 2, 4), each run in its own store under a temp folder: first the k
runs one after another (the sequential wall time), then the k runs started at once (the
together wall time). Prints both, each run's training seconds, and together / sequential:
1.0 means sharing the machine costs nothing over queueing the runs. The thread count is
each run's own choice (the free cores, ``runners/threads.py``) unless ``--threads`` is given.

    .venv/bin/python benchmarks/concurrency.py                  # k = 1, 2, 4
    .venv/bin/python benchmarks/concurrency.py --k 2 --threads 2   # torch's old default on 2 cores
    .venv/bin/python benchmarks/concurrency.py --k 2 --stagger 5   # the second arrives mid-run
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def command(store: Path, seed: int, threads: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "clusterprobe.runners.cli", "run", "--quick", "--quiet"]
    cmd += ["--seed", str(seed), "--store", str(store), "--save", "none"]
    return cmd + (["--threads", str(threads)] if threads else [])


def train_seconds(out: str) -> float:
    m = re.search(r"seconds: train ([0-9.]+)", out)
    return float(m.group(1)) if m else float("nan")


def launch(
    cmds: list[list[str]], together: bool, stagger: float = 0.0
) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    outs = []
    if together:
        procs = []
        for i, c in enumerate(cmds):
            if i and stagger:
                time.sleep(stagger)  # the next run arrives while the first trains
            procs.append(subprocess.Popen(c, stdout=subprocess.PIPE, text=True))
        outs = [p.communicate()[0] for p in procs]
        codes = [p.returncode for p in procs]
    else:
        done = [subprocess.run(c, stdout=subprocess.PIPE, text=True) for c in cmds]
        outs, codes = [d.stdout for d in done], [d.returncode for d in done]
    if any(codes):
        raise SystemExit(f"a run failed: exit codes {codes}")
    return time.perf_counter() - t0, [train_seconds(o) for o in outs]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", default="1,2,4", help="comma-separated run counts (default 1,2,4)")
    p.add_argument("--threads", type=int, default=None, help="--threads for every run")
    p.add_argument(
        "--stagger", type=float, default=0.0, help="seconds between the 'together' starts"
    )
    args = p.parse_args(argv)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for k in (int(x) for x in args.k.split(",")):
            runs = [
                command(Path(tmp) / f"k{k}-{mode}-{i}", i, args.threads)
                for mode in ("seq", "tog")
                for i in range(k)
            ]
            seq, seq_train = launch(runs[:k], together=False)
            tog, tog_train = launch(runs[k:], together=True, stagger=args.stagger)
            print(
                f"k={k}: sequential {seq:.1f} s (train {', '.join(f'{s:.1f}' for s in seq_train)}),"
                f" together {tog:.1f} s (train {', '.join(f'{s:.1f}' for s in tog_train)}):"
                f" together / sequential = {tog / seq:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
