"""Large freed blocks are reused instead of coming back from the kernel as fresh pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


def faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
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
