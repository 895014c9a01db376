"""PIE: progressive image editing (MVG paper Eq 5-6), over any :class:`Backend`.

One round is img2img from the previous state, with the region outside the ROI
pinned to the original image (noised to the current timestep) at every step after
the first, and a final latent blend with the original (Eq 6). N rounds chain: each
round starts from the previous round's uint8 output, as the reference does.

Random numbers, per round, from one CPU generator, in this order (the PIE
reference's order, so the same seed reproduces it):

1. previous state: VAE posterior sample, then the img2img noise;
2. original image: VAE posterior sample (z0 of Eq 6), then one noise draw the
   reference makes and never uses;
3. original image again: VAE posterior sample, then the noise shared by all of
   the round's outside-ROI references ``inter[i]``.

Each draw has the latent shape (1, 4, H/8, W/8). The original's posterior moments
are deterministic, so they are encoded once and sampled twice a round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mvg_rt.errors import MvgError
from mvg_rt.limits import check
from mvg_rt.runtime.backends.base import Backend
from mvg_rt.runtime.graphs.capture import CaptureFn
from mvg_rt.runtime.pipelines.guidance import guided
from mvg_rt.runtime.pipelines.latents import cpu_randn, images_to_model_range, model_range_to_images, posterior_sample
from mvg_rt.runtime.pipelines.model_info import ModelInfo
from mvg_rt.runtime.pipelines.roi import blend_with_original, latent_mask
from mvg_rt.runtime.pipelines.schedulers import check_scheduler, check_steps, img2img_timesteps, make_scheduler
from mvg_rt.runtime.pipelines.steps.loop import DenoisingLoop
from mvg_rt.runtime.pipelines.steps.probe import pie_step_tables, stochastic_reason
from mvg_rt.runtime.pipelines.steps.steppers import SchedulerStepper, TableStepper
from mvg_rt.runtime.pipelines.text import encode_texts

StepCallback = Callable[[int, int, int], None]  # (round index from 1, step index from 1, steps in round)


@dataclass(frozen=True)
class PieSettings:
    """PIE settings; defaults are the paper's best (N=10, gamma=0.6, beta1=0.01, beta2=0.75, T=50)."""

    rounds: int = 10
    strength: float = 0.6
    steps: int = 50
    guidance_scale: float = 7.5
    beta1: float = 0.01
    beta2: float = 0.75
    scheduler: str | None = None  # None: the model's own scheduler
    eta: float = 0.0

    def __post_init__(self) -> None:
        for option, name in (("--rounds", "rounds"), ("--strength", "strength"), ("--steps", "steps"),
                             ("--guidance", "guidance_scale"), ("--beta1", "beta1"), ("--beta2", "beta2")):
            check(option, getattr(self, name))
        check_scheduler(self.scheduler)
        if int(self.steps * self.strength) < 1:
            raise MvgError(
                f"--steps {self.steps} x --strength {self.strength} leaves no denoising step: raise either"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OutsideRoiReplacement:
    """PIE's pre-step (Eq 5): for every step but the first, the original noised to t_i outside the ROI.

    Per step ``i`` it returns ``outside[i] + latents * keep[i]``, with ``keep[i]`` the ROI
    mask (all ones at i = 0: nothing is replaced) and ``outside[i] = inter[i] * (1 - keep[i])``
    loaded before each round, so the step reads both with its index.
    """

    def __init__(self, mask: Tensor, steps: int, latent_shape: tuple[int, ...], device: torch.device) -> None:
        self.keep = mask.to(device).expand(steps, *latent_shape[1:]).clone()
        self.keep[0] = 1.0  # the reference replaces for every i >= 1
        self.outside = torch.zeros_like(self.keep)

    def load(self, references: Tensor) -> None:
        if references.shape != self.keep.shape:
            raise ValueError(f"{references.shape[0]} references for {self.keep.shape[0]} steps")
        self.outside.copy_(references * (1 - self.keep))

    def __call__(self, latents: Tensor, index: Tensor) -> Tensor:
        return self.outside.index_select(0, index) + latents * self.keep.index_select(0, index)


class GuidedUnet:
    """PIE's denoiser: the UNet on the batch [uncond, cond] (diffusers' order), combined by CFG."""

    def __init__(self, backend: Backend, text_embeddings: Tensor, guidance_scale: float) -> None:
        self.backend, self.guidance_scale = backend, guidance_scale
        self.text = text_embeddings
        self.use_cfg = text_embeddings.shape[0] == 2

    def __call__(self, sample: Tensor, timestep: Tensor) -> Tensor:
        batch = torch.cat([sample, sample]) if self.use_cfg else sample
        noise = self.backend.predict_noise(batch, timestep.expand(batch.shape[0]), self.text)
        if not self.use_cfg:
            return noise
        uncond, cond = noise.chunk(2)
        return guided(cond, uncond, self.guidance_scale)


class PieSession:
    """The PIE state shared by all rounds of one simulation: prompt embeddings, original, mask, the loop."""

    def __init__(
        self,
        backend: Backend,
        model: ModelInfo,
        settings: PieSettings,
        original: Tensor,
        latent_mask: Tensor,
        prompt: str,
        negative_prompt: str = "",
        stepper: str = "auto",
        capture: CaptureFn | None = None,
        warmup: int = 1,
    ) -> None:
        """``original`` is (H, W, 3) uint8; ``latent_mask`` is (1, C, H/8, W/8) in [0, 1].

        ``stepper``: how the scheduler update is applied. ``auto``: the device-table
        step when the scheduler is linear, else diffusers' ``step``; ``scheduler``:
        always diffusers' ``step`` (the reference); ``tables``: the table step or an
        error. ``capture``: how the round's step is captured (None: eager); it needs
        the table step, so a scheduler that draws noise is refused with its name.
        """
        if stepper not in ("auto", "scheduler", "tables"):
            raise ValueError(f"unknown stepper {stepper!r}")
        if stepper == "scheduler" and capture is not None:
            raise ValueError("diffusers' step is host-indexed: a captured round needs the table step")
        self.backend, self.model, self.settings = backend, model, settings
        self.device = backend.device
        use_cfg = settings.guidance_scale > 1.0
        texts = [negative_prompt, prompt] if use_cfg else [prompt]  # [uncond, cond], as diffusers
        self.text_embeddings = encode_texts(backend, model.tokenizer, texts)
        self.denoise = GuidedUnet(backend, self.text_embeddings, settings.guidance_scale)
        self.original = original
        self.mask = latent_mask.to(self.device)
        self.original_moments = backend.encode_images(images_to_model_range(original[None]).to(self.device))
        probe = make_scheduler(model.scheduler_config, settings.scheduler)
        check_steps(probe, settings.steps)
        needs_tables = stepper == "tables" or capture is not None
        if stepper == "scheduler" or (stochastic_reason(probe, settings.eta) is not None and not needs_tables):
            self.step_tables = None
        else:  # refuses a scheduler that draws noise, with its name and the fix
            self.step_tables = pie_step_tables(model.scheduler_config, settings.scheduler, settings.steps,
                                               settings.strength, settings.eta)
        self.capture, self.warmup = capture, warmup
        self.loop: DenoisingLoop | None = None  # the table loop, kept across rounds (and its graph)

    def run_round(self, previous: Tensor, generator: torch.Generator, round_index: int = 1,
                  on_step: StepCallback | None = None) -> Tensor:
        """One PIE round from ``previous`` ((H, W, 3) uint8) -> the next state, (H, W, 3) uint8."""
        latents = self.round_latents(previous, generator, round_index, on_step)
        return model_range_to_images(self.decode(latents))[0]

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents -> decoder output (B, 3, H, W) in about [-1, 1]."""
        return self.backend.decode_latents(latents / self.model.vae_scaling_factor)

    def round_latents(self, previous: Tensor, generator: torch.Generator, round_index: int = 1,
                      on_step: StepCallback | None = None) -> Tensor:
        """The round's final latents (after Eq 6), before decoding."""
        settings, sf = self.settings, self.model.vae_scaling_factor
        scheduler = make_scheduler(self.model.scheduler_config, settings.scheduler)
        scheduler.set_timesteps(settings.steps, device=self.device)
        timesteps = img2img_timesteps(scheduler, settings.steps, settings.strength)

        # RNG order: see the module docstring.
        previous_moments = self.backend.encode_images(images_to_model_range(previous[None]).to(self.device))
        start = posterior_sample(previous_moments, generator) * sf
        latents = scheduler.add_noise(start, cpu_randn(start.shape, generator, self.device), timesteps[:1])
        original_latents = posterior_sample(self.original_moments, generator) * sf
        cpu_randn(start.shape, generator, self.device)  # drawn and unused by the reference
        reference = posterior_sample(self.original_moments, generator) * sf
        references = self._noised_to_each(reference, cpu_randn(start.shape, generator, self.device), timesteps)

        loop = self._loop(tuple(latents.shape), scheduler, timesteps, generator)
        loop.prepare.load(references)
        progress = None if on_step is None else (lambda i: on_step(round_index, i + 1, loop.steps))
        latents = loop.run(latents, generator, progress)
        return blend_with_original(latents, original_latents, self.mask, settings.beta1, settings.beta2)

    def _loop(self, latent_shape: tuple[int, ...], scheduler: Any, timesteps: Tensor,
              generator: torch.Generator) -> DenoisingLoop:
        """The round's loop (Eq 5): the session's table loop, or a fresh diffusers-step loop per round."""
        if self.step_tables is None:
            stepper = SchedulerStepper(scheduler, timesteps, generator, self.settings.eta, self.device)
            prepare = OutsideRoiReplacement(self.mask, len(timesteps), latent_shape, self.device)
            return DenoisingLoop(stepper, self.denoise, latent_shape, self.device, prepare)
        if self.loop is None or tuple(self.loop.latents.shape) != latent_shape:
            steps = len(self.step_tables)
            self.loop = DenoisingLoop(TableStepper(self.step_tables, latent_shape, self.device), self.denoise,
                                      latent_shape, self.device,
                                      OutsideRoiReplacement(self.mask, steps, latent_shape, self.device),
                                      self.capture, self.warmup, lambda: self.backend.graph_generation("unet"))
        return self.loop

    def describe_graphs(self) -> dict[str, Any] | None:
        """The step graph's captures and replays (None before the first table round)."""
        return None if self.loop is None else self.loop.describe()

    def _noised_to_each(self, clean: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``clean`` noised to every timestep of the round with one shared noise: (k, C, h, w).

        A separate scheduler does it, because sigma-based schedulers tie ``add_noise``
        to their step state once ``set_begin_index`` was called.
        """
        noiser = make_scheduler(self.model.scheduler_config, self.settings.scheduler)
        noiser.set_timesteps(self.settings.steps, device=self.device)
        return noiser.add_noise(clean.expand(len(timesteps), -1, -1, -1), noise.expand(len(timesteps), -1, -1, -1),
                                timesteps)


def pie_session(backend: Backend, model: ModelInfo, settings: PieSettings, original: np.ndarray,
                roi_pixels: np.ndarray, prompt: str, negative_prompt: str = "", step_graphs: bool = False,
                stepper: str = "auto") -> PieSession:
    """A PIE session on ``original`` ((H, W, 3) uint8) with the ROI ``roi_pixels`` ((H, W) uint8 gray).

    ``step_graphs``: capture the round's step as the backend captures whole steps (``--cuda-graphs``).
    """
    mask = latent_mask(torch.from_numpy(roi_pixels), model.vae_scale_factor, model.latent_channels)
    return PieSession(backend, model, settings, torch.from_numpy(original).to(backend.device), mask, prompt,
                      negative_prompt, stepper, backend.step_capture() if step_graphs else None)


def run_pie(session: PieSession, generator: torch.Generator, on_step: StepCallback | None = None,
            on_round: Callable[[int, Tensor], None] | None = None) -> list[Tensor]:
    """All rounds; returns [original, state_1, ..., state_N] as (H, W, 3) uint8 tensors."""
    states = [session.original]
    for round_index in range(1, session.settings.rounds + 1):
        states.append(session.run_round(states[-1], generator, round_index, on_step))
        if on_round is not None:
            on_round(round_index, states[-1])
    return states
