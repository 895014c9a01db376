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
    """The device-table step as one weighted sum over one history buffer (see the module docstring).

    The buffer holds the last W samples, the last W model outputs and the current
    noise chunk: ``[s ring (W) | e ring (W) | noise (chunk)]``. Step ``i`` writes
    ``s_i`` and ``e_i`` to their ring slots, then returns
    ``sum_k coefs[i, k] * buffer[reads[i, k]]`` with ``coefs[i] = [A[i] | B[i] | S[i]]``:
    a handful of kernels whatever the sampler, the same ones every step.
    """

    capturable = True

    def __init__(self, tables: StepTables, latent_shape: tuple[int, ...], device: torch.device,
                 noise_chunk: int = NOISE_CHUNK) -> None:
        on, window = tables.to(device), tables.window
        self.steps = len(tables)
        self.timesteps, self.scale = on.timesteps, on.model_input_scale
        noisy = [i for i, draws in enumerate(tables.noisy_steps) if draws]  # host: the steps that draw noise
        self.chunk = min(noise_chunk, len(noisy))
        ordinal = (torch.cumsum(torch.tensor(tables.noisy_steps, dtype=torch.int64), 0) - 1).clamp(min=0)
        coefs, reads = [on.sample_coefs, on.eps_coefs], [tables.read_slots, tables.read_slots + window]
        if noisy:  # step i reads its draw from slot ordinal % chunk of the noise part
            coefs.append(on.noise_scale[:, None])
            reads.append(2 * window + (ordinal % self.chunk)[:, None])
        self.coefs, self.reads = torch.cat(coefs, dim=1), torch.cat(reads, dim=1).to(device)
        self.sample_slots = tables.write_slots.to(device)
        self.output_slots = self.sample_slots + window
        self.history = torch.zeros((2 * window + self.chunk, *latent_shape[1:]), device=device)
        self.noise = self.history[2 * window:]
        self.broadcast = (-1,) + (1,) * (len(latent_shape) - 1)
        self.index = torch.zeros(1, dtype=torch.int64, device=device)
        # Segment k runs the steps from the one that reads draw k * chunk (step 0 for k = 0) to the next.
        self.segment_starts = [0] + noisy[self.chunk::self.chunk] if noisy else [0]
        self.noisy_count = len(noisy)

    def reset(self) -> None:
        self.history.zero_()
        self.index.zero_()

    def model_input(self, sample: Tensor) -> Tensor:
        return sample * self.scale.index_select(0, self.index)

    def timestep(self) -> Tensor:
        return self.timesteps.index_select(0, self.index)

    def step(self, sample: Tensor, output: Tensor) -> Tensor:
        """``x_{i+1}`` for ``i = index``: records ``sample`` and ``output`` (1, ...), combines the history."""
        index = self.index
        self.history.index_copy_(0, self.sample_slots.index_select(0, index), sample)
        self.history.index_copy_(0, self.output_slots.index_select(0, index), output)
        weights = self.coefs.index_select(0, index).view(self.broadcast)
        terms = self.history.index_select(0, self.reads.index_select(0, index).view(-1))
        index.add_(1)
        return (weights * terms).sum(0, keepdim=True)

    def segments(self, generator: torch.Generator) -> Iterator[tuple[int, int]]:
        """Steps [start, end) to run between noise refills; refills the noise before each segment."""
        ends = self.segment_starts[1:] + [self.steps]
        for k, (start, end) in enumerate(zip(self.segment_starts, ends)):
            count = min(self.chunk, self.noisy_count - k * self.chunk)
            if count > 0:  # one draw per noisy step, in step order, on the CPU generator
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
