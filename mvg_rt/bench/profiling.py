"""Where a UNet call's time goes, for a missed target: ONNX Runtime's profiler by op type, torch.profiler
by operator (self CPU time), after one warm-up call."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from torch import Tensor

from mvg_rt.bench.rows import Row
from mvg_rt.components import UNET
from mvg_rt.runtime.factory import RuntimeSpec, open_runtime


def _shares(seconds: dict[str, float], counts: dict[str, int], top: int) -> list[dict[str, Any]]:
    total = sum(seconds.values())
    return [{"op": op, "seconds": s, "share": s / total if total else 0.0, "calls": counts[op]}
            for op, s in sorted(seconds.items(), key=lambda kv: -kv[1])[:top]]


def profile_unet(spec: RuntimeSpec, feeds: dict[str, Tensor]) -> Row:
    with open_runtime(spec) as runtime:
        return Row("profile", spec.label, spec.to_dict(), "unet", metrics=_profile(runtime.backend, feeds))


def _profile(backend: Any, feeds: dict[str, Tensor], top: int = 12) -> dict[str, Any]:
    if backend.name == "torch":
        from torch.profiler import ProfilerActivity, profile

        backend.infer(UNET, feeds)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            backend.infer(UNET, feeds)
        events = prof.key_averages()
        return {"tool": "torch.profiler (self CPU time by operator)",
                "by_op": _shares({e.key: e.self_cpu_time_total / 1e6 for e in events},
                                 {e.key: e.count for e in events}, top)}
    if backend.name != "ort":
        raise ValueError(f"profiling covers the torch and ort backends, not {backend.name}")
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = backend.session_options()
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(backend.paths["unet"]), options, providers=["CPUExecutionProvider"])
        arrays = {k: v.numpy() for k, v in feeds.items()}
        for _ in range(2):
            session.run(None, arrays)
        trace = json.loads(Path(session.end_profiling()).read_text())
    last_run = max((e["ts"] for e in trace if e.get("name") == "model_run"), default=0)
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for e in trace:  # kernel events of the last run
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time") and e.get("ts", 0) >= last_run:
            seconds[e["args"].get("op_name", "?")] += e.get("dur", 0) / 1e6
            counts[e["args"].get("op_name", "?")] += 1
    return {"tool": "onnxruntime profiler (kernel time by op type)", "by_op": _shares(seconds, counts, top)}

