"""Time outside the networks per denoising step (target 3), mvg-rt vs diffusers, on a tiny model: network
time inside the UNet (forward hooks on both sides; the session's ``run`` for ORT: ``Backend.timed_network``),
steps between per-step callbacks; then with the UNet stubbed out (``Backend.stubbed_network``), where all is
overhead (method: benchmarks/README.md)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch

from mvg_rt.bench.config import E2ESettings
from mvg_rt.bench.measure import demo_original, img2img_call, round_label
from mvg_rt.bench.rows import Row
from mvg_rt.components import UNET
from mvg_rt.runtime.backends.torch_backend import forward_hooks
from mvg_rt.runtime.factory import Runtime

Round = Callable[[Callable[..., Any]], None]  # one round, calling its argument after every step
#: (enter, leave) -> a context in which they bracket every UNet network call; it yields how (for the report)
Instrument = Callable[[Callable[[], None], Callable[[], None]], AbstractContextManager[str]]


class StepClock:
    """Callback times and network intervals of one round; per step = complete steps only (first to last
    callback), so the one-off work before and after the loop is excluded on both sides."""

    def __init__(self) -> None:
        self.marks: list[float] = []
        self.network: list[tuple[float, float]] = []
        self.entered = 0.0

    def enter(self, *_: Any) -> None:
        self.entered = time.perf_counter()

    def leave(self, *_: Any) -> None:
        self.network.append((self.entered, time.perf_counter()))

    def mark(self, *_: Any) -> None:
        self.marks.append(time.perf_counter())

    def per_step(self) -> dict[str, float]:
        first, last, steps = self.marks[0], self.marks[-1], len(self.marks) - 1
        inside = sum(b - a for a, b in self.network if a >= first and b <= last)
        return {"step_s": (last - first) / steps, "network_s": inside / steps,
                "overhead_s": (last - first - inside) / steps}


def mvg_round(runtime: Runtime, settings: E2ESettings, stepper: str) -> Round:
    """mvg-rt's PIE round (full ROI, beta2 = 1) with ``stepper``, as a :data:`Round`."""
    from mvg_rt.runtime.pipelines.pie import pie_session

    original = demo_original(settings.resolution)
    session = pie_session(runtime.backend, runtime.model, settings.pie(rounds=1, beta2=1.0), original,
                          np.full(original.shape[:2], 255, np.uint8), settings.prompt, stepper=stepper)
    previous = torch.from_numpy(original)
    return lambda mark: session.run_round(previous, torch.Generator().manual_seed(settings.seed), on_step=mark)


def diffusers_round(pipe: Any, settings: E2ESettings) -> Round:
    original = demo_original(settings.resolution)
    return lambda mark: img2img_call(pipe, original, settings, callback=lambda p, i, t, kw: (mark(), kw)[1])


@contextmanager
def diffusers_unet_hooks(unet: torch.nn.Module, enter: Callable[[], None],
                         leave: Callable[[], None]) -> Iterator[str]:
    """diffusers' side of :data:`Instrument`: forward hooks on its UNet2DConditionModel."""
    with forward_hooks(unet, enter, leave):
        yield "forward hooks on UNet2DConditionModel"


def per_step(run: Round, instrument: Instrument, repeat: int) -> dict[str, Any]:
    """Median per-step times over ``repeat`` rounds, the UNet's network calls timed by ``instrument``."""
    clock = StepClock()
    rows = []
    with instrument(lambda: clock.enter(), lambda: clock.leave()) as how:
        for _ in range(repeat):
            clock = StepClock()
            run(clock.mark)
            rows.append(clock.per_step())
    return {k: float(np.median([r[k] for r in rows])) for k in rows[0]} | {"rounds": repeat, "instrumentation": how}


def overhead_rows(runtimes: list[Runtime], pipe: Any, settings: E2ESettings, repeat: int) -> list[Row]:
    """Per-step overhead of every (runtime, stepper) and of diffusers; ``overhead_ratio_vs_diffusers`` on
    mvg-rt's rows is target 3's measure."""
    rows = []
    for runtime in runtimes:
        for stepper in ("auto", "scheduler"):
            run = mvg_round(runtime, settings, stepper)
            run(lambda *a: None)  # warm-up (creates the ORT session)
            timed = partial(runtime.backend.timed_network, UNET)
            rows.append(Row("overhead", round_label(runtime.spec, stepper), runtime.spec.to_dict(),
                            metrics={"stepper": stepper, **per_step(run, timed, repeat)}))
    theirs = diffusers_round(pipe, settings)
    theirs(lambda *a: None)
    rows.append(Row("overhead", "diffusers img2img",
                    metrics=per_step(theirs, partial(diffusers_unet_hooks, pipe.unet), repeat)))
    for row in rows[:-1]:
        row.metrics["overhead_ratio_vs_diffusers"] = rows[-1].metrics["overhead_s"] / row.metrics["overhead_s"]
    return rows


@contextmanager
def stubbed_unet(unet: torch.nn.Module, shape: tuple[int, ...]) -> Iterator[None]:
    """diffusers' UNet2DConditionModel ``forward`` replaced by a constant output."""
    fixed = torch.zeros(shape)
    unet.forward = lambda sample, *a, **k: (fixed.to(sample.dtype),)
    try:
        yield
    finally:
        del unet.forward


def stub_rows(runtime: Runtime, pipe: Any, settings: E2ESettings, repeat: int, top: int = 8) -> list[Row]:
    """Loop time per step with the UNet stubbed out, and the aten ops per step, for mvg-rt (torch, both
    steppers) and diffusers."""
    from torch.profiler import ProfilerActivity, profile

    short = replace(settings, strength=settings.strength / 3)
    extra_steps = settings.denoising_steps - short.denoising_steps
    r = settings.resolution // runtime.model.vae_scale_factor
    shape = (2, runtime.model.latent_channels, r, r)

    def ops(run: Round) -> dict[str, tuple[int, float]]:
        run(lambda *a: None)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(lambda *a: None)
        return {e.key: (e.count, e.self_cpu_time_total) for e in prof.key_averages() if e.key.startswith("aten::")}

    def measure(long: Round, short_run: Round) -> dict[str, Any]:
        clocks = [StepClock() for _ in range(repeat + 1)]
        for clock in clocks:
            long(clock.mark)
        long_ops, short_ops = ops(long), ops(short_run)
        step = {k: ((n - short_ops.get(k, (0, 0.0))[0]) / extra_steps, (us - short_ops.get(k, (0, 0.0))[1])
                    / extra_steps) for k, (n, us) in long_ops.items()}
        most = sorted(((k, v) for k, v in step.items() if v[0] > 0.5), key=lambda kv: -kv[1][0])[:top]
        return {"loop_s_per_step": float(np.median([c.per_step()["step_s"] for c in clocks[1:]])),
                "aten_ops_per_step": sum(max(v[0], 0.0) for v in step.values()),
                "top_ops": [{"op": k, "calls_per_step": v[0], "self_cpu_us_per_step": v[1]} for k, v in most]}

    with runtime.backend.stubbed_network(UNET, torch.zeros(shape)):
        rows = [Row("overhead_stub", round_label(runtime.spec, stepper), runtime.spec.to_dict(),
                    metrics=measure(mvg_round(runtime, settings, stepper), mvg_round(runtime, short, stepper)))
                for stepper in ("auto", "scheduler")]
    with stubbed_unet(pipe.unet, shape):
        return rows + [Row("overhead_stub", "diffusers img2img",
                           metrics=measure(diffusers_round(pipe, settings), diffusers_round(pipe, short)))]
