"""`study --workers N` on a machine with G GPUs: what environment each worker process gets.

No GPU is needed: the GPU list is an argument (``visible_gpus`` reads it from
``CUDA_VISIBLE_DEVICES`` or torch), so four GPUs are as testable as none.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from clusterprobe.runners.study.processes import visible_gpus, worker_env


@pytest.mark.parametrize(
    ("gpus", "workers", "cores", "want_gpu", "want_threads"),
    [
        (["0", "1"], 4, 16, ["0", "1", "0", "1"], "4"),  # worker i on GPU i mod G
        (["0", "1", "2", "3"], 2, 16, ["0", "1"], "8"),
        (["5", "7"], 3, 2, ["5", "7", "5"], "1"),  # the user's list; at least one thread
        ([], 2, 2, [None, None], "1"),  # CPU only: no CUDA_VISIBLE_DEVICES set
    ],
)
def test_worker_i_gets_gpu_i_mod_g_and_its_share_of_cores(
    gpus, workers, cores, want_gpu, want_threads
):
    base = {"PATH": "/bin", "OTHER": "kept"}
    envs = [worker_env(i, workers, base, gpus, cores) for i in range(workers)]
    assert [e.get("CUDA_VISIBLE_DEVICES") for e in envs] == want_gpu
    assert all(e["OMP_NUM_THREADS"] == e["MKL_NUM_THREADS"] == want_threads for e in envs)
    assert all(e["OTHER"] == "kept" for e in envs) and base == {"PATH": "/bin", "OTHER": "kept"}


def test_explicit_thread_count_wins():
    env = worker_env(1, 2, {"OMP_NUM_THREADS": "3"}, ["0"], 16)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"


def test_visible_gpus_follow_cuda_visible_devices():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []  # the user hid every GPU
    import torch

    want = [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    assert visible_gpus({}) == want


def test_a_worker_process_sees_its_environment():
    """What a child started with worker_env's mapping reads: one GPU, its thread count."""
    env = worker_env(3, 4, {"PATH": "/usr/bin:/bin"}, ["0", "1"], 8)
    code = "import os, torch; print(os.environ['CUDA_VISIBLE_DEVICES'], torch.get_num_threads())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "2"]
