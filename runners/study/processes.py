"""Run a study's workers: in this process for one, as child processes for ``--workers N``.

Each child is ``clusterprobe study --worker I --resume NAME`` on the same storage and
store; the parent waits for all of them and terminates the rest if it is interrupted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

from clusterprobe.runners.study.options import StudyOptions
from clusterprobe.runners.study.storage import ENV_STORAGE
from clusterprobe.runners.study.worker import log_progress, run_worker
from clusterprobe.tracker.killpoint import kill_point
from clusterprobe.tracker.store import ENV_TRACKING_URI, Store


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """The GPUs the workers may use: ``CUDA_VISIBLE_DEVICES``'s entries where it is set
    (the user's choice), else every GPU torch counts (none without CUDA)."""
    chosen = env.get("CUDA_VISIBLE_DEVICES")
    if chosen is not None:
        return [g.strip() for g in chosen.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def worker_env(
    index: int, workers: int, base: Mapping[str, str], gpus: list[str], cores: int
) -> dict[str, str]:
    """The environment of worker ``index`` of ``workers``: GPU ``index mod G`` of ``gpus``
    (through ``CUDA_VISIBLE_DEVICES``, so each worker sees one device as ``cuda``) and the
    machine's ``cores`` divided among the workers as its CPU threads (OpenMP and MKL, which
    torch reads at start), unless ``base`` sets the thread counts already."""
    env = dict(base)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    # N workers share this machine's cores: one BLAS/OpenMP pool each, not N oversubscribed.
    threads = str(max(1, cores // workers))
    env.setdefault("OMP_NUM_THREADS", threads)
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    return env


def run_workers(opts: StudyOptions, spec: str, name: str, store: Store) -> None:
    if opts.workers == 1:
        run_worker(spec, name, store, heartbeat=opts.heartbeat, quiet=opts.quiet)
        return
    gpus, cores = visible_gpus(os.environ), os.cpu_count() or 1
    procs = []
    for i in range(opts.workers):
        env = worker_env(i, opts.workers, os.environ, gpus, cores)
        cmd = [
            sys.executable,
            "-m",
            "clusterprobe.runners.cli",
            "study",
            "--worker",
            str(i),
            "--resume",
            name,
            "--heartbeat",
            str(opts.heartbeat),
        ]
        if store.artifact_root:
            cmd += ["--artifact-root", store.artifact_root]
        if opts.quiet:
            cmd.append("--quiet")
        # The URLs travel in the environment, not on the command line `ps` shows to every
        # user: either may hold a database password.
        env[ENV_TRACKING_URI] = store.tracking_uri
        env[ENV_STORAGE] = spec
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
