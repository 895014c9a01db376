"""Peak memory of a measurement.

CPU: the resident-set high-water mark (``VmHWM``). Linux lets a process reset it
(``/proc/self/clear_refs`` <- ``5``), so the peak can be taken over the timed calls
alone, on top of whatever is already resident (the weights). Where that is not
possible, the process-lifetime peak from ``getrusage`` is reported instead and the
row says so. GPU: ``torch.cuda.max_memory_allocated`` (PyTorch's allocator only:
ONNX Runtime and TensorRT allocate outside it, so the bench also records the
device's used memory from ``torch.cuda.mem_get_info``).
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from typing import Any

import torch


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def lifetime_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_peak() -> bool:
    """Reset the process's RSS high-water mark; False where the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@dataclass
class PeakTracker:
    """Peak memory from :meth:`start` to :meth:`stop`."""

    device: torch.device
    resettable: bool = False
    rss_at_start: int | None = None

    def start(self) -> None:
        self.rss_at_start = rss_bytes()
        self.resettable = reset_peak()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def stop(self) -> dict[str, Any]:
        hwm = _status_kib("VmHWM")
        window = self.resettable and hwm is not None
        out: dict[str, Any] = {
            "peak_rss_bytes": hwm * 1024 if window else lifetime_peak_bytes(),
            "peak_rss_scope": "timed calls (VmHWM reset before them)" if window else "process lifetime (ru_maxrss)",
            "rss_before_bytes": self.rss_at_start,
        }
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            free, total = torch.cuda.mem_get_info(self.device)
            out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
            out["cuda_used_bytes"] = int(total - free)
        return out
