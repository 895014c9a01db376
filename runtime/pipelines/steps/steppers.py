"""The two ways a denoising step is applied: diffusers' own ``step``, and the device-table step.

* :class:`SchedulerStepper`: the scheduler's ``step``, the reference, and the only
  stepper for schedulers that draw noise inside ``step`` (they have no tables).
  Host-indexed, so it runs eagerly only.
* :class:`TableStepper`: :class:`~.tables.StepTables` on the device, any history
  window W and optional noise. The step index is a (1,) int64 device tensor; a step
  reads its coefficients with ``index_select`` and ends with ``index += 1``, so one
  captured graph serves every step. It is also the eager step, so eager and
  captured loops run the same kernels and agree bitwise (the parity policy,
  tests/test_cuda_graphs.py).

Noise (``S[i] > 0``) is drawn on the host from the CPU generator, one draw of the
latent shape per noisy step in step order, into a buffer of ``noise_chunk`` draws
that the loop refills between segments of steps (:meth:`TableStepper.segments`; a
refill copies into the same buffer, so a captured step stays valid).
Nothing else draws from the generator during a loop, so this is the order an eager
loop drawing at each step would use.

Both steppers share one interface: ``index`` (the step the next call performs, as a
device tensor the pipeline's pre-step may read), ``model_input(sample)``,
``timestep()`` ((1,) what the denoiser is fed), ``step(sample, output)`` and
``segments(generator)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from mvg_rt.runtime.pipelines.latents import cpu_randn
from mvg_rt.runtime.pipelines.schedulers import step_kwargs
from mvg_rt.runtime.pipelines.steps.tables import StepTables


#: Noise draws held on the device at once: bounds the buffer (25 MB for SEINE at 512x512, 16 frames, FP32)
#: at the cost of a host refill every 25 noisy steps (10 per DDPM-250 clip).
NOISE_CHUNK = 25


class TableStepper:
    """The device-table step over ring buffers of the last W samples and model outputs (see the module docstring)."""

    capturable = True

    def __init__(self, tables: StepTables, latent_shape: tuple[int, ...], device: torch.device,
                 noise_chunk: int = NOISE_CHUNK) -> None:
        on = tables.to(device)
        self.steps = len(tables)
        self.timesteps, self.scale, self.a, self.b, self.s = (
            on.timesteps, on.model_input_scale, on.sample_coefs, on.eps_coefs, on.noise_scale)
        self.write_slots, self.read_slots = tables.write_slots.to(device), tables.read_slots.to(device)
        history = (tables.window, *latent_shape[1:])
        self.samples = torch.zeros(history, device=device)
        self.outputs = torch.zeros(history, device=device)
        self.broadcast = (-1,) + (1,) * (len(latent_shape) - 1)
        self.index = torch.zeros(1, dtype=torch.int64, device=device)
        noisy = [i for i, draws in enumerate(tables.noisy_steps) if draws]  # host: the steps that draw noise
        self.chunk = min(noise_chunk, len(noisy))
        self.noise = torch.zeros((self.chunk, *latent_shape[1:]), device=device) if noisy else None
        ordinal = (torch.cumsum(torch.tensor(tables.noisy_steps, dtype=torch.int64), 0) - 1).clamp(min=0)
        self.noise_slot = (ordinal % max(self.chunk, 1)).to(device)  # step i reads its draw from this slot
        # Segment k runs the steps from the one that reads draw k * chunk (step 0 for k = 0) to the next.
        self.segment_starts = [0] + noisy[self.chunk::self.chunk] if noisy else [0]
        self.noisy_count = len(noisy)

    def reset(self) -> None:
        self.samples.zero_()
        self.outputs.zero_()
        self.index.zero_()

    def model_input(self, sample: Tensor) -> Tensor:
        return sample * self.scale.index_select(0, self.index)

    def timestep(self) -> Tensor:
        return self.timesteps.index_select(0, self.index)

    def step(self, sample: Tensor, output: Tensor) -> Tensor:
        """``x_{i+1}`` for ``i = index``: records ``sample`` and ``output`` (1, ...), combines the window."""
        index = self.index
        slot = self.write_slots.index_select(0, index)
        self.samples.index_copy_(0, slot, sample)
        self.outputs.index_copy_(0, slot, output)
        read = self.read_slots.index_select(0, index).view(-1)
        a = self.a.index_select(0, index).view(self.broadcast)
        b = self.b.index_select(0, index).view(self.broadcast)
        x = ((a * self.samples.index_select(0, read)).sum(0, keepdim=True)
             + (b * self.outputs.index_select(0, read)).sum(0, keepdim=True))
        if self.noise is not None:  # S is 0 on the steps that draw none: x + 0 * n == x
            draw = self.noise.index_select(0, self.noise_slot.index_select(0, index))
            x = x + self.s.index_select(0, index) * draw
        index.add_(1)
        return x

    def segments(self, generator: torch.Generator) -> Iterator[tuple[int, int]]:
        """Steps [start, end) to run between noise refills; refills the buffer before each segment."""
        ends = self.segment_starts[1:] + [self.steps]
        for k, (start, end) in enumerate(zip(self.segment_starts, ends)):
            if self.noise is not None:  # one draw per noisy step, in step order, on the CPU generator
                count = min(self.chunk, self.noisy_count - k * self.chunk)
                draws = [cpu_randn(self.noise.shape[1:], generator, torch.device("cpu")) for _ in range(count)]
                self.noise[:count].copy_(torch.stack(draws))
            yield start, end


class SchedulerStepper:
    """diffusers' own ``scheduler.step`` over ``timesteps`` (a freshly configured scheduler per loop)."""

    capturable = False

    def __init__(self, scheduler: Any, timesteps: Tensor, generator: torch.Generator, eta: float,
                 device: torch.device) -> None:
        self.scheduler, self.timesteps = scheduler, timesteps
        self.model_timesteps = timesteps.to(device=device, dtype=torch.float32)
        self.extra = step_kwargs(scheduler, generator, eta)
        self.steps = len(timesteps)
        self.i = 0
        self.index = torch.zeros(1, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.i = 0
        self.index.zero_()

    def model_input(self, sample: Tensor) -> Tensor:
        return self.scheduler.scale_model_input(sample, self.timesteps[self.i])

    def timestep(self) -> Tensor:
        return self.model_timesteps[self.i : self.i + 1]

    def step(self, sample: Tensor, output: Tensor) -> Tensor:
        x = self.scheduler.step(output, self.timesteps[self.i], sample, **self.extra).prev_sample
        self.i += 1
        self.index.add_(1)
        return x

    def segments(self, generator: torch.Generator) -> Iterator[tuple[int, int]]:
        yield 0, self.steps  # its noise, if any, is drawn inside step from the generator it was given
