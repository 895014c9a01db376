"""What the bench ran on, its matmul peak (measured in the same run, so "share of peak" compares numbers
taken under the same clock and load), and how one call is timed there: seconds and peak memory (CPU: the
resident-set high-water mark reset before the timed calls; GPU: PyTorch's allocator peak and the device's
used memory, since ORT and TensorRT allocate outside PyTorch)."""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mvg_rt.versions import PACKAGES, package_versions


def _proc(path: str, name: str) -> str | None:
    try:
        with open(path) as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith(name)), None)
    except OSError:
        return None


def _kib(name: str) -> int | None:
    value = _proc("/proc/self/status", name + ":")
    return int(value.split()[0]) * 1024 if value else None


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info() -> dict[str, Any]:
    import psutil  # installed with accelerate

    flags = (_proc("/proc/cpuinfo", "flags") or "").split()
    gpus = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return {"cpu": _proc("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
            "cpu_flags": sorted({f for f in flags if f.startswith(("avx", "fma", "amx"))}),  # they set the FP32 peak
            "cores": {"physical": psutil.cpu_count(logical=False), "logical": psutil.cpu_count(logical=True)},
            "torch_threads": torch.get_num_threads(), "ram_bytes": int(psutil.virtual_memory().total),
            "gpus": [{"name": g.name, "memory_bytes": int(g.total_memory), "capability": f"{g.major}.{g.minor}"}
                     for g in gpus],
            "platform": platform.platform(), "load_average_at_start": load_average(),
            "versions": package_versions(PACKAGES + ("onnxruntime-gpu", "numpy", "psutil"))}


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """Waits for queued device work (CUDA is asynchronous); a no-op on the CPU."""
    device = torch.device(device)
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def clocked(call: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, float]:
    """``call()`` and its seconds, queued device work included."""
    started = time.perf_counter()
    result = call()
    synchronizer(device)()
    return result, time.perf_counter() - started


def timed(call: Callable[[], Any], repeat: int, device: torch.device | str = "cpu", warmup: int = 0,
          budget_s: float | None = None) -> tuple[dict[str, Any], Any]:
    """``warmup`` untimed calls, then ``repeat`` timed ones, stopping early once at least 2 took more than
    ``budget_s`` (a 60 s SEINE call need not run 5 times). Returns median/p10/p90 and the peak memory of
    the timed calls, and the last call's output."""
    device, sync = torch.device(device), synchronizer(device)
    for _ in range(warmup):
        call()
    sync()
    rss_before = _kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets the high-water mark
        reset = True
    except OSError:
        reset = False
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    samples: list[float] = []
    output = None
    while len(samples) < repeat and not (budget_s and len(samples) >= 2 and sum(samples) > budget_s):
        started = time.perf_counter()
        output = call()
        sync()
        samples.append(time.perf_counter() - started)
    hwm = _kib("VmHWM") if reset else None
    memory: dict[str, Any] = {"peak_rss_bytes": hwm or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                              "peak_rss_scope": "timed calls" if hwm else "process lifetime (ru_maxrss)",
                              "rss_before_bytes": rss_before}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        memory |= {"cuda_max_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
                   "cuda_used_bytes": int(total - free)}
    values = np.asarray(samples)
    return {"median_s": float(np.median(values)), "p10_s": float(np.percentile(values, 10)),
            "p90_s": float(np.percentile(values, 90)), "min_s": float(values.min()),
            "samples_s": [round(float(v), 6) for v in values], "memory": memory}, output


def matmul_peak(device: str = "cpu", dtype: torch.dtype = torch.float32, size: int = 2048,
                repeats: int = 7) -> dict[str, Any]:
    """Best-of-``repeats`` FLOP/s of a ``size`` x ``size`` matmul (2 n^3 FLOPs) on all threads."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2))
    out = torch.empty(size, size, device=device, dtype=dtype)
    stats, _ = timed(lambda: torch.mm(a, b, out=out), repeats, device, warmup=2)
    return {"size": size, "dtype": str(dtype).removeprefix("torch."), "device": str(device),
            "threads": torch.get_num_threads(), "repeats": repeats, "best_seconds": stats["min_s"],
            "median_seconds": stats["median_s"], "flops_per_second": 2.0 * size**3 / stats["min_s"]}
