"""Static-buffer denoising loops: one PIE round / one transition clip as replays of ONE captured step.

Everything a step reads or writes lives in a buffer allocated once per session:

* PIE: latents, the outside-ROI references ``inter[i]`` of the round (N, C, h, w), the
  ROI mask, the CFG text embeddings, the scheduler's coefficient tables
  (:mod:`linear_steps`, measured from diffusers) with the timestep and model-input
  scale of every step, ring buffers of the last W samples / model outputs, and a
  flag per step saying whether the ROI replacement applies (every step but the first).
* Transition: latents, the SEINE condition (frame mask + masked-video latents), text
  embeddings, SEINE's A/B/S tables (:mod:`gaussian_schedule`) and the per-step DDPM
  noise, drawn before the loop from the CPU generator in the eager sampler's order.

The step index is a (1,) int64 tensor on the device. A step reads its coefficients,
timestep, reference and noise with ``index_select`` on that tensor and ends with
``index += 1``, so the same kernels serve every step: one captured graph is replayed N
times, with no host decisions and no host synchronisation inside the loop (the host
only launches the replays and reports progress; progress therefore runs ahead of the
GPU). What stays on the host, before and after the loop: VAE encoding, posterior
sampling and ``add_noise`` of the round's start latents (a few kernels), drawing the
noise on the CPU generator and copying it in, the Eq 6 blend, endpoint anchoring and
decoding.

Without a capture function the step runs eagerly, on any device: the CPU tests run
exactly the step a GPU captures and compare it with :class:`PieSession` and
:class:`TransitionSampler`. This is the graph-capturable step; the eager loop is
:meth:`PieSession._denoise` (which runs the same tables as host scalars).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mvg_rt.runtime.backends.base import Backend
from mvg_rt.runtime.graphs.capture import CaptureFn
from mvg_rt.runtime.graphs.step_graph import LoopGraph
from mvg_rt.runtime.pipelines.gaussian_schedule import StepTables
from mvg_rt.runtime.pipelines.guidance import guided
from mvg_rt.runtime.pipelines.latents import cpu_randn
from mvg_rt.runtime.pipelines.linear_steps import DeviceTables, LinearStepTables, StepRing, pie_step_tables, scheduler_step
from mvg_rt.runtime.pipelines.pie import PieSession, StepCallback
from mvg_rt.runtime.pipelines.roi import replace_outside_roi
from mvg_rt.runtime.pipelines.transition import ClipStepCallback, TransitionSampler


# ------------------------------------------------------------------ PIE


class StaticPieLoop:
    """The denoising loop of a PIE round over static buffers (see the module docstring)."""

    def __init__(self, backend: Backend, tables: LinearStepTables, text_embeddings: Tensor, mask: Tensor,
                 guidance_scale: float, latent_shape: tuple[int, ...], capture: CaptureFn | None = None,
                 warmup: int = 1) -> None:
        device = backend.device
        self.backend, self.guidance_scale, self.steps = backend, guidance_scale, len(tables)
        self.use_cfg = text_embeddings.shape[0] == 2
        self.tables = DeviceTables.of(tables, device)
        self.ring = StepRing.allocate(tables.window, latent_shape, device)
        self.latents = torch.zeros(latent_shape, device=device)
        self.inter = torch.zeros((self.steps, *latent_shape[1:]), device=device)
        self.mask = mask.to(device).clone()
        self.text = text_embeddings.to(device).clone()
        self.replace = (torch.arange(self.steps) >= 1).to(device)  # the reference replaces for every i >= 1
        self.index = torch.zeros(1, dtype=torch.int64, device=device)
        self.graph = LoopGraph(self.step, capture, warmup, lambda: backend.graph_generation("unet"))

    def step(self) -> None:
        index, z = self.index, self.latents
        replaced = replace_outside_roi(z, self.inter.index_select(0, index), self.mask)
        z = torch.where(self.replace.index_select(0, index).view(1, 1, 1, 1), replaced, z)
        batch = torch.cat([z, z]) if self.use_cfg else z
        batch = batch * self.tables.model_input_scale.index_select(0, index)
        timestep = self.tables.timesteps.index_select(0, index).expand(batch.shape[0])
        noise = self.backend.predict_noise(batch, timestep, self.text)
        if self.use_cfg:
            uncond, cond = noise.chunk(2)
            noise = guided(cond, uncond, self.guidance_scale)
        self.latents.copy_(scheduler_step(self.tables, self.ring, index, z, noise))
        self.index.add_(1)

    def run(self, latents: Tensor, inter: Tensor, on_step: Callable[[int], None] | None = None) -> Tensor:
        """Denoise from ``latents`` (1, C, h, w) with references ``inter`` (N, C, h, w); returns new latents."""
        if inter.shape[0] != self.steps:
            raise ValueError(f"{inter.shape[0]} references for {self.steps} steps")
        self.latents.copy_(latents)
        self.inter.copy_(inter)
        self.ring.clear()
        self.index.zero_()
        self.graph.run(self.steps, on_step)
        return self.latents.clone()


class GraphedPieSession(PieSession):
    """:class:`PieSession` whose rounds run the static-buffer loop (graph-captured on CUDA).

    Same random numbers in the same order as the eager session, so the same seed gives
    the same round up to float rounding of the tabulated scheduler (~1e-6).
    """

    def __init__(self, *args: Any, capture: CaptureFn | None | str = "auto", warmup: int = 1,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.step_tables is None:  # a scheduler that draws noise: refused with its name and the fix
            s = self.settings
            pie_step_tables(self.model.scheduler_config, s.scheduler, s.steps, s.strength, s.eta)
        self.capture = self.backend.step_capture() if capture == "auto" else capture
        self.warmup = warmup
        self.loop: StaticPieLoop | None = None

    def _loop(self, latent_shape: tuple[int, ...]) -> StaticPieLoop:
        if self.loop is None or tuple(self.loop.latents.shape) != latent_shape:
            self.loop = StaticPieLoop(self.backend, self.step_tables, self.text_embeddings, self.mask,
                                      self.settings.guidance_scale, latent_shape, self.capture, self.warmup)
        return self.loop

    def _denoise(self, scheduler: Any, timesteps: Tensor, latents: Tensor, references: Tensor,
                 generator: torch.Generator, round_index: int, on_step: StepCallback | None) -> Tensor:
        """The static-buffer loop over the tabulated scheduler (same RNG draws: the loop draws none)."""
        loop = self._loop(tuple(latents.shape))
        progress = None if on_step is None else (lambda i: on_step(round_index, i + 1, loop.steps))
        return loop.run(latents, references, progress)


# ------------------------------------------------------------------ transitions


class StaticClipLoop:
    """SEINE's sampling loop over static buffers: ``x = A x + B eps (+ S noise)`` per step."""

    def __init__(self, backend: Backend, tables: StepTables, noisy_steps: list[bool], text_embeddings: Tensor,
                 guidance_scale: float, latent_shape: tuple[int, ...], condition_channels: int,
                 capture: CaptureFn | None = None, warmup: int = 1, noise_chunk: int | None = None) -> None:
        device = backend.device
        self.backend, self.guidance_scale, self.steps = backend, guidance_scale, len(tables)
        self.timesteps = tables.timesteps.to(device, torch.float32)
        self.a, self.b, self.s = (t.to(device, torch.float32) for t in (tables.a, tables.b, tables.s))
        self.x = torch.zeros(latent_shape, device=device)
        self.condition = torch.zeros((1, condition_channels, *latent_shape[2:]), device=device)
        self.text = text_embeddings.to(device).clone()
        self.index = torch.zeros(1, dtype=torch.int64, device=device)
        # Noise: the k-th noisy step reads slot k % chunk; the host refills a chunk before its steps.
        ordinal = torch.cumsum(torch.tensor(noisy_steps, dtype=torch.int64), 0) - 1
        self.noisy = list(noisy_steps)
        self.noise_count = int(sum(noisy_steps))
        self.chunk = max(1, min(noise_chunk or self.noise_count, self.noise_count)) if self.noise_count else 0
        self.noise_ordinal = ordinal.clamp(min=0).tolist()
        self.noise_slot = (ordinal.clamp(min=0) % max(self.chunk, 1)).to(device)
        self.noise = torch.zeros((max(self.chunk, 1), *latent_shape[1:]), device=device) if self.chunk else None
        self.graph = LoopGraph(self.step, capture, warmup, lambda: backend.graph_generation("seine"))

    def step(self) -> None:
        index = self.index
        model_input = torch.cat([self.x, self.condition], dim=1).expand(2, -1, -1, -1, -1)
        timestep = self.timesteps.index_select(0, index).expand(2)
        cond, uncond = self.backend.predict_video_noise(model_input, timestep, self.text).chunk(2)
        eps = guided(cond, uncond, self.guidance_scale)
        x = self.a.index_select(0, index) * self.x + self.b.index_select(0, index) * eps
        if self.noise is not None:  # S is 0 on the steps that draw no noise: x + 0 * n == x
            x = x + self.s.index_select(0, index) * self.noise.index_select(0, self.noise_slot.index_select(0, index))
        self.x.copy_(x)
        self.index.add_(1)

    def run(self, x: Tensor, condition: Tensor, generator: torch.Generator,
            on_step: Callable[[int], None] | None = None) -> Tensor:
        """Sample from noise ``x`` (1, C, K, h, w); the per-step noise is drawn from ``generator`` in order."""
        self.x.copy_(x)
        self.condition.copy_(condition)
        self.index.zero_()
        done = 0
        while done < self.steps:
            end = self._refill(done, generator)
            self.graph.run(end - done, None if on_step is None else (lambda i, d=done: on_step(d + i)))
            done = end
        return self.x.clone()

    def _refill(self, start: int, generator: torch.Generator) -> int:
        """Draw the next chunk of noise into the buffer; returns the step the chunk ends before."""
        if self.noise is None:
            return self.steps
        first = next((i for i in range(start, self.steps) if self.noisy[i]), None)
        if first is None:
            return self.steps
        base = self.noise_ordinal[first]
        count = min(self.chunk, self.noise_count - base)
        cpu = torch.device("cpu")  # one draw per noisy step, in step order (as the eager sampler draws)
        draws = torch.stack([cpu_randn(self.noise.shape[1:], generator, cpu) for _ in range(count)])
        self.noise[:count].copy_(draws)
        last = base + count  # first noisy ordinal of the next chunk
        end = next((i for i in range(first, self.steps) if self.noisy[i] and self.noise_ordinal[i] >= last),
                   self.steps)
        return end


class GraphedTransitionSampler(TransitionSampler):
    """:class:`TransitionSampler` whose clips run the static-buffer loop (graph-captured on CUDA)."""

    def __init__(self, *args: Any, capture: CaptureFn | None | str = "auto", warmup: int = 1,
                 noise_chunk: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.capture = self.backend.step_capture() if capture == "auto" else capture
        self.warmup, self.noise_chunk = warmup, noise_chunk
        self.loop: StaticClipLoop | None = None

    def _denoise(self, x: Tensor, condition: Tensor, generator: torch.Generator, clip_index: int,
                 on_step: ClipStepCallback | None) -> Tensor:
        """The static-buffer loop; its DDPM noise is pre-drawn from ``generator`` in the eager order."""
        if self.loop is None or self.loop.x.shape != x.shape:
            self.loop = StaticClipLoop(self.backend, self.tables, self.noisy_steps, self.text_embeddings,
                                       self.settings.guidance_scale, tuple(x.shape), condition.shape[1],
                                       self.capture, self.warmup, self.noise_chunk)
        loop = self.loop
        progress = None if on_step is None else (lambda i: on_step(clip_index, i + 1, loop.steps))
        return loop.run(x, condition, generator, progress)
