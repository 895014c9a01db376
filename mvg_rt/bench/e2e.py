"""End-to-end timing of mvg-rt's pipelines over one variant (backend): PIE round, PIE run, clip, simulation.

Inputs are the bundled demo case (synthetic chest X-ray + heart ROI, "severe
cardiomegaly") at the bench resolution, with a fixed seed, so every variant and
peer sees the same image, prompt, settings and random numbers.

* **PIE round**: one img2img round with the ROI = the whole image and beta2 = 1 (the
  setting in which a PIE round *is* diffusers' img2img, so the peers compute the same
  thing). Timed: ``PieSession.run_round`` (VAE encode of the previous state, the
  denoising loop, Eq 6, VAE decode, uint8), after one untimed call of every network
  at its shape. The session's one-off setup (prompt + original image encoding,
  shared by all rounds of a run) is timed separately.
* **Simulation**: ``rounds`` PIE rounds with the demo ROI and the paper's betas, then
  a transition clip between each pair of consecutive states, as ``mvg-rt simulate``
  runs them. Reported as the PIE run (all rounds), the first clip, and the whole.

``loop``: ``eager`` is :class:`PieSession` / :class:`TransitionSampler` (diffusers
scheduler per step); ``lean`` is :class:`GraphedPieSession` /
:class:`GraphedTransitionSampler` (static buffers, tabulated scheduler; eager on a
CPU, one captured CUDA graph per step on a GPU with ``--cuda-graphs``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvg_rt.bench.models import ModelSource
from mvg_rt.bench.timing import summarize, synchronizer
from mvg_rt.bench.variants import Variant, ort_settings, require_cuda

LOOPS = ("eager", "lean")


@dataclass(frozen=True)
class E2ESettings:
    resolution: int = 256
    rounds: int = 2
    steps: int = 20
    strength: float = 0.6
    guidance: float = 7.5
    beta1: float = 0.01
    beta2: float = 0.75
    seed: int = 0
    frames: int = 4
    transition_steps: int = 3
    transition_sampler: str = "ddpm"
    transition_guidance: float = 8.0
    repeat: int = 1
    prompt: str = "severe cardiomegaly"
    negative_prompt: str = ""

    @property
    def denoising_steps(self) -> int:
        return min(int(self.steps * self.strength), self.steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"denoising_steps_per_round": self.denoising_steps}


def demo_inputs(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The demo image (H, W, 3) uint8 and its heart ROI (H, W, 3) uint8 at ``resolution``."""
    from mvg_rt.demo.default import DEMO_CASE
    from mvg_rt.io.images import read_image, resize_and_crop
    from mvg_rt.io.masks import choose_mask

    image = read_image(DEMO_CASE.image).pixels
    original = resize_and_crop(image, resolution)
    roi = choose_mask(image.shape, resolution, str(DEMO_CASE.mask))
    return original, roi.pixels


def open_runtime(variant: Variant, source: ModelSource, engines: Path | None, with_seine: bool) -> Any:
    from mvg_rt.runtime.factory import engines_runtime, torch_runtime

    if variant.device.startswith("cuda"):
        require_cuda(variant.device, f"the {variant.label} variant")
    if variant.backend == "torch":
        dtype = torch.float16 if variant.precision == "fp16" else torch.float32
        runtime = torch_runtime(source.model_dir, device=variant.device, dtype=dtype,
                                seine=source.seine if with_seine else None, with_seine=with_seine)
        if variant.cuda_graphs:
            from mvg_rt.runtime.backends.cuda_graphs import GraphedBackend

            runtime.backend = GraphedBackend(runtime.backend)
        return runtime
    options: dict[str, Any] = {}
    if variant.backend == "ort":
        options = {"settings": ort_settings(variant)}
    elif variant.backend == "trt":
        options = {"cuda_graphs": variant.cuda_graphs}
    return engines_runtime(variant.backend, engines, precision=variant.precision, device=variant.device, **options)


def _warm_up(runtime: Any, settings: E2ESettings, with_seine: bool) -> float:
    """One call of every network at the shapes the pipelines will use (untimed); returns its seconds."""
    from mvg_rt.components import SEINE, TEXT_ENCODER, UNET, VAE_DECODER, VAE_ENCODER

    backend, device, started = runtime.backend, runtime.backend.device, time.perf_counter()
    r = settings.resolution // runtime.model.vae_scale_factor
    channels, hidden = runtime.model.latent_channels, None
    text = backend.infer(TEXT_ENCODER, {"input_ids": torch.zeros(2, 77, dtype=torch.int64, device=device)})
    hidden = text["text_embeddings"]
    backend.infer(VAE_ENCODER, {"images": torch.zeros(1, 3, settings.resolution, settings.resolution, device=device)})
    backend.infer(VAE_DECODER, {"latents": torch.zeros(1, channels, r, r, device=device)})
    t = torch.full((2,), 500.0, device=device)
    backend.infer(UNET, {"sample": torch.zeros(2, channels, r, r, device=device), "timestep": t,
                         "encoder_hidden_states": hidden})
    if with_seine:
        backend.infer(VAE_ENCODER, {"images": torch.zeros(3, 3, settings.resolution, settings.resolution,
                                                          device=device)})
        backend.infer(SEINE, {"sample": torch.zeros(2, 2 * channels + 1, settings.frames, r, r, device=device),
                              "timestep": t, "encoder_hidden_states": hidden})
    synchronizer(device)()
    return time.perf_counter() - started


def capture_for(variant: Variant | None) -> str | None:
    """Whole-step CUDA-graph capture for the lean loop: only with --cuda-graphs, and not for ORT (which
    captures its own per-component graphs); None runs the static-buffer step eagerly."""
    if variant is None or not variant.cuda_graphs or variant.backend == "ort":
        return None
    return "auto"


def pie_session(loop: str, runtime: Any, pie: Any, original: np.ndarray, mask_pixels: np.ndarray,
                 settings: E2ESettings, variant: Variant | None = None) -> Any:
    from mvg_rt.runtime.pipelines.graphed_loops import GraphedPieSession
    from mvg_rt.runtime.pipelines.pie import PieSession
    from mvg_rt.runtime.pipelines.roi import latent_mask

    device = runtime.backend.device
    mask = latent_mask(torch.from_numpy(mask_pixels), runtime.model.vae_scale_factor, runtime.model.latent_channels)
    args = (runtime.backend, runtime.model, pie, torch.from_numpy(original).to(device), mask, settings.prompt,
            settings.negative_prompt)
    if loop == "lean":
        return GraphedPieSession(*args, capture=capture_for(variant))
    return PieSession(*args)


def pie_round(runtime: Any, loop: str, settings: E2ESettings, original: np.ndarray,
              variant: Variant | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """The PIE round row (full ROI, beta2 = 1: img2img) and its output image."""
    from mvg_rt.runtime.pipelines.pie import PieSettings

    device = runtime.backend.device
    sync = synchronizer(device)
    pie = PieSettings(rounds=1, strength=settings.strength, steps=settings.steps, guidance_scale=settings.guidance,
                      beta1=settings.beta1, beta2=1.0)
    full = np.full_like(original, 255)
    started = time.perf_counter()
    session = pie_session(loop, runtime, pie, original, full, settings, variant)
    sync()
    setup = time.perf_counter() - started
    previous = torch.from_numpy(original).to(device)
    samples, output = [], None
    for _ in range(settings.repeat):
        generator = torch.Generator().manual_seed(settings.seed)
        started = time.perf_counter()
        output = session.run_round(previous, generator)
        sync()
        samples.append(time.perf_counter() - started)
    row = {"setup_s": setup, **summarize(samples), "steps": settings.denoising_steps}
    return row, output.cpu().numpy()


def simulation(runtime: Any, loop: str, settings: E2ESettings, original: np.ndarray, roi: np.ndarray,
               with_transitions: bool, variant: Variant | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """PIE rounds (+ clips) as ``mvg-rt simulate`` runs them; per-round / per-clip seconds."""
    from mvg_rt.runtime.pipelines.graphed_loops import GraphedTransitionSampler
    from mvg_rt.runtime.pipelines.pie import PieSettings
    from mvg_rt.runtime.pipelines.transition import TransitionSampler, TransitionSettings

    device = runtime.backend.device
    sync = synchronizer(device)
    pie = PieSettings(rounds=settings.rounds, strength=settings.strength, steps=settings.steps,
                      guidance_scale=settings.guidance, beta1=settings.beta1, beta2=settings.beta2)
    generator = torch.Generator().manual_seed(settings.seed)
    started = time.perf_counter()
    session = pie_session(loop, runtime, pie, original, roi, settings, variant)
    states = [torch.from_numpy(original).to(device)]
    rounds = []
    for index in range(1, settings.rounds + 1):
        round_start = time.perf_counter()
        states.append(session.run_round(states[-1], generator, index))
        sync()
        rounds.append(time.perf_counter() - round_start)
    pie_seconds = time.perf_counter() - started
    row: dict[str, Any] = {"pie_run_s": pie_seconds, "round_s": rounds}
    outputs = {"final_state": states[-1].cpu().numpy()}
    if with_transitions:
        transition = TransitionSettings(frames=settings.frames, steps=settings.transition_steps,
                                        sampler=settings.transition_sampler,
                                        guidance_scale=settings.transition_guidance,
                                        negative_prompt=settings.negative_prompt)
        clip_start = time.perf_counter()
        if loop == "lean":
            sampler = GraphedTransitionSampler(runtime.backend, runtime.model, transition, settings.prompt,
                                               capture=capture_for(variant))
        else:
            sampler = TransitionSampler(runtime.backend, runtime.model, transition, settings.prompt)
        weight = torch.from_numpy(roi[..., 0].astype(np.float32) / 255.0)
        clips = []
        for index, (start, end) in enumerate(zip(states[:-1], states[1:]), start=1):
            one = time.perf_counter()
            clip = sampler.clip(start.cpu(), end.cpu(), weight, generator, index)
            sync()
            clips.append(time.perf_counter() - one)
            if index == 1:
                outputs["first_clip"] = clip.cpu().numpy()
        row |= {"transitions_s": time.perf_counter() - clip_start, "clip_s": clips}
    row["simulation_s"] = time.perf_counter() - started
    return row, outputs


def run_e2e(variant: Variant, source: ModelSource, engines: Path | None, settings: E2ESettings, loops: tuple[str, ...],
            simulate_loop: str | None, with_transitions: bool, workdir: Path) -> dict[str, Any]:
    """Every end-to-end measurement of one variant, in this process; outputs go to ``workdir`` as .npy."""
    from mvg_rt.bench.memory import PeakTracker

    load_start = time.perf_counter()
    runtime = open_runtime(variant, source, engines, with_transitions and simulate_loop is not None)
    load_seconds = time.perf_counter() - load_start
    warm = _warm_up(runtime, settings, with_transitions and simulate_loop is not None)
    original, roi = demo_inputs(settings.resolution)
    result: dict[str, Any] = {"variant": variant.to_dict(), "load_s": load_seconds, "warmup_s": warm,
                              "backend": runtime.backend.describe(), "rounds": {}, "outputs": {}}
    workdir.mkdir(parents=True, exist_ok=True)
    tag = variant.label.replace(" ", "_").replace("+", "-")
    for loop in loops:
        tracker = PeakTracker(runtime.backend.device)
        tracker.start()
        row, image = pie_round(runtime, loop, settings, original, variant)
        row["memory"] = tracker.stop()
        result["rounds"][loop] = row
        path = workdir / f"{tag}-{loop}-pie_round.npy"
        np.save(path, image)
        result["outputs"][f"pie_round/{loop}"] = str(path)
    if simulate_loop is not None:
        tracker = PeakTracker(runtime.backend.device)
        tracker.start()
        row, outputs = simulation(runtime, simulate_loop, settings, original, roi, with_transitions, variant)
        row["memory"] = tracker.stop()
        row["loop"] = simulate_loop
        result["simulation"] = row
        for name, array in outputs.items():
            path = workdir / f"{tag}-{simulate_loop}-{name}.npy"
            np.save(path, array)
            result["outputs"][f"{name}/{simulate_loop}"] = str(path)
    runtime.backend.close()
    return result
