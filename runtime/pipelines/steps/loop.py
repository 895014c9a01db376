"""The one denoising loop both pipelines run: static latents, a stepper, a pre-step and a denoiser.

A step is

    sample = prepare(latents, index)          # PIE: the original outside the ROI; transitions: none
    output = denoise(stepper.model_input(sample), stepper.timestep())   # guided model output
    latents = stepper.step(sample, output)

over buffers that live as long as the loop, so with a :class:`~.steppers.TableStepper`
the step has no host decisions and no host synchronisation: on a GPU one captured
graph (:class:`~mvg_rt.runtime.graphs.step_graph.LoopGraph`) is replayed for every
step of every round or clip that reuses the loop; without a capture function the
very same step runs eagerly, on any device. What stays on the host, before and after
the loop: encoding, posterior sampling, the start latents' noise, noise refills
between segments, the Eq 6 blend, endpoint anchoring and decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mvg_rt.runtime.graphs.capture import CaptureFn
from mvg_rt.runtime.graphs.step_graph import LoopGraph
from mvg_rt.runtime.pipelines.steps.steppers import SchedulerStepper, TableStepper

Denoise = Callable[[Tensor, Tensor], Tensor]  # (model input, (1,) timestep) -> guided model output
PreStep = Callable[[Tensor, Tensor], Tensor]  # (latents, (1,) step index) -> the sample the step is given


class DenoisingLoop:
    """Runs ``stepper.steps`` steps from given latents (see the module docstring)."""

    def __init__(self, stepper: TableStepper | SchedulerStepper, denoise: Denoise, latent_shape: tuple[int, ...],
                 device: torch.device, prepare: PreStep | None = None, capture: CaptureFn | None = None,
                 warmup: int = 1, generation: Callable[[], int] = lambda: 0) -> None:
        if capture is not None and not stepper.capturable:
            raise ValueError(f"{type(stepper).__name__} is host-indexed: it cannot be captured")
        self.stepper, self.denoise, self.prepare = stepper, denoise, prepare
        self.steps = stepper.steps
        self.latents = torch.zeros(latent_shape, device=device)
        self.graph = LoopGraph(self._step, capture, warmup, generation)

    def _step(self) -> None:
        stepper = self.stepper
        sample = self.latents if self.prepare is None else self.prepare(self.latents, stepper.index)
        output = self.denoise(stepper.model_input(sample), stepper.timestep())
        self.latents.copy_(stepper.step(sample, output))

    def run(self, latents: Tensor, generator: torch.Generator, on_step: Callable[[int], None] | None = None) -> Tensor:
        """Denoise from ``latents``; ``on_step(i)`` after step i (0-based). Returns new latents."""
        self.latents.copy_(latents)
        self.stepper.reset()
        for start, end in self.stepper.segments(generator):
            self.graph.run(end - start, None if on_step is None else (lambda i, s=start: on_step(s + i)))
        return self.latents.clone()

    def describe(self) -> dict[str, Any]:
        return self.graph.describe()
