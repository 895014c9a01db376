"""Peers measured in the same run, on the same weights and settings as mvg-rt's PIE round.

* ``diffusers``: ``StableDiffusionImg2ImgPipeline`` in PyTorch eager, what a user
  would pick first. Loaded from the same model folder (so the same scheduler
  config), called with the same strength, steps, guidance, prompt, image and a CPU
  generator with the same seed: it consumes random numbers in the order a PIE round
  does, so with the ROI = the whole image and beta2 = 1 the outputs must agree.
* ``optimum``: Hugging Face Optimum's ``ORTStableDiffusionImg2ImgPipeline`` (ONNX
  Runtime) over the same folder exported with Optimum's own exporter. It runs in a
  separate Python (``--optimum-python``) when Optimum cannot live in mvg-rt's
  environment; :mod:`mvg_rt.bench.optimum_peer` is the script it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvg_rt.bench.e2e import E2ESettings, demo_inputs
from mvg_rt.bench.models import ModelSource
from mvg_rt.bench.timing import summarize, synchronizer

OPTIMUM_ENV = "MVG_RT_OPTIMUM_PYTHON"


def load_diffusers_img2img(model_dir: Path, device: str, dtype: torch.dtype) -> Any:
    from diffusers import StableDiffusionImg2ImgPipeline

    extra = {} if dtype == torch.float32 else {"torch_dtype": dtype}
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(model_dir), safety_checker=None,
                                                          requires_safety_checker=False, local_files_only=True,
                                                          **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def img2img_call(pipe: Any, image: np.ndarray, settings: E2ESettings, steps: int | None = None,
                 strength: float | None = None, callback: Any = None) -> np.ndarray:
    """One diffusers img2img call with the bench's settings; (H, W, 3) uint8 as numpy_to_pil rounds."""
    from PIL import Image

    generator = torch.Generator().manual_seed(settings.seed)
    out = pipe(settings.prompt, image=Image.fromarray(image), strength=strength or settings.strength,
               num_inference_steps=steps or settings.steps, guidance_scale=settings.guidance,
               negative_prompt=settings.negative_prompt or None, generator=generator, output_type="np",
               callback_on_step_end=callback).images[0]
    return (out * 255).round().astype(np.uint8)


def run_diffusers(source: ModelSource, settings: E2ESettings, device: str, precision: str,
                  workdir: Path) -> dict[str, Any]:
    from mvg_rt.bench.memory import PeakTracker

    dtype = torch.float16 if precision == "fp16" else torch.float32
    started = time.perf_counter()
    pipe = load_diffusers_img2img(source.model_dir, device, dtype)
    load = time.perf_counter() - started
    original, _ = demo_inputs(settings.resolution)
    sync = synchronizer(device)
    started = time.perf_counter()
    img2img_call(pipe, original, settings, steps=1, strength=1.0)  # warm-up: every network once
    sync()
    warm = time.perf_counter() - started
    tracker = PeakTracker(torch.device(device))
    tracker.start()
    samples, output = [], None
    for _ in range(settings.repeat):
        started = time.perf_counter()
        output = img2img_call(pipe, original, settings)
        sync()
        samples.append(time.perf_counter() - started)
    memory = tracker.stop()
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"diffusers-{precision}-pie_round.npy"
    np.save(path, output)
    import diffusers

    return {"peer": "diffusers", "label": f"diffusers img2img (PyTorch eager {precision})", "load_s": load,
            "warmup_s": warm, "round": {**summarize(samples), "steps": settings.denoising_steps, "memory": memory},
            "outputs": {"pie_round": str(path)}, "versions": {"diffusers": diffusers.__version__},
            "scheduler": type(pipe.scheduler).__name__}


# ------------------------------------------------------------------ Optimum (ONNX Runtime)


def optimum_python(explicit: str | None) -> tuple[str | None, str]:
    """The Python that has Optimum: --optimum-python, $MVG_RT_OPTIMUM_PYTHON, else this one if it imports."""
    for candidate, how in ((explicit, "--optimum-python"), (os.environ.get(OPTIMUM_ENV), f"${OPTIMUM_ENV}")):
        if candidate:
            return candidate, how
    try:
        import importlib.util

        if importlib.util.find_spec("optimum.onnxruntime") is not None:
            return sys.executable, "this Python"
    except (ImportError, ValueError):
        pass
    return None, "optimum[onnxruntime] is not importable here and no --optimum-python was given"


def optimum_view(source: ModelSource, cache: Path) -> Path:
    """The model folder as Optimum's stack reads it: links to the weights, a fast-tokenizer index.

    mvg-rt's folders carry the tokenizer as ``tokenizer.json`` (what transformers 5
    writes); the transformers 4.x that Optimum pins loads that file only through
    ``CLIPTokenizerFast``, so the view names that class. Weights are symlinks.
    """
    import hashlib

    key = hashlib.sha256(str(source.model_dir.resolve()).encode()).hexdigest()[:12]
    view = cache / "optimum" / f"view-{key}"
    shutil.rmtree(view, ignore_errors=True)
    (view / "tokenizer").mkdir(parents=True)
    for part in ("text_encoder", "vae", "unet", "scheduler"):
        (view / part).symlink_to((source.model_dir / part).resolve(), target_is_directory=True)
    for file in (source.model_dir / "tokenizer").iterdir():
        if file.name != "tokenizer_config.json":
            (view / "tokenizer" / file.name).symlink_to(file.resolve())
    config = json.loads((source.model_dir / "tokenizer" / "tokenizer_config.json").read_text())
    config.pop("backend", None)
    config["tokenizer_class"] = "CLIPTokenizerFast"
    (view / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    index = json.loads((source.model_dir / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "CLIPTokenizerFast"]
    (view / "model_index.json").write_text(json.dumps(index, indent=2))
    return view


def run_optimum(source: ModelSource, settings: E2ESettings, cache: Path, workdir: Path, python: str | None,
                how: str, timeout: float | None = None) -> dict[str, Any]:
    """Optimum's ORT img2img in a subprocess; a row with ``error`` (why it did not run) on failure."""
    row: dict[str, Any] = {"peer": "optimum", "label": "Optimum ORTStableDiffusionImg2ImgPipeline (ORT CPU fp32)",
                           "python": python, "python_source": how}
    if python is None:
        return row | {"error": how}
    from mvg_rt.models.provenance import model_dir_fingerprint

    workdir.mkdir(parents=True, exist_ok=True)
    job = {"view": str(optimum_view(source, cache)),
           "onnx_dir": str(cache / "optimum" / f"onnx-{model_dir_fingerprint(source.model_dir)[:16]}"),
           "original": str(workdir / "optimum-input.npy"), "output": str(workdir / "optimum-pie_round.npy"),
           "settings": settings.to_dict()}
    original, _ = demo_inputs(settings.resolution)
    np.save(job["original"], original)
    job_path = workdir / "optimum-job.json"
    job_path.write_text(json.dumps(job))
    result_path = workdir / "optimum-result.json"
    script = Path(__file__).with_name("optimum_peer.py")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        done = subprocess.run([python, str(script), str(job_path), str(result_path)], capture_output=True, text=True,
                              env=env, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        return row | {"error": f"{type(err).__name__}: {err}"}
    if done.returncode != 0 or not result_path.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return row | {"error": f"exit {done.returncode}: {' | '.join(tail)[:600]}"}
    return row | json.loads(result_path.read_text())
