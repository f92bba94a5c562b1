"""Large freed blocks are reused instead of coming back from the kernel as fresh pages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from clusterprobe.runners.allocator import user_tuned

# Ten 40 MB tensors one after another (each above glibc's default mmap threshold): the
# minor page faults they cost, in a fresh process, with and without keep_large_blocks.
SCRIPT = """
import resource, sys, torch
from clusterprobe.runners.allocator import keep_large_blocks
kept = keep_large_blocks() if sys.argv[1] == "keep" else None
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(40 << 20, dtype=torch.uint8)  # the heap grows to its working size first
before = faults()
for _ in range(10):
    torch.ones(40 << 20, dtype=torch.uint8)
print(kept, faults() - before)
"""


def faults(mode: str, **environ: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**env, **environ},
    )
    kept, count = out.stdout.split()
    return kept, int(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_blocks_are_reused_without_page_faults():
    kept, with_keep = faults("keep")
    _, without = faults("plain")
    assert kept == "True"
    assert without > 10 * (40 << 20) // 4096 // 2  # fresh pages every time: ~10,240 each
    assert with_keep < without / 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize(
    "environ",
    [
        {"MALLOC_MMAP_THRESHOLD_": "33554432"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432"},
    ],
)
def test_glibc_settings_in_the_environment_are_left_alone(environ):
    # the opt-out: glibc's own knob, set to its ceiling, maps each 40 MB block afresh again
    kept, count = faults("keep", **environ)
    assert kept == "False"
    assert count > 10 * (40 << 20) // 4096 // 2


def test_user_tuned_reads_only_the_threshold_settings():
    assert not user_tuned({})
    assert not user_tuned({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2", "MALLOC_ARENA_MAX": "2"})
    assert user_tuned({"MALLOC_TRIM_THRESHOLD_": "0"})
    assert user_tuned({"GLIBC_TUNABLES": "glibc.cpu.x=1:glibc.malloc.trim_threshold=0"})
