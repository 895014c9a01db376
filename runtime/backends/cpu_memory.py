"""Keep freed CPU memory in the process, so a denoising loop does not page-fault its activations back in.

PyTorch's CPU allocator takes every tensor from glibc ``malloc`` and gives it back on
free. glibc serves large blocks with ``mmap`` and returns freed memory at the top of
the heap to the OS (``M_TRIM_THRESHOLD``), so every UNet call maps its activations
afresh, and the kernel zero-fills each 4 KiB page on first touch: measured for the SD
1.4 UNet at 256x256, batch 2, one thread, 2-core EPYC: ~470,000 minor page faults
(1.8 GiB) per call, 3.72 s of CPU per call; with mmap off and trimming above 2 GiB,
0 faults and 2.87 s (-23%). ONNX Runtime does not pay this (its CPU arena keeps
its blocks), which is part of why its UNet step was faster on the same machine.

Heap growth, the risk of serving everything from one heap: a loop of SD 1.4 calls of
mixed shapes (UNet at 32x32 and 24x40 latents, VAE encode and decode, 5 iterations) kept
its RSS flat at 4.75 GiB with 0 faults from the third iteration on, and a PIE round grew
the RSS by 0.24 GiB once (``benchmarks/results/cpu-2core/pie_round_cpu.md``). A synthetic
pattern does grow: one 64 MiB tensor allocated and freed in a Python loop left a
slightly-too-small hole behind each time (heap +64 MiB per iteration), so a caller with
such a pattern should pass ``retain_cpu_memory=False`` to the torch backend.

The settings are process-wide, applied once, and only where the C library is glibc
(``mallopt`` is looked up through ctypes; elsewhere nothing changes and the report says
so). The retained memory is bounded by what the process already used at its peak plus
the 2 GiB trim threshold: freed blocks are reused by the next call of the same shapes.
jemalloc or tcmalloc preloaded with ``LD_PRELOAD`` do the same from outside the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 2**31 - 1  # the largest value mallopt's int takes


@cache
def retain_freed_memory() -> dict[str, object]:
    """Tell glibc to serve every block from its heap (no mmap) and trim only above 2 GiB; what was set.

    Cached: the first call decides for the whole process and later calls report the same.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
    except (OSError, AttributeError, TypeError):
        return {"retained": False, "reason": f"C library {name!r} is not glibc: allocator left as it is"}
    applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return {"retained": applied, "glibc": version, "mmap_max": 0, "trim_threshold_bytes": TRIM_THRESHOLD_BYTES}
