"""Keep large freed CPU blocks in the process instead of handing them back to the kernel.

glibc serves a block above its mmap threshold (at most 32 MB by default) with fresh pages
from the kernel and unmaps it on free, so every such tensor is paid again in page faults
(a fault and a zeroed 4 kB page per 4 kB touched). At 224 px nearly everything a CPU
run allocates is above it: a batch of 64 images is 38.5 MB of float32, a ResNet-50
activation 200 MB. Raising the thresholds lets freed blocks be reused from the heap (at
most ``KEEP`` of free memory held at the top of the heap): on 2 cores a ResNet-50
training step at 224 px (batch 32) ran 1.25x faster and its forward pass at batch 64
1.8x (``benchmarks/allocator.py``, ``benchmarks/eval_model.py --plain-allocator``), for
~16% more peak memory. Pixels and numbers are unchanged: only where the memory comes
from. A no-op where the C library has no ``mallopt`` (macOS, musl), and where the user
has tuned glibc's allocator already: set ``MALLOC_MMAP_THRESHOLD_`` (say to 33554432,
glibc's ceiling) to give the memory back to the kernel again, for example with many
study workers on one machine.
"""

from __future__ import annotations

import ctypes
import os

KEEP = 1 << 30  # bytes: blocks up to this size come from (and return to) the heap

# glibc's own settings (mallopt(3)): one of them set means the user chose, and we keep out
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
USER_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")

# mallopt's parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_large_blocks(limit: int = KEEP) -> bool:
    """Ask the C allocator to reuse freed blocks up to ``limit`` bytes rather than unmap
    them; True when it agreed (glibc), False where it cannot (no ``mallopt``) or the
    environment already tunes glibc's thresholds (``USER_SETTINGS``, ``GLIBC_TUNABLES``)."""
    if user_tuned(os.environ):
        return False
    try:  # the process's own symbols: find_library("c") would run ldconfig (~10 ms a command)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, limit) and mallopt(_M_TRIM_THRESHOLD, limit))


def user_tuned(environ) -> bool:
    """Whether ``environ`` sets glibc's malloc thresholds itself."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    return any(environ.get(name) for name in USER_SETTINGS) or any(
        name in tunables for name in USER_TUNABLES
    )
