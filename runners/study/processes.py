"""Run a study's workers: in this process for one, as child processes for ``--workers N``.

Each child is ``clusterprobe study --worker I --resume NAME`` on the same storage and
store; the parent waits for all of them and terminates the rest if it is interrupted.
"""

from __future__ import annotations

import os
import subprocess
import sys

from clusterprobe.runners.study.options import StudyOptions
from clusterprobe.runners.study.worker import log_progress, run_worker
from clusterprobe.tracker.killpoint import kill_point
from clusterprobe.tracker.store import Store


def run_workers(opts: StudyOptions, spec: str, name: str, store: Store) -> None:
    if opts.workers == 1:
        run_worker(spec, name, store, heartbeat=opts.heartbeat, quiet=opts.quiet)
        return
    env = dict(os.environ)
    # N workers share this machine's cores: one BLAS/OpenMP pool each, not N oversubscribed.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // opts.workers)))
    procs = []
    for i in range(opts.workers):
        cmd = [
            sys.executable,
            "-m",
            "clusterprobe.runners.cli",
            "study",
            "--worker",
            str(i),
            "--resume",
            name,
            "--storage",
            spec,
            "--tracking-uri",
            store.tracking_uri,
            "--heartbeat",
            str(opts.heartbeat),
        ]
        if store.artifact_root:
            cmd += ["--artifact-root", store.artifact_root]
        if opts.quiet:
            cmd.append("--quiet")
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env))
    kill_point("study-workers")
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
        raise
    bad = [(i, c) for i, c in enumerate(codes) if c != 0]
    if bad:  # the study may still be complete: the other workers took over the slots
        log_progress(
            False,
            "worker process(es) ended with errors ("
            + ", ".join(f"#{i}: exit {c}" for i, c in bad)
            + "); see their messages above",
        )
