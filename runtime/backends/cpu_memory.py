"""Keep freed CPU memory in the process, so a denoising loop does not page-fault its activations back in.

PyTorch's CPU allocator takes every tensor from glibc ``malloc`` and gives it back on
free. glibc serves large blocks with ``mmap`` and returns freed memory at the top of
the heap to the OS (``M_TRIM_THRESHOLD``), so every UNet call maps its activations
afresh, and the kernel zero-fills each 4 KiB page on first touch: for the SD 1.4 UNet
on a 2-core CPU that was 23% of a call's CPU time, and what made the PyTorch PIE loop
slower than diffusers' (ONNX Runtime's CPU arena keeps its blocks and does not pay
it). The page faults, the CPU seconds and the heap growth measured with these settings:
`benchmarks/results/cpu-2core/cpu_memory.md`. A caller that allocates and frees one
large tensor in a loop (which grows the heap) should pass ``retain_cpu_memory=False``.

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
