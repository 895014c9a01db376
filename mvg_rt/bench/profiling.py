"""Where a UNet call's time goes, for a missed target: the backend's own profiler (``Backend.profile``:
ONNX Runtime's by op type, torch.profiler's by operator), after one warm-up call."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mvg_rt.bench.rows import Row
from mvg_rt.components import UNET
from mvg_rt.runtime.backends.base import Backend
from mvg_rt.runtime.factory import RuntimeSpec, open_runtime


def _shares(seconds: dict[str, float], counts: dict[str, int], top: int) -> list[dict[str, Any]]:
    total = sum(seconds.values())
    return [{"op": op, "seconds": s, "share": s / total if total else 0.0, "calls": counts[op]}
            for op, s in sorted(seconds.items(), key=lambda kv: -kv[1])[:top]]


def profile_unet(spec: RuntimeSpec, feeds: dict[str, Tensor]) -> Row:
    with open_runtime(spec) as runtime:
        return Row("profile", spec.label, spec.to_dict(), "unet", metrics=_profile(runtime.backend, feeds))


def _profile(backend: Backend, feeds: dict[str, Tensor], top: int = 12) -> dict[str, Any]:
    times = backend.profile(UNET, feeds)
    return {"tool": times.tool, "by_op": _shares(times.seconds, times.calls, top)}
