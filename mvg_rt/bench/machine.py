"""What the benchmark ran on, and the machine's measured matmul peak.

The peak is measured in the same run as everything else (a square matmul in the
benchmark's dtype on all intra-op threads, best of several), so "fraction of peak"
compares two numbers taken under the same conditions (clock, thermal state, load).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import time
from typing import Any

import torch

PACKAGES = ("mvg-rt", "torch", "diffusers", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt",
            "optimum", "optimum-onnx", "numpy", "psutil")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD extensions that decide the FP32 peak (AVX2/FMA, AVX-512, AMX)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def core_counts() -> dict[str, int | None]:
    try:
        import psutil

        return {"physical": psutil.cpu_count(logical=False), "logical": psutil.cpu_count(logical=True)}
    except ImportError:
        return {"physical": None, "logical": os.cpu_count()}


def total_ram_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            continue
    return out


def gpu_info() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append({"index": index, "name": props.name, "memory_bytes": int(props.total_memory),
                     "capability": f"{props.major}.{props.minor}"})
    return gpus


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": core_counts(),
        "torch_threads": torch.get_num_threads(),
        "ram_bytes": total_ram_bytes(),
        "gpus": gpu_info(),
        "platform": platform.platform(),
        "load_average_at_start": load_average(),
        "versions": versions(),
    }


def matmul_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, size: int = 2048,
                repeats: int = 7, warmup: int = 2) -> dict[str, Any]:
    """Best-of-``repeats`` FLOP/s of a ``size`` x ``size`` matmul (2 n^3 FLOPs) on all threads."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for index in range(warmup + repeats):
        sync()
        started = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        if index >= warmup:
            times.append(time.perf_counter() - started)
    flops = 2.0 * size**3
    best = min(times)
    return {"size": size, "dtype": str(dtype).removeprefix("torch."), "device": str(device),
            "threads": torch.get_num_threads(), "repeats": repeats, "best_seconds": best,
            "median_seconds": sorted(times)[len(times) // 2], "flops_per_second": flops / best}
