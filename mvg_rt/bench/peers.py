"""Peers of the PIE round, on the same weights, settings and seed.

``diffusers``' ``StableDiffusionImg2ImgPipeline`` (PyTorch eager) draws random numbers in
the order a PIE round does, so with the ROI = the whole image and beta2 = 1 the outputs
must agree. Optimum's ``ORTStableDiffusionImg2ImgPipeline`` pins a transformers 4.x stack
that cannot share mvg-rt's environment: :mod:`mvg_rt.bench.optimum_peer` runs as a script
in the Python given by ``--optimum-python`` (or ``$MVG_RT_OPTIMUM_PYTHON``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvg_rt.bench.config import E2ESettings
from mvg_rt.bench.machine import synchronizer, timed
from mvg_rt.bench.measure import demo_original
from mvg_rt.bench.models import ModelSource
from mvg_rt.bench.rows import Row
from mvg_rt.errors import MvgError

OPTIMUM_ENV = "MVG_RT_OPTIMUM_PYTHON"
OPTIMUM_LABEL = "Optimum ORTStableDiffusionImg2ImgPipeline (ORT CPU fp32)"


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


def optimum_python(explicit: str | None) -> str:
    """The Python that has Optimum: --optimum-python, $MVG_RT_OPTIMUM_PYTHON, else this one if it imports."""
    if explicit or os.environ.get(OPTIMUM_ENV):
        return explicit or os.environ[OPTIMUM_ENV]
    if importlib.util.find_spec("optimum") and importlib.util.find_spec("optimum.onnxruntime"):
        return sys.executable
    raise MvgError("optimum[onnxruntime] is not importable here and no --optimum-python was given")


def optimum_view(source: ModelSource, cache: Path) -> Path:
    """The model folder as Optimum's stack reads it: links to the weights, a fast-tokenizer index.

    mvg-rt's folders carry the tokenizer as ``tokenizer.json`` (what transformers 5 writes);
    the transformers 4.x that Optimum pins loads that file only through ``CLIPTokenizerFast``.
    """
    view = cache / "optimum" / f"view-{hashlib.sha256(str(source.model_dir.resolve()).encode()).hexdigest()[:12]}"
    shutil.rmtree(view, ignore_errors=True)
    (view / "tokenizer").mkdir(parents=True)
    for part in ("text_encoder", "vae", "unet", "scheduler"):
        (view / part).symlink_to((source.model_dir / part).resolve(), target_is_directory=True)
    for file in (source.model_dir / "tokenizer").iterdir():
        if file.name != "tokenizer_config.json":
            (view / "tokenizer" / file.name).symlink_to(file.resolve())
    config = json.loads((source.model_dir / "tokenizer" / "tokenizer_config.json").read_text())
    config.pop("backend", None)
    (view / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(config | {"tokenizer_class":
                                                                                   "CLIPTokenizerFast"}))
    index = json.loads((source.model_dir / "model_index.json").read_text())
    (view / "model_index.json").write_text(json.dumps(index | {"tokenizer": ["transformers", "CLIPTokenizerFast"]}))
    return view


def optimum_row(source: ModelSource, settings: E2ESettings, cache: Path, python: str) -> Row:
    """Optimum's ORT img2img, run by ``python`` in a subprocess."""
    from mvg_rt.models.provenance import model_dir_fingerprint

    with tempfile.TemporaryDirectory(prefix="mvg-rt-optimum-") as tmp:
        work = Path(tmp)
        np.save(work / "input.npy", demo_original(settings.resolution))
        job = {"view": str(optimum_view(source, cache)), "settings": asdict(settings),
               "onnx_dir": str(cache / "optimum" / f"onnx-{model_dir_fingerprint(source.model_dir)[:16]}"),
               "original": str(work / "input.npy"), "output": str(work / "output.npy")}
        (work / "job.json").write_text(json.dumps(job))
        done = subprocess.run([python, str(Path(__file__).with_name("optimum_peer.py")), str(work / "job.json"),
                               str(work / "result.json")], capture_output=True, text=True,
                              env=os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        if done.returncode != 0:
            raise MvgError(f"exit {done.returncode}: {' | '.join((done.stderr or done.stdout).strip().splitlines()[-3:])}")
        metrics = json.loads((work / "result.json").read_text())
        return Row("pie_round", OPTIMUM_LABEL, metrics={"peer": "optimum", "python": python, **metrics,
                                                        "per_step_s": metrics["median_s"] / metrics["steps"]},
                   outputs={"output": np.load(work / "output.npy")})
