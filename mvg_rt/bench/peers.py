"""The PIE round's peer: diffusers' ``StableDiffusionImg2ImgPipeline`` in PyTorch eager, what a user would
pick first, on the same model folder, settings and seed. It draws random numbers in the order a PIE round
does, so with the ROI = the whole image and beta2 = 1 the outputs must agree."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvg_rt.bench.config import E2ESettings
from mvg_rt.bench.machine import synchronizer, timed
from mvg_rt.bench.measure import demo_original
from mvg_rt.bench.rows import Row


def load_diffusers_img2img(model_dir: Path, device: str, dtype: torch.dtype) -> Any:
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(model_dir), safety_checker=None, torch_dtype=dtype,
                                                          requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def img2img_call(pipe: Any, image: np.ndarray, settings: E2ESettings, steps: int | None = None,
                 strength: float | None = None, callback: Any = None) -> np.ndarray:
    """One diffusers img2img call with the bench's settings; (H, W, 3) uint8 as numpy_to_pil rounds."""
    from PIL import Image

    out = pipe(settings.prompt, image=Image.fromarray(image), strength=strength or settings.strength,
               num_inference_steps=steps or settings.steps, guidance_scale=settings.guidance,
               negative_prompt=settings.negative_prompt or None, output_type="np", callback_on_step_end=callback,
               generator=torch.Generator().manual_seed(settings.seed)).images[0]
    return (out * 255).round().astype(np.uint8)


def diffusers_row(model_dir: Path, settings: E2ESettings, device: str, precision: str) -> Row:
    import diffusers

    started = time.perf_counter()
    pipe = load_diffusers_img2img(model_dir, device, torch.float16 if precision == "fp16" else torch.float32)
    load, original = time.perf_counter() - started, demo_original(settings.resolution)
    started = time.perf_counter()
    img2img_call(pipe, original, settings, steps=1, strength=1.0)  # warm-up: every network once
    synchronizer(device)()
    warm = time.perf_counter() - started
    stats, output = timed(lambda: img2img_call(pipe, original, settings), settings.repeat, device)
    metrics = {"peer": "diffusers", "load_s": load, "warmup_s": warm, **stats, "steps": settings.denoising_steps,
               "per_step_s": stats["median_s"] / settings.denoising_steps, "scheduler": type(pipe.scheduler).__name__,
               "versions": {"diffusers": diffusers.__version__}}
    return Row("pie_round", f"diffusers img2img (PyTorch eager {precision})", metrics=metrics,
               outputs={"output": output})
