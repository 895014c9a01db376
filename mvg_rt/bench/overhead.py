"""Time outside the networks per denoising step (target 3), mvg-rt vs diffusers, on a tiny model.

Both sides are instrumented the same way:

* the **network** time of a step is the time inside the UNet: for PyTorch (mvg-rt's
  torch backend and diffusers) a forward pre-hook / hook pair on the same
  ``UNet2DConditionModel`` class; for ONNX Runtime the time inside the UNet
  session's ``run`` (everything the backend does around it, feed checks and
  conversions, counts as outside);
* the **step** boundaries are each side's per-step callback, called right after the
  scheduler update (mvg-rt's ``on_step``, diffusers' ``callback_on_step_end``).

Per round, overhead per step = (time from the first step's callback to the last one
- network time of the steps in between) / (steps - 1): complete steps only, so the
one-off work before the loop (text and VAE encoding, ``add_noise``) and after it
(decoding) is excluded on both sides. The median over ``repeat`` rounds is reported.

A second, instrumentation-free view replaces the UNet by a stub that returns a
fixed tensor and times whole loops: then everything left *is* overhead, and
torch.profiler lists which operators it is made of.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mvg_rt.bench.e2e import E2ESettings, demo_inputs


class StepClock:
    """Collects callback times and network intervals of one round."""

    def __init__(self) -> None:
        self.marks: list[float] = []
        self.network: list[tuple[float, float]] = []
        self._entered = 0.0

    def enter(self, *_: Any) -> None:
        self._entered = time.perf_counter()

    def leave(self, *_: Any) -> None:
        self.network.append((self._entered, time.perf_counter()))

    def mark(self, *_: Any) -> None:
        self.marks.append(time.perf_counter())

    def per_step(self) -> dict[str, float]:
        if len(self.marks) < 2:
            raise ValueError("need at least 2 denoising steps to measure per-step overhead")
        first, last = self.marks[0], self.marks[-1]
        inside = sum(b - a for a, b in self.network if a >= first and b <= last)
        steps = len(self.marks) - 1
        return {"step_s": (last - first) / steps, "network_s": inside / steps,
                "overhead_s": (last - first - inside) / steps}


class _TimedSession:
    """An ONNX Runtime session whose ``run`` reports to a :class:`StepClock`."""

    def __init__(self, session: Any, clock: Callable[[], StepClock]) -> None:
        self._session, self._clock = session, clock

    def run(self, *args: Any, **kwargs: Any) -> Any:
        clock = self._clock()
        clock.enter()
        try:
            return self._session.run(*args, **kwargs)
        finally:
            clock.leave()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def _median_rows(rows: list[dict[str, float]]) -> dict[str, Any]:
    keys = rows[0].keys()
    return {k: float(np.median([r[k] for r in rows])) for k in keys} | {"rounds": len(rows)}


def mvg_overhead(runtime: Any, loop: str, settings: E2ESettings, repeat: int) -> dict[str, Any]:
    """Per-step overhead of mvg-rt's PIE round (full ROI, beta2 = 1) with ``loop`` on ``runtime``."""
    from mvg_rt.bench.e2e import pie_session
    from mvg_rt.runtime.pipelines.pie import PieSettings

    original, _ = demo_inputs(settings.resolution)
    pie = PieSettings(rounds=1, strength=settings.strength, steps=settings.steps, guidance_scale=settings.guidance,
                      beta2=1.0)
    session = pie_session(loop, runtime, pie, original, np.full_like(original, 255), settings)
    previous = torch.from_numpy(original).to(runtime.backend.device)
    clock = StepClock()
    backend = runtime.backend
    undo: list[Callable[[], None]] = []
    if backend.name == "torch":
        unet = backend.modules["unet"].unet
        handles = [unet.register_forward_pre_hook(lambda *a: clock.enter()),
                   unet.register_forward_hook(lambda *a: clock.leave())]
        undo.append(lambda: [h.remove() for h in handles])
        how = "forward hooks on UNet2DConditionModel"
    elif backend.name == "ort":
        backend.predict_noise(*_unet_feeds(session))  # creates the session, so it can be wrapped
        state = backend.sessions["unet"]
        original_session = state.session
        state.session = _TimedSession(original_session, lambda: clock)
        undo.append(lambda: setattr(state, "session", original_session))
        how = "time inside the UNet session's run()"
    else:
        raise ValueError(f"overhead is measured for the torch and ort backends, not {backend.name}")
    rows = []
    try:
        session.run_round(previous, torch.Generator().manual_seed(settings.seed))  # warm-up
        for _ in range(repeat):
            clock = StepClock()
            session.run_round(previous, torch.Generator().manual_seed(settings.seed), on_step=clock.mark)
            rows.append(clock.per_step())
    finally:
        for fn in undo:
            fn()
    return _median_rows(rows) | {"instrumentation": how}


def _unet_feeds(session: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    text = session.text_embeddings
    shape = (text.shape[0], session.model.latent_channels, *session.mask.shape[2:])
    device = session.device
    return torch.zeros(shape, device=device), torch.full((text.shape[0],), 500.0, device=device), text


def diffusers_overhead(pipe: Any, settings: E2ESettings, repeat: int) -> dict[str, Any]:
    from mvg_rt.bench.peers import img2img_call

    original, _ = demo_inputs(settings.resolution)
    clock = StepClock()
    handles = [pipe.unet.register_forward_pre_hook(lambda *a: clock.enter()),
               pipe.unet.register_forward_hook(lambda *a: clock.leave())]

    def callback(pipe_: Any, index: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        clock.mark()
        return kwargs

    rows = []
    try:
        img2img_call(pipe, original, settings)  # warm-up
        for _ in range(repeat):
            clock = StepClock()
            img2img_call(pipe, original, settings, callback=callback)
            rows.append(clock.per_step())
    finally:
        for handle in handles:
            handle.remove()
    return _median_rows(rows) | {"instrumentation": "forward hooks on UNet2DConditionModel"}


# ------------------------------------------------------------------ stubbed network: what the overhead is made of


def _stub_forward(unet: Any, sample_shape: tuple[int, ...]) -> Callable[[], None]:
    """Replace ``unet.forward`` by a constant output; returns the undo."""
    fixed = torch.zeros(sample_shape)

    def forward(sample: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor]:
        return (fixed.to(sample.dtype),)

    unet.forward = forward
    return lambda: delattr(unet, "forward")


def stubbed_profiles(runtime: Any, pipe: Any, settings: E2ESettings, repeat: int, rows: int = 8) -> dict[str, Any]:
    """Loop time per step with the UNet stubbed out, and the operators a step is made of, both sides.

    Operators per step come from torch.profiler over two rounds that differ only in
    their number of denoising steps (strength), divided by the difference: the
    one-off work (text/VAE encoding, decoding) cancels out.
    """
    from dataclasses import replace

    from torch.profiler import ProfilerActivity, profile

    from mvg_rt.bench.e2e import pie_session
    from mvg_rt.bench.peers import img2img_call
    from mvg_rt.runtime.pipelines.pie import PieSettings

    original, _ = demo_inputs(settings.resolution)
    r = settings.resolution // runtime.model.vae_scale_factor
    shape = (2, runtime.model.latent_channels, r, r)
    short = replace(settings, strength=settings.strength / 3)
    extra_steps = settings.denoising_steps - short.denoising_steps
    previous = torch.from_numpy(original)

    def ours(loop: str, s: E2ESettings) -> Callable[[Callable[..., Any]], None]:
        pie = PieSettings(rounds=1, strength=s.strength, steps=s.steps, guidance_scale=s.guidance, beta2=1.0)
        session = pie_session(loop, runtime, pie, original, np.full_like(original, 255), s)
        return lambda cb: session.run_round(previous, torch.Generator().manual_seed(0), on_step=cb)

    def theirs(s: E2ESettings) -> Callable[[Callable[..., Any]], None]:
        return lambda cb: img2img_call(pipe, original, s, callback=lambda p, i, t, kw: (cb(), kw)[1])

    def ops(run: Callable[[Callable[..., Any]], None]) -> dict[str, tuple[int, float]]:
        run(lambda *a: None)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(lambda *a: None)
        return {e.key: (e.count, e.self_cpu_time_total) for e in prof.key_averages() if e.key.startswith("aten::")}

    def measure(long_run: Callable[..., None], short_run: Callable[..., None]) -> dict[str, Any]:
        times = []
        for _ in range(repeat + 1):
            clock = StepClock()
            long_run(clock.mark)
            times.append((clock.marks[-1] - clock.marks[0]) / (len(clock.marks) - 1))
        long_ops, short_ops = ops(long_run), ops(short_run)
        per_step = {k: ((n - short_ops.get(k, (0, 0.0))[0]) / extra_steps,
                        (us - short_ops.get(k, (0, 0.0))[1]) / extra_steps) for k, (n, us) in long_ops.items()}
        top = sorted(((k, v) for k, v in per_step.items() if v[0] > 0.5), key=lambda kv: -kv[1][0])[:rows]
        return {"loop_s_per_step": float(np.median(times[1:])),
                "aten_ops_per_step": sum(max(v[0], 0.0) for v in per_step.values()),
                "top_ops": [{"op": k, "calls_per_step": v[0], "self_cpu_us_per_step": v[1]} for k, v in top]}

    out: dict[str, Any] = {}
    unet = runtime.backend.modules["unet"].unet
    undo = _stub_forward(unet, shape)
    try:
        for loop in ("eager", "lean"):
            out[f"mvg-rt torch ({loop} loop)"] = measure(ours(loop, settings), ours(loop, short))
    finally:
        undo()
    undo = _stub_forward(pipe.unet, shape)
    try:
        out["diffusers img2img"] = measure(theirs(settings), theirs(short))
    finally:
        undo()
    return out
