"""Transition clips between consecutive PIE states (MVG paper Eq 9-10), over any :class:`Backend`.

For states (x_{n-1}, x_n) SEINE generates K frames whose first and last frames are
the two states: the denoiser sees, concatenated on channels, the noisy video latents
(4), a frame mask (1: 0 on the two known frames, 1 on the K-2 frames to generate,
SEINE's "onelast1") and the VAE latents of the masked video (4: the two states,
zero images between them). Classifier-free guidance uses the batch [cond, uncond]
and the prompt with SEINE's suffix. Sampling is guided-diffusion DDPM (SEINE's
default), DDIM, DPM-Solver++(2M) or UniPC over the respaced linear schedule, all as
one linear step over a short history (:class:`~.steps.tables.StepTables`), so the
loop (:class:`~.steps.loop.DenoisingLoop`, the one PIE runs too) is the same for
every sampler, eager or captured, and for an epsilon or a v denoiser (the tables
fold v into epsilon; ``eps`` below is then the guided v):

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
from mvg_rt.runtime.graphs.capture import CaptureFn
from mvg_rt.runtime.pipelines.gaussian_schedule import SAMPLERS, clip_schedule
from mvg_rt.runtime.pipelines.guidance import guided
from mvg_rt.runtime.pipelines.latents import cpu_randn, images_to_model_range, model_range_to_images, posterior_sample
from mvg_rt.runtime.pipelines.model_info import ModelInfo
from mvg_rt.runtime.pipelines.roi import composite_transition
from mvg_rt.runtime.pipelines.steps.loop import DenoisingLoop
from mvg_rt.runtime.pipelines.steps.steppers import NOISE_CHUNK, TableStepper
from mvg_rt.runtime.pipelines.text import encode_texts

ClipStepCallback = Callable[[int, int, int], None]  # (clip index from 1, step from 1, steps)

#: ``--transitions`` presets: (sampler, steps). "paper" is SEINE's own sampler. "fast" is to be the fastest
#: setting whose clips all meet the transition standard (mvg_rt/eval/transition_quality.py). On the demo model
#: none does yet, DDPM-250 included (benchmarks/results/cpu-2core/transition_samplers.md), so "fast" is the
#: setting closest to it at about 20x less work: DDIM-10 passes 13 of 15 clips (as many as DDIM-25), failing on
#: the path ratio only; the multistep solvers at 10 steps pass none. Every sampler runs in the CUDA-graph loop.
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

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "preset": self.preset}


def known_frame_mask(frames: int) -> Tensor:
    """SEINE's "onelast1" mask over frames: 0 for the first and last (known), 1 between (generate)."""
    mask = torch.ones(frames)
    mask[0] = mask[-1] = 0.0
    return mask


def transition_prompt(prompt: str, suffix: str) -> str:
    return f"{prompt.strip()} {suffix}".strip() if suffix else prompt.strip()


class GuidedSeine:
    """SEINE's denoiser: [noisy latents | condition] on channels, the batch [cond, uncond], combined by CFG.

    The condition (frame mask + masked-video latents) lives in a static buffer loaded before each clip.
    """

    def __init__(self, backend: Backend, text_embeddings: Tensor, guidance_scale: float,
                 condition_shape: tuple[int, ...], device: torch.device) -> None:
        self.backend, self.text, self.guidance_scale = backend, text_embeddings, guidance_scale
        self.condition = torch.zeros(condition_shape, device=device)

    def __call__(self, sample: Tensor, timestep: Tensor) -> Tensor:
        model_input = torch.cat([sample, self.condition], dim=1).expand(2, -1, -1, -1, -1)
        cond, uncond = self.backend.predict_video_noise(model_input, timestep.expand(2), self.text).chunk(2)
        return guided(cond, uncond, self.guidance_scale)


class TransitionSampler:
    """Generates the clip between two states; shared text embeddings, tables and loop for all clips.

    ``capture``: how the clip's step is captured (None: eager; every sampler can be).
    ``noise_chunk``: DDPM draws held on the device at once (:data:`~.steps.steppers.NOISE_CHUNK`).
    """

    def __init__(self, backend: Backend, model: ModelInfo, settings: TransitionSettings, prompt: str,
                 capture: CaptureFn | None = None, warmup: int = 1, noise_chunk: int = NOISE_CHUNK) -> None:
        self.backend, self.model, self.settings = backend, model, settings
        self.device = backend.device
        texts = [transition_prompt(prompt, settings.prompt_suffix), settings.negative_prompt]  # [cond, uncond]
        self.text_embeddings = encode_texts(backend, model.tokenizer, texts)
        self.schedule = clip_schedule(settings.sampler, settings.steps, settings.eta, model.seine_prediction_type)
        self.capture, self.warmup, self.noise_chunk = capture, warmup, noise_chunk
        self.loop: DenoisingLoop | None = None

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
        x = cpu_randn((1, channels, frames, height, width), generator, self.device)
        loop = self._loop(tuple(x.shape), 1 + channels)
        loop.denoise.condition.copy_(torch.cat([frame_mask, masked], dim=1))
        progress = None if on_step is None else (lambda i: on_step(clip_index, i + 1, loop.steps))
        x = loop.run(x, generator, progress)
        x[:, :, 0], x[:, :, -1] = masked[:, :, 0], masked[:, :, -1]
        return x

    def _loop(self, latent_shape: tuple[int, ...], condition_channels: int) -> DenoisingLoop:
        if self.loop is None or tuple(self.loop.latents.shape) != latent_shape:
            stepper = TableStepper(self.schedule, latent_shape, self.device, self.noise_chunk)
            denoise = GuidedSeine(self.backend, self.text_embeddings, self.settings.guidance_scale,
                                  (1, condition_channels, *latent_shape[2:]), self.device)
            self.loop = DenoisingLoop(stepper, denoise, latent_shape, self.device, capture=self.capture,
                                      warmup=self.warmup, generation=lambda: self.backend.graph_generation("seine"))
        return self.loop

    def describe_graphs(self) -> dict[str, Any] | None:
        """The step graph's captures and replays (None before the first clip)."""
        return None if self.loop is None else self.loop.describe()

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


def transition_sampler(backend: Backend, model: ModelInfo, settings: TransitionSettings, prompt: str,
                       step_graphs: bool = False) -> TransitionSampler:
    """A sampler whose clip step is captured as the backend captures whole steps when ``step_graphs``
    (``--cuda-graphs``)."""
    return TransitionSampler(backend, model, settings, prompt, backend.step_capture() if step_graphs else None)


def run_transitions(sampler: TransitionSampler, states: list[Tensor], roi: Tensor, generator: torch.Generator,
                    on_step: ClipStepCallback | None = None,
                    on_clip: Callable[[int], None] | None = None) -> Tensor:
    """One clip per pair of consecutive states ((H, W, 3) uint8), joined: N*(K-1)+1 frames on the CPU.

    ``roi`` is (H, W) in [0, 1]; the clips draw from ``generator`` in clip order.
    """
    clips = []
    for index, (start, end) in enumerate(zip(states[:-1], states[1:]), start=1):
        clips.append(sampler.clip(start, end, roi, generator, index, on_step).cpu())
        if on_clip is not None:
            on_clip(index)
    return join_clips(clips)
