"""Keeps the memory XLA frees on a CPU for its next call, where the C library is glibc.

XLA's CPU runtime allocates each call's buffers (a training step's activations, an online
model's count tables) with malloc and frees them when the call returns. glibc hands large blocks
back to the kernel (through mmap, or by trimming the heaps of its per-thread arenas), so the next
call faults every page in again: on a 2-core CPU, online compression spent 40% of its time in the
kernel doing that. `keep_freed_memory` sets glibc's own knobs (`mallopt`): one arena, no mmap,
no trimming, so freed blocks are reused (all three: one arena with no trimming, or no mmap
with no trimming, changed nothing on the training step measured below). It
is not a library because there is none to take: another allocator (jemalloc, tcmalloc) would
have to be installed outside pip and preloaded before Python starts.

The price is memory: the process keeps its peak, fragmented, until it ends. Measured on the
2-core CPU (the coding figures are in BENCHMARKS.md): online compression of 100 KB 47 -> 31 s,
2.2 -> 4.0 GB; a run's portable compression 1.44 times faster on 100 KB (the parallel pass),
0.7 -> 0.6 GB on a short input; 60 training steps of the demo 36 -> 28 s
but 1.2 -> 4.4 GB, which at a 2048-byte context (14 GB a step) a 24 GB machine would not hold.
So compress.py calls it and train.py does not. A no-op with LMC_MALLOC=default, and where the C
library is not glibc.

Call it before any thread allocates (compress.py: before importing JAX): an arena limit set
later does not apply to threads that already have one.
"""

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
ENV = "LMC_MALLOC"  # 'default' leaves glibc's settings alone


def keep_freed_memory() -> bool:
    """Sets glibc's allocator to reuse freed memory (see the module docstring); returns whether
    it did."""
    if os.environ.get(ENV) == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(mallopt(option, value) == 1 for option, value in settings)
