"""Timing one component (network) on one variant, at the shapes the pipelines call it with.

Shapes at resolution R (latents r = R/8) and K frames: text encoder (2, 77) token ids
(the CFG pair); VAE encoder one (1, 3, R, R) image; VAE decoder one (1, 4, r, r)
latent; UNet the CFG batch (2, 4, r, r); SEINE the CFG batch (2, 9, K, r, r). Inputs
are seeded random tensors; the output is saved so the parent can compare it with
the PyTorch FP32 reference's on the same inputs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mvg_rt.bench.memory import PeakTracker
from mvg_rt.bench.models import ModelSource, text_hidden_size, vocab_size
from mvg_rt.bench.timing import summarize, time_calls
from mvg_rt.bench.variants import Variant, open_backend
from mvg_rt.components import COMPONENTS

CFG_BATCH = 2


def component_inputs(component: str, resolution: int, frames: int, hidden: int, vocab: int,
                      scale: int = 8, latent_channels: int = 4) -> dict[str, Tensor]:
    """Seeded inputs of ``component`` at the bench shapes (on the CPU)."""
    generator = torch.Generator().manual_seed(1234)
    r = resolution // scale

    def randn(*shape: int) -> Tensor:
        return torch.randn(shape, generator=generator)

    text = randn(CFG_BATCH, 77, hidden)
    timestep = torch.full((CFG_BATCH,), 500.0)
    if component == "text_encoder":
        return {"input_ids": torch.randint(0, vocab, (CFG_BATCH, 77), generator=generator, dtype=torch.int64)}
    if component == "vae_encoder":
        return {"images": randn(1, 3, resolution, resolution).clamp(-1, 1)}
    if component == "vae_decoder":
        return {"latents": randn(1, latent_channels, r, r)}
    if component == "unet":
        return {"sample": randn(CFG_BATCH, latent_channels, r, r), "timestep": timestep, "encoder_hidden_states": text}
    if component == "seine":
        return {"sample": randn(CFG_BATCH, 2 * latent_channels + 1, frames, r, r), "timestep": timestep,
                "encoder_hidden_states": text}
    raise ValueError(f"unknown component {component!r}")


def shapes_of(feeds: dict[str, Tensor]) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in feeds.items()}


def bench_component(variant: Variant, source: ModelSource, engines: Path | None, component: str, resolution: int,
                    frames: int, repeat: int, warmup: int, workdir: Path,
                    budget_s: float | None = None) -> dict[str, Any]:
    """Load only ``component`` on ``variant``, warm up, time ``repeat`` calls; peak memory of the timed calls."""
    spec = COMPONENTS[component]
    feeds = component_inputs(component, resolution, frames, text_hidden_size(source), vocab_size(source))
    started = time.perf_counter()
    backend = open_backend(variant, source, (component,), engines)
    device_feeds = {k: v.to(backend.device) for k, v in feeds.items()}
    first = time.perf_counter()
    output = backend.infer(spec, device_feeds)  # sessions and engines load lazily: part of loading
    if backend.device.type == "cuda":
        torch.cuda.synchronize(backend.device)
    first_call = time.perf_counter() - first
    load = time.perf_counter() - started
    tracker = PeakTracker(backend.device)
    tracker.start()
    samples = time_calls(lambda: backend.infer(spec, device_feeds), repeat, max(warmup - 1, 0), backend.device,
                         budget_s)
    memory = tracker.stop()
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{component}-{variant.label.replace(' ', '_').replace('+', '-')}.npy"
    np.save(path, output[spec.output_names[0]].float().cpu().numpy())
    row = {"component": component, "variant": variant.to_dict(), "shapes": shapes_of(feeds), **summarize(samples),
           "warmup": warmup, "repeat": len(samples), "load_s": load, "first_call_s": first_call, "memory": memory,
           "backend": backend.describe(), "output": str(path)}
    backend.close()
    return row
