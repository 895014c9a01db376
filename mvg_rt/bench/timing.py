"""Timing a call: warm-up, then repeated wall-clock samples, summarised as median / p10 / p90."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """Waits for queued device work (CUDA is asynchronous); a no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(call: Callable[[], Any], repeat: int, warmup: int, device: torch.device | str = "cpu",
               budget_s: float | None = None, min_repeat: int = 2) -> list[float]:
    """``warmup`` untimed calls, then ``repeat`` timed ones (seconds each, device work included).

    With ``budget_s``, timing stops early once at least ``min_repeat`` calls took more
    than ``budget_s`` together (a 60 s SEINE call on a CPU need not run 5 times).
    """
    sync = synchronizer(device)
    for _ in range(warmup):
        call()
    sync()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        sync()
        samples.append(time.perf_counter() - started)
        if budget_s is not None and len(samples) >= min_repeat and sum(samples) > budget_s:
            break
    return samples


def summarize(samples: list[float]) -> dict[str, Any]:
    values = np.asarray(samples, dtype=np.float64)
    return {
        "median_s": float(np.median(values)),
        "p10_s": float(np.percentile(values, 10)),
        "p90_s": float(np.percentile(values, 90)),
        "min_s": float(values.min()),
        "samples_s": [round(float(v), 6) for v in values],
    }
