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

import torch
from torch import Tensor

from mvg_rt.errors import MvgError
from mvg_rt.limits import check
from mvg_rt.runtime.backends.base import Backend
from mvg_rt.runtime.pipelines.guidance import guided
from mvg_rt.runtime.pipelines.model_info import ModelInfo
from mvg_rt.runtime.pipelines.latents import cpu_randn, images_to_model_range, model_range_to_images, posterior_sample
from mvg_rt.runtime.pipelines.roi import blend_with_original, replace_outside_roi
from mvg_rt.runtime.pipelines.linear_steps import SchedulerStepper, TableStepper, is_stochastic, pie_step_tables
from mvg_rt.runtime.pipelines.schedulers import check_scheduler, check_steps, img2img_timesteps, make_scheduler
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


class PieSession:
    """The PIE state shared by all rounds of one simulation: prompt embeddings, original, mask."""

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
    ) -> None:
        """``original`` is (H, W, 3) uint8; ``latent_mask`` is (1, C, H/8, W/8) in [0, 1].

        ``stepper``: how the eager loop applies the scheduler update. ``auto``: from the
        scheduler's coefficient tables when it is linear (the lean step), else diffusers'
        ``step``; ``scheduler``: always diffusers' ``step`` (the reference); ``tables``.
        """
        if stepper not in ("auto", "scheduler", "tables"):
            raise ValueError(f"unknown stepper {stepper!r}")
        self.backend, self.model, self.settings = backend, model, settings
        self.device = backend.device
        self.use_cfg = settings.guidance_scale > 1.0
        texts = [negative_prompt, prompt] if self.use_cfg else [prompt]  # [uncond, cond], as diffusers
        self.text_embeddings = encode_texts(backend, model.tokenizer, texts)
        self.original = original
        self.mask = latent_mask.to(self.device)
        self.original_moments = backend.encode_images(images_to_model_range(original[None]).to(self.device))
        probe = make_scheduler(model.scheduler_config, settings.scheduler)
        check_steps(probe, settings.steps)
        self.step_tables = None if is_stochastic(probe, settings.eta) else pie_step_tables(
            model.scheduler_config, settings.scheduler, settings.steps, settings.strength, settings.eta)
        if stepper == "tables" and self.step_tables is None:
            raise MvgError(f"{type(probe).__name__} draws noise in every step: it has no coefficient tables")
        self.use_tables = stepper != "scheduler" and self.step_tables is not None

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

        latents = self._denoise(scheduler, timesteps, latents, references, generator, round_index, on_step)
        return blend_with_original(latents, original_latents, self.mask, settings.beta1, settings.beta2)

    def _denoise(self, scheduler: Any, timesteps: Tensor, latents: Tensor, references: Tensor,
                 generator: torch.Generator, round_index: int, on_step: StepCallback | None) -> Tensor:
        """The round's denoising loop (Eq 5), eagerly; subclasses swap the loop only.

        For i >= 1 the region outside the ROI is first replaced by the original noised to
        t_i (the reference's condition), then one CFG UNet step and the scheduler update.
        """
        stepper = TableStepper(self.step_tables) if self.use_tables else SchedulerStepper(
            scheduler, generator, self.settings.eta)
        batch_size = 2 if self.use_cfg else 1
        model_timesteps = timesteps.to(device=self.device, dtype=torch.float32)
        for i, t in enumerate(timesteps):
            if i >= 1:
                latents = replace_outside_roi(latents, references[i : i + 1], self.mask)
            batch = stepper.scale_model_input(torch.cat([latents] * batch_size), i, t)
            noise = self.backend.predict_noise(batch, model_timesteps[i].expand(batch_size), self.text_embeddings)
            if self.use_cfg:
                uncond, cond = noise.chunk(2)  # batch order [uncond, cond], as diffusers
                noise = guided(cond, uncond, self.settings.guidance_scale)
            latents = stepper.step(i, t, latents, noise)
            if on_step is not None:
                on_step(round_index, i + 1, len(timesteps))
        return latents

    def _noised_to_each(self, clean: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``clean`` noised to every timestep of the round with one shared noise: (k, C, h, w).

        A separate scheduler does it, because sigma-based schedulers tie ``add_noise``
        to their step state once ``set_begin_index`` was called.
        """
        noiser = make_scheduler(self.model.scheduler_config, self.settings.scheduler)
        noiser.set_timesteps(self.settings.steps, device=self.device)
        return noiser.add_noise(clean.expand(len(timesteps), -1, -1, -1), noise.expand(len(timesteps), -1, -1, -1),
                                timesteps)


def run_pie(session: PieSession, generator: torch.Generator, on_step: StepCallback | None = None,
            on_round: Callable[[int, Tensor], None] | None = None) -> list[Tensor]:
    """All rounds; returns [original, state_1, ..., state_N] as (H, W, 3) uint8 tensors."""
    states = [session.original]
    for round_index in range(1, session.settings.rounds + 1):
        states.append(session.run_round(states[-1], generator, round_index, on_step))
        if on_round is not None:
            on_round(round_index, states[-1])
    return states
