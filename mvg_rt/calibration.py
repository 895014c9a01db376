"""INT8 calibration inputs: the UNet feeds the real pipeline produces, recorded while PIE runs.

Static quantization fixes one scale per activation tensor, so the calibration feeds must
look like what the UNet sees at run time: img2img latents at the schedule's timesteps
(strength 0.6 of 50 steps by default, as the paper's PIE), classifier-free guidance's
[empty prompt, prompt] text pair, the user's image content. Running PIE through the
PyTorch reference and recording every UNet call gives exactly that, without
re-implementing any pipeline step here.

Images: a folder the user gives (``--calibration DIR``: PNG/JPEG/DICOM, the first
``count``), or by default ``count`` demo phantoms (:mod:`mvg_rt.demo.phantom`, a fixed
seed) captioned by their own findings. Prompts: ``--calibration-prompt`` (repeatable,
cycled over the images), else the phantoms' captions, else the demo prompt.

This is a job (it runs the runtime); the export job receives the recorded feeds as data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mvg_rt.components import UNET, ComponentSpec
from mvg_rt.errors import MvgError
from mvg_rt.runtime.backends.base import Backend
from mvg_rt.runtime.factory import Runtime

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff")
DEFAULT_PROMPT = "severe cardiomegaly"
PHANTOM_SEED = 20260


@dataclass(frozen=True)
class CalibrationSettings:
    images: Path | None = None  # folder; None: demo phantoms
    prompts: tuple[str, ...] = ()
    count: int = 4  # images (phantoms generated, or the first of the folder)
    steps: int = 20  # PIE steps; strength 0.6 -> 12 UNet calls per image
    strength: float = 0.6
    resolution: int | None = None  # None: the model's own
    seed: int = 0

    def __post_init__(self) -> None:
        if self.count < 1:
            raise MvgError(f"--calibration-count must be at least 1 (got {self.count})")
        if self.images is not None and not Path(self.images).is_dir():
            raise MvgError(f"--calibration {self.images} is not a folder: give a folder of images")

    def describe(self) -> dict[str, Any]:
        return {"images": str(self.images) if self.images else f"demo phantoms (seed {PHANTOM_SEED})",
                "prompts": list(self.prompts), "count": self.count, "steps": self.steps,
                "strength": self.strength, "seed": self.seed}


class RecordingBackend(Backend):
    """Delegates to ``inner`` and keeps a CPU copy of every feed of one component."""

    def __init__(self, inner: Backend, component: ComponentSpec = UNET) -> None:
        super().__init__(inner.device)
        self.inner, self.component = inner, component
        self.name = inner.name
        self.recorded: list[dict[str, np.ndarray]] = []

    @property
    def components(self) -> frozenset[str]:
        return self.inner.components

    def _infer(self, component: ComponentSpec, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if component.name == self.component.name:
            self.recorded.append({k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in feeds.items()})
        return self.inner.infer(component, feeds)


def calibration_cases(settings: CalibrationSettings, resolution: int) -> list[tuple[np.ndarray, str]]:
    """(image (R, R, 3) uint8, prompt) pairs."""
    from mvg_rt.io.images import read_image, resize_and_crop

    if settings.images is not None:
        files = sorted(p for p in Path(settings.images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise MvgError(f"--calibration {settings.images} has no images ({', '.join(IMAGE_SUFFIXES)})")
        images = [resize_and_crop(read_image(p).pixels, resolution) for p in files[:settings.count]]
        captions = [DEFAULT_PROMPT] * len(images)
    else:
        from mvg_rt.demo.phantom import sample_dataset

        samples = list(sample_dataset(settings.count, PHANTOM_SEED, size=resolution))
        images = [np.repeat(s.image[..., None], 3, axis=2) for s in samples]
        captions = [s.caption or DEFAULT_PROMPT for s in samples]
    prompts = settings.prompts or tuple(captions)
    return [(image, prompts[i % len(prompts)]) for i, image in enumerate(images)]


def record_unet_feeds(runtime: Runtime, settings: CalibrationSettings) -> list[dict[str, np.ndarray]]:
    """Run one PIE round per calibration case (full-image ROI) and return every UNet feed it made."""
    from mvg_rt.io.masks import full_mask
    from mvg_rt.runtime.pipelines.pie import PieSession, PieSettings
    from mvg_rt.runtime.pipelines.roi import latent_mask

    resolution = settings.resolution or runtime.default_resolution
    recorder = RecordingBackend(runtime.backend)
    pie = PieSettings(rounds=1, steps=settings.steps, strength=settings.strength)
    model = runtime.model
    mask = latent_mask(torch.from_numpy(full_mask(resolution).pixels), model.vae_scale_factor, model.latent_channels)
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.inference_mode():
        for image, prompt in calibration_cases(settings, resolution):
            original = torch.from_numpy(np.ascontiguousarray(image))
            session = PieSession(recorder, model, pie, original, mask, prompt)
            session.run_round(original, generator)
    return recorder.recorded
