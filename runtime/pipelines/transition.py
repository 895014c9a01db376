"""Transition clips between consecutive PIE states (MVG paper Eq 9-10), over any :class:`Backend`.

For states (x_{n-1}, x_n) SEINE generates K frames whose first and last frames are
the two states: the denoiser sees, concatenated on channels, the noisy video latents
(4), a frame mask (1: 0 on the two known frames, 1 on the K-2 frames to generate,
SEINE's "onelast1") and the VAE latents of the masked video (4: the two states,
zero images between them). Classifier-free guidance uses the batch [cond, uncond]
and the prompt with SEINE's suffix. Sampling is guided-diffusion DDPM (SEINE's
default), DDIM, DPM-Solver++(2M) or UniPC over the respaced linear schedule, all as
one linear step over a short history (:class:`~gaussian_schedule.ClipSchedule`), so
the loop is the same for every sampler, and for an epsilon or a v denoiser (the
tables fold v into epsilon; ``eps`` below is then the guided v):

    eps_i = uncond_i + scale * (cond_i - uncond_i)
    x_{i+1} = sum_l A[i, l] x_{i-l} + sum_l B[i, l] eps_{i-l} + S[i] noise_i

Endpoint anchoring: after sampling, the first and last latent frames are set to the
states' own posterior samples (the ones the denoiser was conditioned on), so every
clip starts and ends at its states up to the VAE round trip whatever the weights;
a well-trained SEINE reproduces those frames anyway.

Eq 10 then composites in pixel space: inside the ROI the generated frame, outside
it the mean of the two states.

Random numbers per clip, from the same CPU generator as PIE, in order: the posterior
samples of the K masked frames (frame order), the initial noise (1, 4, K, h, w),
then one noise draw of that shape per stochastic step, i.e. per step with S[i] > 0
(every DDPM step but the last; none for DDIM with eta 0, DPM-Solver++(2M) or UniPC,
which are deterministic ODE solvers).
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
from mvg_rt.runtime.pipelines.gaussian_schedule import MULTISTEP, SAMPLERS, StepTables, clip_schedule
from mvg_rt.runtime.pipelines.latents import cpu_randn, images_to_model_range, model_range_to_images, posterior_sample
from mvg_rt.runtime.pipelines.guidance import guided
from mvg_rt.runtime.pipelines.model_info import ModelInfo
from mvg_rt.runtime.pipelines.roi import composite_transition
from mvg_rt.runtime.pipelines.text import encode_texts

ClipStepCallback = Callable[[int, int, int], None]  # (clip index from 1, step from 1, steps)

#: ``--transitions`` presets: (sampler, steps). "paper" is SEINE's own sampler. "fast" is to be the fastest
#: setting whose clips all meet the transition standard (mvg_rt/eval/transition_quality.py). On the demo model
#: none does yet, DDPM-250 included (benchmarks/results/cpu-2core/transition_samplers.md), so "fast" is the
#: setting closest to it at about 20x less work: DDIM-10 passes 6 of 15 clips, on the path ratio only; the
#: multistep solvers at 10 steps pass none and also fail the heart-size criterion. DDIM is a single-step
#: table, so "fast" also runs in the CUDA-graph clip loop.
TRANSITION_PRESETS: dict[str, tuple[str, int]] = {"paper": ("ddpm", 250), "fast": ("ddim", 10)}


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
        check("--frames", self.frames)  # at least 3: two states and one frame between
        check("--transition-steps", self.steps)
        check("--transition-guidance", self.guidance_scale)
        if self.sampler not in SAMPLERS:
            raise MvgError(f"--transition-sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.decode_batch < 1:
            raise MvgError(f"decode batch must be >= 1, got {self.decode_batch}")

    @classmethod
    def from_preset(cls, preset: str = "paper", sampler: str | None = None, steps: int | None = None,
                    **kwargs: Any) -> TransitionSettings:
        """A preset's sampler and steps; an explicit ``sampler`` / ``steps`` overrides the preset's."""
        if preset not in TRANSITION_PRESETS:
            raise MvgError(f"--transitions must be one of {', '.join(TRANSITION_PRESETS)}, got {preset!r}")
        preset_sampler, preset_steps = TRANSITION_PRESETS[preset]
        return cls(sampler=sampler or preset_sampler, steps=preset_steps if steps is None else steps, **kwargs)

    @property
    def preset(self) -> str | None:
        """The preset whose sampler and steps these are (None: a custom setting)."""
        return next((name for name, setting in TRANSITION_PRESETS.items() if setting == (self.sampler, self.steps)),
                    None)

    @property
    def capturable(self) -> bool:
        """Whether the static-buffer (CUDA-graph) clip loop can replay this sampler: single-step tables only."""
        return self.sampler not in MULTISTEP

    def require_capturable(self) -> None:
        """One-line refusal of a multistep sampler in the static-buffer loop (it replays A, B, S only)."""
        if not self.capturable:
            raise MvgError(f"--transition-sampler {self.sampler} keeps a multistep history that the CUDA-graph "
                           "transition loop cannot replay yet: use --transition-sampler ddpm or ddim, or drop "
                           "--cuda-graphs")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "preset": self.preset}


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
        self.schedule = clip_schedule(settings.sampler, settings.steps, settings.eta, model.seine_prediction_type)
        self.noisy_steps = self.schedule.noisy_steps  # on the host: deciding needs no device sync
        on_device = lambda t: t.to(self.device, torch.float32)  # noqa: E731
        self.timesteps = on_device(self.schedule.timesteps)
        self.sample_coefs, self.eps_coefs, self.noise_scale = (
            on_device(t) for t in (self.schedule.sample_coefs, self.schedule.eps_coefs, self.schedule.noise_scale))
        # Per step, the lags with a non-zero coefficient (host side: no device sync to decide).
        used = (self.schedule.sample_coefs != 0) | (self.schedule.eps_coefs != 0)
        self.lags = [torch.nonzero(row).flatten().tolist() for row in used]

    @property
    def tables(self) -> StepTables:
        """The single-step (A, B, S) tables on the device, for the static-buffer loop; refused for multistep."""
        self.settings.require_capturable()
        return StepTables(self.schedule.timesteps, self.sample_coefs[:, 0], self.eps_coefs[:, 0], self.noise_scale)

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
        """SEINE's sampling loop from noise ``x`` (subclasses swap the loop only; same RNG draws in order).

        Keeps the samples and guided epsilons a later step still reads (the last W).
        """
        guidance, window = self.settings.guidance_scale, self.schedule.window
        samples: list[Tensor | None] = []
        outputs: list[Tensor | None] = []
        for i in range(len(self.schedule)):
            model_input = torch.cat([x, condition], dim=1).expand(2, -1, -1, -1, -1)
            timestep = self.timesteps[i].expand(2)
            cond, uncond = self.backend.predict_video_noise(model_input, timestep, self.text_embeddings).chunk(2)
            eps = guided(cond, uncond, guidance)
            samples.append(x)
            outputs.append(eps)
            x = self._combine(i, samples, outputs)
            if self.noisy_steps[i]:
                x = x + self.noise_scale[i] * cpu_randn(x.shape, generator, self.device)
            if i + 1 - window >= 0:  # no later step reads this far back
                samples[i + 1 - window] = outputs[i + 1 - window] = None
            if on_step is not None:
                on_step(clip_index, i + 1, len(self.schedule))
        return x

    def _combine(self, i: int, samples: list[Tensor | None], outputs: list[Tensor | None]) -> Tensor:
        """``sum_l A[i, l] x_{i-l} + B[i, l] eps_{i-l}`` over the lags used (DDPM/DDIM: ``A x + B eps``).

        Device-tensor coefficients and separate multiply / add, the arithmetic of the
        captured clip step, so eager and captured DDPM/DDIM clips are bitwise equal
        (``linear_steps.TableStepper``'s fused host-scalar ``add_`` differs in the last ulp).
        """
        first, *older = self.lags[i]  # lag 0 is always used: every step moves from its own sample
        x = self.sample_coefs[i, first] * samples[i - first] + self.eps_coefs[i, first] * outputs[i - first]
        for lag in older:
            x = x + (self.sample_coefs[i, lag] * samples[i - lag] + self.eps_coefs[i, lag] * outputs[i - lag])
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
