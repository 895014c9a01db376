"""Where a network call's time goes: ONNX Runtime's profiler by op type, torch.profiler by operator.

Used by the bench when a target is missed (the report shows what limits it), and
by ``benchmarks/ort_tuning.py``.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


def summarize_ort_trace(trace: list[dict[str, Any]], top: int = 12) -> dict[str, Any]:
    """Kernel time by op type from an ORT profile (``cat: Node`` events of the last run)."""
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last_start = runs[-1]["ts"] if runs else 0
    by_type: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for event in trace:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        if event.get("ts", 0) < last_start:
            continue
        op = event.get("args", {}).get("op_name", "?")
        by_type[op] += event.get("dur", 0) / 1e6
        count[op] += 1
    total = sum(by_type.values())
    rows = [{"op": op, "seconds": s, "share": s / total if total else 0.0, "nodes": count[op]}
            for op, s in sorted(by_type.items(), key=lambda kv: -kv[1])[:top]]
    return {"kernel_seconds": total, "run_seconds": (runs[-1]["dur"] / 1e6) if runs else None, "by_op_type": rows}


def ort_profile(model_path: str | Path, options: Any, feeds: Mapping[str, Any], runs: int = 2) -> dict[str, Any]:
    """Profile ``runs`` calls of an ORT session created with ``options`` (a SessionOptions, profiling turned on)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        arrays = {k: (v.numpy() if isinstance(v, Tensor) else v) for k, v in feeds.items()}
        for _ in range(runs):
            session.run(None, arrays)
        trace_file = session.end_profiling()
        trace = json.loads(Path(trace_file).read_text())
    return summarize_ort_trace(trace)


def torch_profile(module: nn.Module, inputs: list[Tensor], top: int = 12) -> dict[str, Any]:
    """torch.profiler's operators by self CPU time for one call (after one warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        module(*inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            module(*inputs)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    return {"self_cpu_seconds": total,
            "by_op": [{"op": e.key, "seconds": e.self_cpu_time_total / 1e6,
                       "share": (e.self_cpu_time_total / 1e6) / total if total else 0.0, "calls": e.count}
                      for e in events[:top]]}
