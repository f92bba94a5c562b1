"""Thread count for processes sharing a machine: the free cores, unless told."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from clusterprobe.runners.threads import free_cores, pick_threads


@pytest.mark.parametrize(
    ("cores", "load", "want"),
    [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 7.0, 1), (16, 3.2, 13), (16, 0, 16)],
)
def test_free_cores_leave_the_busy_ones(cores, load, want):
    assert free_cores(cores, load) == want


def test_explicit_threads_and_omp_num_threads_win():
    assert pick_threads(3, 2, 5.0, env={}) == 3  # --threads: as asked, even above the cores
    assert pick_threads(None, 16, 4.0, env={"OMP_NUM_THREADS": "2"}) is None  # torch reads it
    assert pick_threads(None, 16, 4.0, env={}) == 12
    with pytest.raises(ValueError, match="threads 0: give a number of threads >= 1"):
        pick_threads(0, 2, 0.0, env={})


def test_apply_threads_sets_torch_in_a_fresh_process():
    code = (
        "from clusterprobe.runners.threads import apply_threads; import torch; "
        "print(apply_threads(1), torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's run queue")
def test_a_spinning_process_counts_as_busy_now():
    """The run queue, not the load average: a process spinning now is seen at once."""
    from clusterprobe.runners.threads import busy_now

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert busy_now() >= 1
    finally:
        spinner.kill()
        spinner.wait()


def test_live_claimants_share_the_cores():
    assert pick_threads(None, 2, 0.0, env={}, others=1) == 1  # two runs started together
    assert pick_threads(None, 16, 0.0, env={}, others=3) == 4
    assert pick_threads(None, 16, 14.0, env={}, others=1) == 2  # the run queue still counts
    assert pick_threads(None, 2, 0.0, env={}, others=5) == 1  # never below one
    assert pick_threads(2, 2, 0.0, env={}, others=5) == 2  # --threads wins


def test_claims_count_live_processes_and_clear_dead_ones(tmp_path):
    from clusterprobe.runners import threads

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        (tmp_path / str(live.pid)).touch()
        (tmp_path / str(dead.pid)).touch()
        threads.claim(tmp_path)
        assert threads.other_claimants(tmp_path) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [str(live.pid), str(os.getpid())]
        )
        threads.release()
        assert sorted(p.name for p in tmp_path.iterdir()) == [str(live.pid)]
    finally:
        live.kill()
        live.wait()
