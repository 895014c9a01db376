"""Transition clips between consecutive PIE states (MVG paper Eq 9-10), over any :class:`Backend`.

For states (x_{n-1}, x_n) SEINE generates K frames whose first and last frames are
the two states: the denoiser sees, concatenated on channels, the noisy video latents
(4), a frame mask (1: 0 on the two known frames, 1 on the K-2 frames to generate,
SEINE's "onelast1") and the VAE latents of the masked video (4: the two states,
zero images between them). Classifier-free guidance uses the batch [cond, uncond]
and the prompt with SEINE's suffix. Sampling is guided-diffusion DDPM (SEINE's
default) or DDIM over the respaced linear schedule.

Endpoint anchoring: after sampling, the first and last latent frames are set to the
states' own posterior samples (the ones the denoiser was conditioned on), so every
clip starts and ends at its states up to the VAE round trip whatever the weights;
a well-trained SEINE reproduces those frames anyway.

Eq 10 then composites in pixel space: inside the ROI the generated frame, outside
it the mean of the two states.

Random numbers per clip, from the same CPU generator as PIE, in order: the posterior
samples of the K masked frames (frame order), the initial noise (1, 4, K, h, w),
then one noise draw of that shape per stochastic step (none for DDIM with eta 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from mvg_rt.errors import MvgError
from mvg_rt.runtime.backends.base import Backend
from mvg_rt.runtime.pipelines.gaussian_schedule import SAMPLERS, RespacedSchedule, StepTables
from mvg_rt.runtime.pipelines.latents import cpu_randn, images_to_model_range, model_range_to_images, posterior_sample
from mvg_rt.runtime.pipelines.guidance import guided
from mvg_rt.runtime.pipelines.model_info import ModelInfo
from mvg_rt.runtime.pipelines.roi import composite_transition
from mvg_rt.runtime.pipelines.text import encode_texts

ClipStepCallback = Callable[[int, int, int], None]  # (clip index from 1, step from 1, steps)


@dataclass(frozen=True)
class TransitionSettings:
    """SEINE's defaults: 16 frames, DDPM respaced to 250 steps, CFG 8, suffix "smooth transition."."""

    frames: int = 16
    steps: int = 250
    sampler: str = "ddpm"
    guidance_scale: float = 8.0
    prompt_suffix: str = "smooth transition."
    negative_prompt: str = ""
    eta: float = 0.0
    decode_batch: int = 4  # frames per VAE decode call: bounds memory for long videos

    def __post_init__(self) -> None:
        if self.frames < 3:
            raise MvgError(f"--frames must be at least 3 (two states and one frame between), got {self.frames}")
        if not 1 <= self.steps <= 1000:
            raise MvgError(f"--transition-steps must be in [1, 1000], got {self.steps}")
        if self.sampler not in SAMPLERS:
            raise MvgError(f"--transition-sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.decode_batch < 1:
            raise MvgError(f"decode batch must be >= 1, got {self.decode_batch}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def known_frame_mask(frames: int) -> Tensor:
    """SEINE's "onelast1" mask over frames: 0 for the first and last (known), 1 between (generate)."""
    mask = torch.ones(frames)
    mask[0] = mask[-1] = 0.0
    return mask


def transition_prompt(prompt: str, suffix: str) -> str:
    return f"{prompt.strip()} {suffix}".strip() if suffix else prompt.strip()


class TransitionSampler:
    """Generates the clip between two states; shared text embeddings and tables for all clips."""

    def __init__(self, backend: Backend, model: ModelInfo, settings: TransitionSettings, prompt: str) -> None:
        self.backend, self.model, self.settings = backend, model, settings
        self.device = backend.device
        texts = [transition_prompt(prompt, settings.prompt_suffix), settings.negative_prompt]  # [cond, uncond]
        self.text_embeddings = encode_texts(backend, model.tokenizer, texts)
        tables = RespacedSchedule.linear(settings.steps).tables(settings.sampler, settings.eta)
        self.noisy_steps = (tables.s > 0).tolist()  # on the host: deciding needs no device sync
        self.tables = StepTables(tables.timesteps, *(t.to(self.device, torch.float32) for t in
                                                     (tables.a, tables.b, tables.s)))

    def _masked_video_latents(self, start: Tensor, end: Tensor, generator: torch.Generator) -> Tensor:
        """(1, C, K, h, w) posterior samples of [start, zeros..., end]; each distinct image encoded once."""
        frames, sf = self.settings.frames, self.model.vae_scaling_factor
        images = images_to_model_range(torch.stack([start, end]).to(self.device))
        blank = torch.zeros_like(images[:1])  # SEINE's masked frames: 0 in [-1, 1] space
        moments = self.backend.encode_images(torch.cat([images, blank]))
        per_frame = [moments[0:1]] + [moments[2:3]] * (frames - 2) + [moments[1:2]]
        latents = [posterior_sample(m, generator) * sf for m in per_frame]
        return torch.stack(latents, dim=2)  # (1, C, K, h, w)

    def sample_latents(self, start: Tensor, end: Tensor, generator: torch.Generator, clip_index: int = 1,
                       on_step: ClipStepCallback | None = None) -> Tensor:
        """Denoised clip latents (1, C, K, h, w), endpoints anchored; states are (H, W, 3) uint8."""
        masked = self._masked_video_latents(start, end, generator)
        _, channels, frames, height, width = masked.shape
        frame_mask = known_frame_mask(frames).to(self.device).view(1, 1, frames, 1, 1).expand(1, 1, frames, height,
                                                                                             width)
        condition = torch.cat([frame_mask, masked], dim=1)
        x = cpu_randn((1, channels, frames, height, width), generator, self.device)
        x = self._denoise(x, condition, generator, clip_index, on_step)
        x[:, :, 0], x[:, :, -1] = masked[:, :, 0], masked[:, :, -1]
        return x

    def _denoise(self, x: Tensor, condition: Tensor, generator: torch.Generator, clip_index: int,
                 on_step: ClipStepCallback | None) -> Tensor:
        """SEINE's sampling loop from noise ``x`` (subclasses swap the loop only; same RNG draws in order)."""
        tables, guidance = self.tables, self.settings.guidance_scale
        for i in range(len(tables)):
            model_input = torch.cat([x, condition], dim=1).expand(2, -1, -1, -1, -1)
            timestep = tables.timesteps[i].to(device=self.device, dtype=torch.float32).expand(2)
            cond, uncond = self.backend.predict_video_noise(model_input, timestep, self.text_embeddings).chunk(2)
            eps = guided(cond, uncond, guidance)
            x = tables.a[i] * x + tables.b[i] * eps
            if self.noisy_steps[i]:
                x = x + tables.s[i] * cpu_randn(x.shape, generator, self.device)
            if on_step is not None:
                on_step(clip_index, i + 1, len(tables))
        return x

    def decode_frames(self, latents: Tensor) -> Tensor:
        """(1, C, K, h, w) latents -> (K, H, W, 3) uint8, decoding ``decode_batch`` frames per call."""
        per_frame = latents[0].permute(1, 0, 2, 3) / self.model.vae_scaling_factor
        chunks = per_frame.split(self.settings.decode_batch)
        return torch.cat([model_range_to_images(self.backend.decode_latents(c)) for c in chunks])

    def clip(self, start: Tensor, end: Tensor, roi: Tensor, generator: torch.Generator, clip_index: int = 1,
             on_step: ClipStepCallback | None = None) -> Tensor:
        """The composited clip (K, H, W, 3) uint8 between two states; ``roi`` is (H, W) in [0, 1]."""
        frames = self.decode_frames(self.sample_latents(start, end, generator, clip_index, on_step))
        composited = composite_transition(frames.float(), start.to(self.device).float(), end.to(self.device).float(),
                                          roi.to(self.device).float())
        return composited.round().clamp(0, 255).to(torch.uint8)


def join_clips(clips: list[Tensor]) -> Tensor:
    """Concatenate clips, keeping each shared endpoint once: N clips of K frames -> N*(K-1)+1 frames."""
    return torch.cat([clips[0]] + [clip[1:] for clip in clips[1:]])
